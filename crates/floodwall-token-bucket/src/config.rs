use std::sync::Arc;
use std::time::Duration;

use crate::layer::{Builder, DEFAULT_NAME};
use crate::{Quota, QuotaError, TokenBucketLayer};

/// A token-bucket layer's configuration as plain data.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use floodwall_token_bucket::TokenBucketConfig;
///
/// let cfg: TokenBucketConfig = serde_json::from_str(
///     r#"{ "name": "api", "rate": 100, "per": "1s", "burst": 20, "max_wait": "50ms" }"#,
/// ).unwrap();
/// assert_eq!(cfg.max_wait, Duration::from_millis(50));
/// let layer = cfg.build().unwrap();
/// assert_eq!(layer.handle().available(), 20);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct TokenBucketConfig {
    /// Metric label and `RateLimit` policy name. Default `"token_bucket"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Tokens refilled per [`per`](Self::per).
    pub rate: u32,
    /// The refill period. Default one second.
    #[cfg_attr(
        feature = "serde",
        serde(default = "one_second", with = "humantime_serde")
    )]
    pub per: Duration,
    /// Bucket capacity. Default: `rate`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub burst: Option<u32>,
    /// Wait mode's bound; zero (the default) sheds at once.
    #[cfg_attr(feature = "serde", serde(default, with = "humantime_serde"))]
    pub max_wait: Duration,
    /// For keyed layers: how many keys to remember. Default 100,000.
    #[cfg_attr(feature = "serde", serde(default = "default_capacity"))]
    pub capacity: usize,
}

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

#[cfg(feature = "serde")]
fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[cfg(feature = "serde")]
fn default_capacity() -> usize {
    TokenBucketConfig::DEFAULT_CAPACITY
}

impl TokenBucketConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// `rate` per second, burst `rate`, shedding, default name and capacity.
    pub fn per_second(rate: u32) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            rate,
            per: Duration::from_secs(1),
            burst: None,
            max_wait: Duration::ZERO,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// The quota this configuration describes.
    ///
    /// # Errors
    /// [`QuotaError`] for a zero rate, period or burst, or a rate the
    /// nanosecond clock cannot express.
    pub fn quota(&self) -> Result<Quota, QuotaError> {
        let quota = Quota::new(self.rate, self.per)?;
        match self.burst {
            Some(burst) => quota.with_burst(burst),
            None => Ok(quota),
        }
    }

    /// A layer builder with this configuration.
    ///
    /// # Errors
    /// As [`quota`](Self::quota).
    pub fn builder(&self) -> Result<Builder, ConfigError> {
        Ok(TokenBucketLayer::builder(self.quota()?)
            .name(Arc::<str>::from(self.name.as_str()))
            .wait(self.max_wait))
    }

    /// A layer with one bucket for every request.
    ///
    /// # Errors
    /// As [`quota`](Self::quota).
    pub fn build(&self) -> Result<TokenBucketLayer, ConfigError> {
        Ok(self.builder()?.build())
    }

    /// A keyed layer remembering [`capacity`](Self::capacity) keys.
    ///
    /// # Errors
    /// As [`quota`](Self::quota), and [`ConfigError::ZeroCapacity`].
    pub fn build_keyed<Req, K, X>(
        &self,
        extract: X,
    ) -> Result<TokenBucketLayer<crate::Keyed<crate::KeyedTokenBucket<K>, X>>, ConfigError>
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        Ok(self.builder()?.build_keyed(self.capacity, extract))
    }
}

/// Why a [`TokenBucketConfig`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The rate, period or burst is invalid.
    Quota(QuotaError),
    /// A keyed layer must remember at least one key.
    ZeroCapacity,
}

impl From<QuotaError> for ConfigError {
    fn from(err: QuotaError) -> Self {
        ConfigError::Quota(err)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Quota(err) => std::fmt::Display::fmt(err, f),
            ConfigError::ZeroCapacity => f.write_str("capacity must be at least 1 key"),
        }
    }
}

/// `Quota` is transparent: its message is this error's message.
impl std::error::Error for ConfigError {}
