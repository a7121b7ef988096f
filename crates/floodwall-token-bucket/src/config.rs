use std::time::Duration;

use crate::Quota;

/// A token-bucket layer's configuration as plain data, for
/// [`TokenBucketLayer::new`](crate::TokenBucketLayer::new) and
/// [`TokenBucketLayer::builder`](crate::TokenBucketLayer::builder). A bare
/// [`Quota`] converts into one with every other field at its default.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use floodwall_token_bucket::{TokenBucketConfig, TokenBucketLayer};
///
/// let cfg: TokenBucketConfig = serde_json::from_str(
///     r#"{ "name": "api", "quota": { "rate": 100, "per": "1s", "burst": 20 }, "max_wait": "50ms" }"#,
/// ).unwrap();
/// assert_eq!(cfg.max_wait, Duration::from_millis(50));
/// let layer = TokenBucketLayer::new(cfg).unwrap();
/// assert_eq!(layer.handle().remaining(), 20);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct TokenBucketConfig {
    /// Metric label and `RateLimit` policy name. Default `"token_bucket"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Refill rate and bucket capacity.
    pub quota: Quota,
    /// Wait mode's bound; zero (the default) sheds at once.
    #[cfg_attr(feature = "serde", serde(default, with = "humantime_serde"))]
    pub max_wait: Duration,
    /// For keyed layers: how many keys to remember. Default 100,000.
    #[cfg_attr(
        feature = "serde",
        serde(default = "floodwall_ratelimit::default_key_capacity")
    )]
    pub capacity: usize,
}

/// The default name of a token-bucket layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "token_bucket";

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

impl TokenBucketConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = floodwall_ratelimit::DEFAULT_KEY_CAPACITY;
}

impl From<Quota> for TokenBucketConfig {
    /// `quota`, shedding, default name and capacity.
    fn from(quota: Quota) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            quota,
            max_wait: Duration::ZERO,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }
}
