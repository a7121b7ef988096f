//! The warm-up mode as a layer: [`WarmUpLayer`].

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_ratelimit::{
    Algorithm, LimitKey, One, PerKey, RateLimitLayer, Schedules, WarmParams, WarmState, WarmUp,
    WarmingBucket,
};

use crate::Quota;

/// A token-bucket layer that warms up (SPECS.md, "Warm-up"; Guava's
/// `SmoothWarmingUp`, Sentinel's `WarmUp`): after idleness it admits at
/// `rate / cold_factor` and ramps to `rate` over the warm-up period, so a
/// cold dependency (empty caches, a fresh connection pool) is not hit with
/// the full rate at once. The shared [`RateLimitLayer`] run by
/// [`WarmingBuckets`]: the same builder, keys, wait mode and handle.
///
/// ```
/// use std::time::Duration;
/// use floodwall_token_bucket::{Quota, WarmUp, WarmUpConfig, WarmUpLayer};
///
/// # fn main() -> Result<(), floodwall_core::ConfigError> {
/// // 100/s, from 33/s when cold, over 10 s of traffic.
/// let config = WarmUpConfig::new(Quota::per_second(100)?, WarmUp::new(Duration::from_secs(10)));
/// let layer = WarmUpLayer::builder(config).name("search").build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub type WarmUpLayer<L = WarmingBucket, W = One> = RateLimitLayer<WarmingBuckets, L, W>;

/// The configuration of a [`WarmUpLayer`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct WarmUpConfig {
    /// The metric label and policy name. Default `"token_bucket"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// The stable rate (its burst bounds a request's weight).
    pub quota: Quota,
    /// The warm-up period and cold factor.
    pub warm_up: WarmUp,
    /// How long a request may wait for its start; zero sheds at once.
    #[cfg_attr(feature = "serde", serde(default, with = "humantime_serde"))]
    pub max_wait: Duration,
    /// Keys remembered by a keyed layer.
    #[cfg_attr(
        feature = "serde",
        serde(default = "floodwall_ratelimit::default_key_capacity")
    )]
    pub capacity: usize,
}

#[cfg(feature = "serde")]
fn default_name() -> String {
    crate::DEFAULT_NAME.to_owned()
}

impl WarmUpConfig {
    /// `quota` warming up as `warm_up` says, shedding, with the default
    /// name and key capacity.
    pub fn new(quota: Quota, warm_up: WarmUp) -> Self {
        Self {
            name: crate::DEFAULT_NAME.to_owned(),
            quota,
            warm_up,
            max_wait: Duration::ZERO,
            capacity: floodwall_ratelimit::DEFAULT_KEY_CAPACITY,
        }
    }
}

/// The warm-up algorithm behind [`WarmUpLayer`].
#[derive(Debug, Clone, Copy)]
pub enum WarmingBuckets {}

impl Algorithm for WarmingBuckets {
    type Config = WarmUpConfig;
    type Limiter = WarmingBucket;
    type PerKey<K: LimitKey> = PerKey<K, WarmState>;

    const METRIC_PREFIX: &'static str = crate::METRIC_PREFIX;

    fn name_and_capacity(config: &mut WarmUpConfig) -> (&mut String, &mut usize) {
        (&mut config.name, &mut config.capacity)
    }

    fn policy(config: &WarmUpConfig) -> (u64, Duration) {
        (u64::from(config.quota.tokens()), config.quota.period())
    }

    fn max_wait(config: &WarmUpConfig) -> Duration {
        config.max_wait
    }

    fn limiter(config: &WarmUpConfig) -> Result<WarmingBucket, ConfigError> {
        WarmingBucket::new(config.quota, config.warm_up)
    }

    fn per_key<K: LimitKey>(
        config: &WarmUpConfig,
        capacity: usize,
    ) -> Result<PerKey<K, WarmState>, ConfigError> {
        let params = WarmParams::new(config.quota, config.warm_up)?;
        Ok(PerKey::new(params, capacity).with_metrics(crate::METRIC_PREFIX, &config.name))
    }
}

impl Schedules for WarmingBuckets {
    fn set_max_wait(config: &mut WarmUpConfig, max_wait: Duration) {
        config.max_wait = max_wait;
    }
}
