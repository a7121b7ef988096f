//! Building a [`RedisLimiter`](super::RedisLimiter).

use super::*;

/// Builds a [`RedisLimiter`]; from [`RedisLimiter::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct Builder {
    pub(crate) redis: RedisConnection,
    pub(crate) quota: Quota,
    pub(crate) name: Arc<str>,
    pub(crate) prefix: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) lease: Option<(u32, Duration)>,
    pub(crate) fallback: Fallback,
    pub(crate) capacity: usize,
    pub(crate) breaker: BreakerConfig,
}

impl Builder {
    /// The metric label and `RateLimit` policy name. Default `"redis"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// What every Redis key starts with; a request's key is appended. Default
    /// `"floodwall:{name}:"`. See the crate docs on Redis Cluster hash tags.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long one decision may wait for Redis, script reload included.
    /// Default 20 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Turns on leasing: a round trip takes up to `max_tokens` tokens, never
    /// more than the global rate refills in `max_age`, and unspent leased
    /// tokens expire after `max_age`. Off by default.
    pub fn lease(mut self, max_tokens: u32, max_age: Duration) -> Self {
        self.lease = Some((max_tokens, max_age));
        self
    }

    /// What to do without Redis. Default [`Fallback::Local`] at 10 %.
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// How many keys the lease map and the local fallback remember each.
    /// Default 100,000.
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// The breaker guarding Redis. Default [`RedisLimiter::default_breaker`].
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Builds the limiter.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero timeout or capacity, a lease of
    /// `max_tokens` 0 or `max_age` 0, a timeout or `max_age` above
    /// [`MAX_DURATION`](floodwall_core::config::MAX_DURATION), a fallback
    /// share outside `(0, 1]`, or an invalid breaker configuration.
    pub fn build<K>(self) -> Result<RedisLimiter<K>, ConfigError>
    where
        K: Key,
    {
        floodwall_core::config::check_duration("timeout", self.timeout)?;
        if let Some((_, age)) = self.lease {
            floodwall_core::config::check_duration("lease.max_age", age)?;
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if self.capacity == 0 {
            return Err(ConfigError::new("capacity", "must be at least 1 key"));
        }
        let derived = Derived::of(&self.name, self.quota, self.lease, self.fallback)?;
        let leases = Leases::new(
            derived.lease_size,
            derived.lease_age,
            self.quota.interval(),
            self.capacity,
        );
        let local = derived
            .local
            .map(|quota| KeyedTokenBucket::new(quota, self.capacity));
        let metrics = Metrics::new(&self.name);
        metrics.limit.set(rate(&self.quota));
        let fallback_gauge = metrics::gauge!(metric_name(crate::METRIC_PREFIX, "fallback"), LABEL_NAME => self.name.to_string());
        fallback_gauge.set(0.0);
        let name = self.name.clone();
        let breaker = CircuitBreaker::new(self.breaker)?.on_state_change(move |change| {
            let away = change.to != State::Closed && change.to != State::Disabled;
            fallback_gauge.set(if away { 1.0 } else { 0.0 });
            if away {
                tracing::warn!(limiter = %name, state = change.to.as_str(), "redis limiter deciding locally");
            } else {
                tracing::info!(limiter = %name, "redis limiter back on redis");
            }
        });
        let prefix = self
            .prefix
            .unwrap_or_else(|| format!("floodwall:{}:", self.name));
        Ok(RedisLimiter {
            inner: Arc::new(Inner {
                name: self.name.clone(),
                redis: self.redis,
                script: Script::default(),
                prefix,
                live: RwLock::new(Live {
                    quota: self.quota,
                    interval_arg: derived.interval_arg,
                    burst_arg: derived.burst_arg,
                    timeout: self.timeout,
                    fallback: self.fallback,
                    lease: self.lease,
                    policy: derived.policy,
                    changed_at: None,
                }),
                leases,
                local,
                breaker,
                capacity: self.capacity,
                metrics,
                stats: Counters::default(),
            }),
        })
    }
}

/// What a limiter derives from its quota, lease and fallback: built once by
/// the builder, again by a reconfiguration.
pub(crate) struct Derived {
    pub(crate) lease_size: u32,
    pub(crate) lease_age: Duration,
    pub(crate) local: Option<Quota>,
    pub(crate) interval_arg: Arc<str>,
    pub(crate) burst_arg: Arc<str>,
    pub(crate) policy: Arc<RateLimitPolicy>,
}

impl Derived {
    /// Validates and derives (see [`Builder::build`]'s errors).
    pub(crate) fn of(
        name: &Arc<str>,
        quota: Quota,
        lease: Option<(u32, Duration)>,
        fallback: Fallback,
    ) -> Result<Self, ConfigError> {
        if let Some((_, age)) = lease {
            floodwall_core::config::check_duration("lease.max_age", age)?;
        }
        let rate_per_sec = f64::from(quota.tokens()) / quota.period().as_secs_f64();
        let lease_size = match lease {
            None => 1,
            Some((0, _)) => {
                return Err(ConfigError::new("lease.max_tokens", "must be at least 1"));
            }
            Some((_, age)) if age.is_zero() => {
                return Err(ConfigError::new("lease.max_age", "must be above zero"));
            }
            Some((max_tokens, age)) => {
                let refill = (rate_per_sec * age.as_secs_f64()).floor();
                // A lease of one token is no lease: every request needs one.
                (refill.min(f64::from(max_tokens)) as u32).clamp(1, quota.burst())
            }
        };
        let local = match fallback {
            Fallback::Local { share } => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(ConfigError::new("fallback.share", "must be in (0, 1]"));
                }
                let burst = (f64::from(quota.burst()) * share).ceil().max(1.0) as u32;
                Some(
                    Quota::per_second_f64(rate_per_sec * share)
                        .and_then(|q| q.with_burst(burst))
                        .map_err(|_| {
                            ConfigError::new(
                                "fallback.share",
                                "gives a rate the clock cannot express",
                            )
                        })?,
                )
            }
            Fallback::Open | Fallback::Closed => None,
        };
        let interval_us = quota.interval().as_nanos() as f64 / 1000.0;
        Ok(Self {
            lease_size,
            lease_age: lease.map_or(Duration::ZERO, |(_, age)| age),
            local,
            interval_arg: Arc::from(format!("{interval_us}")),
            burst_arg: Arc::from(quota.burst().to_string()),
            policy: Arc::new(RateLimitPolicy::new(
                name.clone(),
                u64::from(quota.tokens()),
                quota.period(),
            )),
        })
    }
}
