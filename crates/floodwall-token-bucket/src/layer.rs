use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_ratelimit::{Algorithm, KeyedTokenBucket, LimitKey, One, RateLimitLayer, Schedules};

use crate::{TokenBucket, TokenBucketConfig};

/// A Tower layer that limits requests with a GCRA token bucket, shedding or
/// (with `wait`) scheduling them. It is the shared [`RateLimitLayer`] run
/// by the [`TokenBuckets`] algorithm; see there for cloning, shedding and
/// the builder, and the crate documentation for examples.
///
/// # Changing the limit while serving
/// [`handle().reconfigure(quota)`](floodwall_ratelimit::RateLimitHandle::reconfigure)
/// changes the quota of a running layer (every key's at once, for a keyed
/// one), keeping each bucket's tokens, capped at the new burst:
///
/// ```
/// use floodwall_token_bucket::{Quota, TokenBucketLayer};
///
/// # fn main() -> Result<(), floodwall_core::ConfigError> {
/// let layer = TokenBucketLayer::builder(Quota::per_second(100)?).name("api").build()?;
/// let handle = layer.handle();
/// // During an incident: halve it, without handing anyone a fresh burst.
/// handle.reconfigure(Quota::per_second(50)?);
/// assert_eq!(handle.policy().quota(), 50);
/// # Ok(())
/// # }
/// ```
pub type TokenBucketLayer<L = TokenBucket, W = One> = RateLimitLayer<TokenBuckets, L, W>;

/// The token bucket as a [`RateLimitLayer`]'s [`Algorithm`].
#[derive(Debug, Clone, Copy)]
pub enum TokenBuckets {}

impl Algorithm for TokenBuckets {
    type Config = TokenBucketConfig;
    type Limiter = TokenBucket;
    type PerKey<K: LimitKey> = KeyedTokenBucket<K>;

    const METRIC_PREFIX: &'static str = crate::METRIC_PREFIX;

    fn name_and_capacity(config: &mut TokenBucketConfig) -> (&mut String, &mut usize) {
        (&mut config.name, &mut config.capacity)
    }

    fn policy(config: &TokenBucketConfig) -> (u64, Duration) {
        (u64::from(config.quota.tokens()), config.quota.period())
    }

    fn max_wait(config: &TokenBucketConfig) -> Duration {
        config.max_wait
    }

    fn limiter(config: &TokenBucketConfig) -> Result<TokenBucket, ConfigError> {
        Ok(TokenBucket::new(config.quota))
    }

    fn per_key<K: LimitKey>(
        config: &TokenBucketConfig,
        capacity: usize,
    ) -> Result<KeyedTokenBucket<K>, ConfigError> {
        Ok(KeyedTokenBucket::new(config.quota, capacity)
            .with_metrics(crate::METRIC_PREFIX, &config.name))
    }
}

impl Schedules for TokenBuckets {
    fn set_max_wait(config: &mut TokenBucketConfig, max_wait: Duration) {
        config.max_wait = max_wait;
    }
}
