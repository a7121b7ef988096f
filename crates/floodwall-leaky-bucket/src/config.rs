use floodwall_ratelimit::Quota;

/// Which face of the leaky bucket a layer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LeakyMode {
    /// Overflow is refused at once; nothing waits (the default).
    #[default]
    Meter,
    /// Requests wait for start slots one interval apart, up to
    /// [`queue`](LeakyBucketConfig::queue) of them; a full queue is refused.
    Shaper,
}

/// A leaky-bucket layer's configuration as plain data, for
/// [`LeakyBucketLayer::new`](crate::LeakyBucketLayer::new) and
/// [`LeakyBucketLayer::builder`](crate::LeakyBucketLayer::builder). A bare
/// [`Quota`] converts into a meter with every other field at its default.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use floodwall_leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
///
/// let cfg: LeakyBucketConfig = serde_json::from_str(
///     r#"{ "name": "uploads", "quota": { "rate": 20 }, "mode": "shaper", "queue": 40 }"#,
/// ).unwrap();
/// let layer = LeakyBucketLayer::new(cfg).unwrap();
/// assert_eq!(layer.handle().limiter().queue(), Some(40));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct LeakyBucketConfig {
    /// Metric label and `RateLimit` policy name. Default `"leaky_bucket"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Units drained (meter) or requests released (shaper) per period; the
    /// burst is a meter's capacity.
    pub quota: Quota,
    /// Meter (default) or shaper.
    #[cfg_attr(feature = "serde", serde(default))]
    pub mode: LeakyMode,
    /// Shaper: how many requests may wait. Default 0 (strict spacing, no
    /// waiting); a meter takes none.
    #[cfg_attr(feature = "serde", serde(default))]
    pub queue: u32,
    /// Keyed layers: the most keys remembered at once. Default 100,000.
    #[cfg_attr(
        feature = "serde",
        serde(default = "floodwall_ratelimit::default_key_capacity")
    )]
    pub capacity: usize,
}

/// The default name of a leaky-bucket layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "leaky_bucket";

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

impl LeakyBucketConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = floodwall_ratelimit::DEFAULT_KEY_CAPACITY;

    /// A shaper releasing `rate`'s tokens one interval apart with room for
    /// `queue` waiting requests, default name and capacity.
    pub fn shaper(rate: Quota, queue: u32) -> Self {
        Self {
            mode: LeakyMode::Shaper,
            queue,
            ..Self::from(rate)
        }
    }
}

impl From<Quota> for LeakyBucketConfig {
    /// A meter with `quota`'s rate and capacity, default name and capacity.
    fn from(quota: Quota) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            quota,
            mode: LeakyMode::Meter,
            queue: 0,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }
}
