use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_ratelimit::{Algorithm, LimitKey, One, RateLimitLayer};

use crate::{
    KeyedLeakyBucket, LeakyBucket, LeakyBucketConfig, LeakyMeter, LeakyMode, LeakyParams,
    LeakyShaper,
};

/// A Tower layer that limits requests with a leaky bucket: a meter refuses
/// overflow, a shaper lets requests out one interval apart and refuses a
/// full queue. It is the shared [`RateLimitLayer`] run by the
/// [`LeakyBuckets`] algorithm; see there for cloning, shedding and the
/// builder, and the crate documentation for examples.
pub type LeakyBucketLayer<L = LeakyBucket, W = One> = RateLimitLayer<LeakyBuckets, L, W>;

/// The leaky bucket as a [`RateLimitLayer`]'s [`Algorithm`].
#[derive(Debug, Clone, Copy)]
pub enum LeakyBuckets {}

fn params(config: &LeakyBucketConfig) -> Result<LeakyParams, ConfigError> {
    match config.mode {
        LeakyMode::Meter if config.queue > 0 => Err(ConfigError::new(
            "queue",
            "is only for the shaper (a meter never queues)",
        )
        .with_value(config.queue)),
        LeakyMode::Meter => Ok(LeakyParams::meter(config.quota)),
        LeakyMode::Shaper => Ok(LeakyParams::shaper(config.quota, config.queue)),
    }
}

impl Algorithm for LeakyBuckets {
    type Config = LeakyBucketConfig;
    type Limiter = LeakyBucket;
    type PerKey<K: LimitKey> = KeyedLeakyBucket<K>;

    const METRIC_PREFIX: &'static str = crate::METRIC_PREFIX;

    fn name_and_capacity(config: &mut LeakyBucketConfig) -> (&mut String, &mut usize) {
        (&mut config.name, &mut config.capacity)
    }

    fn policy(config: &LeakyBucketConfig) -> (u64, Duration) {
        (u64::from(config.quota.tokens()), config.quota.period())
    }

    /// A shaper's requests wait for their slot, up to its queue; a meter's
    /// never wait.
    fn max_wait(config: &LeakyBucketConfig) -> Duration {
        params(config).map_or(Duration::ZERO, |params| params.horizon())
    }

    fn limiter(config: &LeakyBucketConfig) -> Result<LeakyBucket, ConfigError> {
        Ok(match params(config)?.queue() {
            None => LeakyBucket::Meter(LeakyMeter::new(config.quota)),
            Some(queue) => LeakyBucket::Shaper(LeakyShaper::new(config.quota, queue)),
        })
    }

    fn per_key<K: LimitKey>(
        config: &LeakyBucketConfig,
        capacity: usize,
    ) -> Result<KeyedLeakyBucket<K>, ConfigError> {
        Ok(KeyedLeakyBucket::new(params(config)?, capacity)
            .with_metrics(crate::METRIC_PREFIX, &config.name))
    }
}
