//! The limiter's configuration as plain data.

use std::time::Duration;

use floodwall_breaker::BreakerConfig;
use floodwall_core::ConfigError;
use floodwall_ratelimit::Quota;

use crate::{Builder, DEFAULT_NAME, Fallback, Key, RedisConnection, RedisLimiter};

/// A [`RedisLimiter`]'s configuration as plain data.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use floodwall_redis::{Fallback, RedisLimiterConfig};
///
/// let cfg: RedisLimiterConfig = serde_json::from_str(r#"{
///     "name": "api", "quota": { "rate": 1000, "burst": 100 }, "timeout": "10ms",
///     "lease": { "max_tokens": 10, "max_age": "100ms" },
///     "fallback": { "local": { "share": 0.25 } }
/// }"#).unwrap();
/// assert_eq!(cfg.timeout, Duration::from_millis(10));
/// assert_eq!(cfg.fallback, Fallback::Local { share: 0.25 });
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RedisLimiterConfig {
    /// Metric label, policy name and default key prefix. Default `"redis"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Redis key prefix. Default `"floodwall:{name}:"`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub prefix: Option<String>,
    /// The rate and burst enforced across all instances.
    pub quota: Quota,
    /// How long one decision may wait for Redis. Default 20 ms.
    #[cfg_attr(
        feature = "serde",
        serde(default = "twenty_ms", with = "humantime_serde")
    )]
    pub timeout: Duration,
    /// Token leasing. Default off.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lease: Option<LeaseConfig>,
    /// What to do without Redis. Default local at 10 %.
    #[cfg_attr(feature = "serde", serde(default))]
    pub fallback: Fallback,
    /// Keys remembered locally (leases, refusals, fallback buckets), each.
    /// Default 100,000.
    #[cfg_attr(feature = "serde", serde(default = "default_capacity"))]
    pub capacity: usize,
    /// The breaker guarding Redis. Default
    /// [`RedisLimiter::default_breaker`].
    #[cfg_attr(feature = "serde", serde(default))]
    pub breaker: Option<BreakerConfig>,
}

/// Token leasing settings; see [`Builder::lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct LeaseConfig {
    /// The most tokens one round trip takes.
    pub max_tokens: u32,
    /// How long leased tokens last; a lease is also never more than the
    /// global rate refills in this time.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_age: Duration,
}

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

#[cfg(feature = "serde")]
fn twenty_ms() -> Duration {
    Duration::from_millis(20)
}

#[cfg(feature = "serde")]
fn default_capacity() -> usize {
    RedisLimiterConfig::DEFAULT_CAPACITY
}

impl RedisLimiterConfig {
    /// The default number of keys remembered locally.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// `quota` across all instances, with every other field at its
    /// default.
    pub fn new(quota: Quota) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            prefix: None,
            quota,
            timeout: Duration::from_millis(20),
            lease: None,
            fallback: Fallback::default(),
            capacity: Self::DEFAULT_CAPACITY,
            breaker: None,
        }
    }

    /// A builder for a limiter on `client` with this configuration.
    ///
    /// # Errors
    /// None today (the quota was validated when it was made); kept so the
    /// limiter's constructors read like every layer's.
    pub fn builder(&self, redis: impl Into<RedisConnection>) -> Result<Builder, ConfigError> {
        let mut builder = RedisLimiter::builder(redis, self.quota)
            .name(self.name.as_str())
            .timeout(self.timeout)
            .fallback(self.fallback)
            .capacity(self.capacity);
        if let Some(prefix) = &self.prefix {
            builder = builder.prefix(prefix.clone());
        }
        if let Some(lease) = self.lease {
            builder = builder.lease(lease.max_tokens, lease.max_age);
        }
        if let Some(breaker) = self.breaker {
            builder = builder.breaker(breaker);
        }
        Ok(builder)
    }

    /// The limiter.
    ///
    /// # Errors
    /// As [`Builder::build`].
    pub fn build<K: Key>(
        &self,
        redis: impl Into<RedisConnection>,
    ) -> Result<RedisLimiter<K>, ConfigError> {
        self.builder(redis)?.build()
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn deserializes_with_defaults_and_refuses_unknown_fields() {
        let cfg: RedisLimiterConfig =
            serde_json::from_str(r#"{ "quota": { "rate": 50 } }"#).unwrap();
        assert_eq!(cfg, RedisLimiterConfig::new(Quota::per_second(50).unwrap()));
        let open: RedisLimiterConfig =
            serde_json::from_str(r#"{ "quota": { "rate": 5 }, "fallback": "open" }"#).unwrap();
        assert_eq!(open.fallback, Fallback::Open);
        let unknown = r#"{ "quota": { "rate": 5 }, "rte": 1 }"#;
        assert!(serde_json::from_str::<RedisLimiterConfig>(unknown).is_err());
        let invalid = r#"{ "quota": { "rate": 0 } }"#;
        let err = serde_json::from_str::<RedisLimiterConfig>(invalid).unwrap_err();
        assert!(err.to_string().contains("rate must be positive"), "{err}");
    }
}
