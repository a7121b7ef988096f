use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_ratelimit::Keyed;
use floodwall_token_bucket::{ConfigError, Quota};

use crate::layer::DEFAULT_NAME;
use crate::{KeyedLeakyMeter, KeyedLeakyShaper, LeakyBucketLayer, LeakyMeter, LeakyShaper};

/// A leaky-bucket layer's configuration as plain data; the mode is chosen
/// by the build method (`build_meter`, `build_shaper`, and their keyed
/// forms).
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use floodwall_leaky_bucket::LeakyBucketConfig;
///
/// let cfg: LeakyBucketConfig = serde_json::from_str(
///     r#"{ "name": "uploads", "rate": 20, "per": "1s", "queue": 40 }"#,
/// ).unwrap();
/// let layer = cfg.build_shaper().unwrap();
/// assert_eq!(layer.handle().limiter().queue(), 40);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct LeakyBucketConfig {
    /// Metric label and `RateLimit` policy name. Default `"leaky_bucket"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Units drained (meter) or requests released (shaper) per [`per`](Self::per).
    pub rate: u32,
    /// The period. Default one second.
    #[cfg_attr(
        feature = "serde",
        serde(default = "one_second", with = "humantime_serde")
    )]
    pub per: Duration,
    /// Meter: how many units the bucket holds. Default: `rate`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub burst: Option<u32>,
    /// Shaper: how many requests may wait. Default 0 (strict spacing, no
    /// waiting).
    #[cfg_attr(feature = "serde", serde(default))]
    pub queue: u32,
    /// Keyed layers: how many keys to remember. Default 100,000.
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
    LeakyBucketConfig::DEFAULT_CAPACITY
}

impl LeakyBucketConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// `rate` per second, meter holding `rate`, no queue, default name.
    pub fn per_second(rate: u32) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            rate,
            per: Duration::from_secs(1),
            burst: None,
            queue: 0,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// The rate (and, for a meter, capacity) this configuration describes.
    ///
    /// # Errors
    /// [`ConfigError::Quota`] for a zero rate, period or burst, or a rate
    /// the nanosecond clock cannot express.
    pub fn quota(&self) -> Result<Quota, ConfigError> {
        let quota = Quota::new(self.rate, self.per)?;
        Ok(match self.burst {
            Some(burst) => quota.with_burst(burst)?,
            None => quota,
        })
    }

    fn name(&self) -> Arc<str> {
        Arc::from(self.name.as_str())
    }

    fn keys(&self) -> Result<usize, ConfigError> {
        match self.capacity {
            0 => Err(ConfigError::ZeroCapacity),
            n => Ok(n),
        }
    }

    /// A meter for every request.
    ///
    /// # Errors
    /// As [`quota`](Self::quota).
    pub fn build_meter(&self) -> Result<LeakyBucketLayer<LeakyMeter>, ConfigError> {
        Ok(LeakyBucketLayer::meter(self.quota()?)
            .name(self.name())
            .build())
    }

    /// A meter per key.
    ///
    /// # Errors
    /// As [`quota`](Self::quota), and [`ConfigError::ZeroCapacity`].
    pub fn build_meter_keyed<Req, K, X>(
        &self,
        extract: X,
    ) -> Result<LeakyBucketLayer<Keyed<KeyedLeakyMeter<K>, X>>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let keys = self.keys()?;
        Ok(LeakyBucketLayer::meter(self.quota()?)
            .name(self.name())
            .build_keyed(keys, extract))
    }

    /// A shaper for every request.
    ///
    /// # Errors
    /// As [`quota`](Self::quota).
    pub fn build_shaper(&self) -> Result<LeakyBucketLayer<LeakyShaper>, ConfigError> {
        Ok(LeakyBucketLayer::shaper(self.quota()?, self.queue)
            .name(self.name())
            .build())
    }

    /// A shaper per key.
    ///
    /// # Errors
    /// As [`quota`](Self::quota), and [`ConfigError::ZeroCapacity`].
    pub fn build_shaper_keyed<Req, K, X>(
        &self,
        extract: X,
    ) -> Result<LeakyBucketLayer<Keyed<KeyedLeakyShaper<K>, X>>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let keys = self.keys()?;
        Ok(LeakyBucketLayer::shaper(self.quota()?, self.queue)
            .name(self.name())
            .build_keyed(keys, extract))
    }
}
