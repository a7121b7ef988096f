//! The distributed limiter: Redis decides, leases save round trips, a
//! breaker and a local bucket take over when Redis cannot answer in time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, Growth, Permit, State, WindowKind};
use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, RequestCounters, metric_name};
use floodwall_core::{ConfigError, RateLimitPolicy, RejectKind};
use floodwall_ratelimit::{Denied, KeyedTokenBucket, Quota};
use metrics::{Counter, Histogram};
use parking_lot::RwLock;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use crate::connection::RedisConnection;
use crate::error::{CallError, ErrorClass};
use crate::lease::{Leases, Take};
use crate::script::{Args, Script};

mod builder;
mod counters;
mod types;

pub use builder::Builder;
pub(crate) use counters::*;
pub use types::*;

/// The default name (metric label, policy name, key prefix).
pub const DEFAULT_NAME: &str = "redis";

/// A GCRA rate limiter whose state lives in Redis, shared by every instance
/// that points at the same Redis and prefix.
///
/// One decision is one atomic script call (`EVALSHA`) on the request's key,
/// bounded by a timeout; with leasing on, most decisions spend tokens taken
/// ahead by an earlier call and need no round trip. When Redis errors or
/// times out, a circuit breaker records it, the request is decided by the
/// configured [`Fallback`], and once the breaker opens no request waits for
/// Redis at all until its half-open probes find Redis answering again.
///
/// `K` is the key type (route, user, IP); its `Display` form, after the
/// prefix, is the Redis key.
///
/// # Clone
/// Clones share everything (an `Arc`).
pub struct RedisLimiter<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for RedisLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for RedisLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("name", &self.inner.name)
            .field("redis", &self.inner.redis)
            .field("prefix", &self.inner.prefix)
            .field("quota", &self.inner.live.read().quota)
            .field("timeout", &self.inner.live.read().timeout)
            .field("lease", &self.inner.leases.size())
            .field("fallback", &self.inner.live.read().fallback)
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

struct Inner<K> {
    redis: RedisConnection,
    script: Script,
    name: Arc<str>,
    prefix: String,
    /// What a reconfiguration replaces; read once per decision.
    live: RwLock<Live>,
    leases: Leases<K>,
    local: Option<KeyedTokenBucket<K>>,
    breaker: CircuitBreaker,
    capacity: usize,
    metrics: Metrics,
    stats: Counters,
}

/// The configuration in force.
pub(crate) struct Live {
    pub(crate) quota: Quota,
    pub(crate) interval_arg: Arc<str>,
    pub(crate) burst_arg: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) fallback: Fallback,
    pub(crate) lease: Option<(u32, Duration)>,
    pub(crate) policy: Arc<RateLimitPolicy>,
    /// When the quota last changed (none: as built).
    pub(crate) changed_at: Option<Instant>,
}

impl RedisLimiter<()> {
    /// A builder for a limiter of `quota` on the Redis behind `redis`: a
    /// [`RedisConnection`], or anything that becomes one (a
    /// `redis::Client`, a `ConnectionManager`, a cluster client…).
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_redis::{Fallback, RedisLimiter};
    /// use floodwall_ratelimit::Quota;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let limiter: RedisLimiter<String> = RedisLimiter::builder(client, Quota::per_second(1000)?)
    ///     .name("api")
    ///     .timeout(Duration::from_millis(20))
    ///     .lease(10, Duration::from_millis(100))
    ///     .fallback(Fallback::Local { share: 0.25 })
    ///     .build()?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(redis: impl Into<RedisConnection>, quota: Quota) -> Builder {
        Builder {
            redis: redis.into(),
            quota,
            name: Arc::from(DEFAULT_NAME),
            prefix: None,
            timeout: Duration::from_millis(20),
            lease: None,
            fallback: Fallback::default(),
            capacity: 100_000,
            breaker: Self::default_breaker(),
        }
    }

    /// The breaker guarding Redis unless configured otherwise: opens after
    /// 3 failed calls in a row or half of the last 20 (from 10 calls), stays
    /// open 500 ms growing ×2 to 1 s with ±20 % jitter, and closes after 3
    /// successful probes. No slow-call timing: the timeout bounds calls.
    ///
    /// The open time stays short on purpose: a probe of a Redis that is
    /// still away costs one connection attempt or one timeout, about once a
    /// second per instance, and a Redis that is back decides again within
    /// 1.2 s.
    pub fn default_breaker() -> BreakerConfig {
        BreakerConfig {
            window: WindowKind::Count(20),
            minimum_calls: 10,
            consecutive_failures: Some(3),
            detect_slow_calls: false,
            open_duration: Duration::from_millis(500),
            growth: Some(Growth {
                multiplier: 2.0,
                max: Duration::from_secs(1),
                jitter: 0.2,
            }),
            half_open_calls: 3,
            ..BreakerConfig::default()
        }
    }
}

impl<K> RedisLimiter<K>
where
    K: Key,
{
    /// Decides a request of weight `n` (0 counts as 1) on `key`.
    ///
    /// Waits for Redis at most the configured timeout; returns at once when
    /// leased tokens or the fallback decide.
    ///
    /// # Errors
    /// [`Refusal`] when the request is refused.
    pub async fn acquire(&self, key: K, n: u32) -> Result<Source, Refusal> {
        match self.plan(key, n, Instant::now()) {
            Plan::Decided(decision) => decision,
            Plan::Later(later) => later.run().await,
        }
    }

    /// The synchronous part of a decision: answered from leased tokens, a
    /// remembered refusal, the breaker or the weight alone — or a round trip
    /// (or a wait for another request's lease fetch) still to make, all
    /// within the timeout from `now`.
    pub(crate) fn plan(&self, key: K, n: u32, now: Instant) -> Plan<K> {
        let timeout = self.inner.live.read().timeout;
        self.plan_until(key, n, now, now + timeout, true)
    }

    fn plan_until(
        &self,
        key: K,
        n: u32,
        now: Instant,
        deadline: Instant,
        may_wait: bool,
    ) -> Plan<K> {
        let inner = &self.inner;
        let n = n.max(1);
        let burst = inner.live.read().quota.burst();
        if n > burst {
            inner.record(Source::Redis, false);
            return Plan::Decided(Err(Refusal::ExceedsBurst {
                requested: n,
                burst,
            }));
        }
        let (want, claimed) = match inner.leases.take(&key, n, now, may_wait) {
            Take::Taken => {
                inner.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
                inner.record(Source::Lease, true);
                return Plan::Decided(Ok(Source::Lease));
            }
            Take::Blocked(retry_after) => {
                inner.stats.cached_refusals.fetch_add(1, Ordering::Relaxed);
                inner.record(Source::Cached, false);
                return Plan::Decided(Err(Refusal::RateLimited {
                    retry_after,
                    source: Source::Cached,
                }));
            }
            Take::Wait(fetched) => {
                return Plan::Later(Later::Wait(Wait {
                    limiter: self.clone(),
                    key,
                    n,
                    deadline,
                    fetched,
                }));
            }
            Take::Fetch { want, claimed } => (want, claimed),
        };
        if now >= deadline {
            // Waiting for another request's lease used up this request's
            // time: Redis was slow, and that request has told the breaker.
            if claimed {
                inner.leases.release(&key);
            }
            return Plan::Decided(inner.fall_back(&key, n, now, None));
        }
        match inner.breaker.try_acquire(now) {
            Ok(permit) => Plan::Later(Later::RoundTrip(RoundTrip {
                inner: self.inner.clone(),
                key,
                n,
                want,
                claimed,
                deadline,
                permit: Some(permit),
            })),
            Err(refused) => {
                if claimed {
                    inner.leases.release(&key);
                }
                Plan::Decided(inner.fall_back(&key, n, now, refused.retry_after))
            }
        }
    }

    /// Whether Redis is deciding, and if not, the breaker's state and the
    /// class of the last error that kept Redis from deciding.
    pub fn health(&self) -> Health {
        match self.inner.breaker.state() {
            State::Closed | State::Disabled => Health::Redis,
            state => Health::Fallback {
                state,
                cause: self.last_error(),
            },
        }
    }

    /// The class of the last failed call to Redis, if any call failed.
    pub fn last_error(&self) -> Option<ErrorClass> {
        match self.inner.stats.last_error.load(Ordering::Relaxed) {
            0 => None,
            i => ErrorClass::ALL.get(i as usize - 1).copied(),
        }
    }

    /// What the limiter has done so far.
    pub fn stats(&self) -> RedisStats {
        let s = &self.inner.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            round_trips: load(&s.round_trips),
            errors: load(&s.errors),
            errors_by_class: ErrorCounts::from_fn(|class| load(&s.by_class[class.index()])),
            lease_hits: load(&s.lease_hits),
            cached_refusals: load(&s.cached_refusals),
            fallback_decisions: load(&s.fallback),
            admitted: load(&s.admitted),
            rejected: load(&s.rejected),
        }
    }

    /// Unspent leased tokens this instance holds for `key`.
    pub fn leased(&self, key: &K) -> u32 {
        self.inner.leases.tokens(key, Instant::now())
    }

    /// Keys this instance remembers a lease or a refusal for (at most the
    /// capacity).
    pub fn local_keys(&self) -> usize {
        self.inner.leases.len()
    }

    /// The tokens asked for per round trip (1 when leasing is off).
    pub fn lease_size(&self) -> u32 {
        self.inner.leases.size()
    }

    /// The global quota in force.
    pub fn quota(&self) -> Quota {
        self.inner.live.read().quota
    }

    /// The quota as reported in `RateLimit-Policy` headers.
    pub fn policy(&self) -> Arc<RateLimitPolicy> {
        self.inner.live.read().policy.clone()
    }

    /// The configuration in force, as the plain data it is built from
    /// (name, prefix, capacity and breaker as built; the breaker's own
    /// configuration is [`breaker`](Self::breaker)`().config()`).
    pub fn config(&self) -> crate::RedisLimiterConfig {
        let live = self.inner.live.read();
        crate::RedisLimiterConfig {
            name: self.inner.name.to_string(),
            prefix: Some(self.inner.prefix.clone()),
            quota: live.quota,
            timeout: live.timeout,
            lease: live.lease.map(|(max_tokens, max_age)| crate::LeaseConfig {
                max_tokens,
                max_age,
            }),
            fallback: live.fallback,
            capacity: self.inner.capacity,
            breaker: Some(self.inner.breaker.config()),
        }
    }

    /// Changes the quota, leasing, timeout, fallback share and breaker while
    /// the limiter serves, validated as [`Builder::build`] validates (a
    /// refused configuration changes nothing). The name, prefix, capacity
    /// and the fallback's kind (local, open, closed) are the limiter's
    /// identity and cannot change (a [`ConfigError`] names them).
    ///
    /// What carries over: each key's bucket in Redis keeps the tokens it
    /// has, capped at the new burst (SPECS.md, "Reconfiguration"): the
    /// script stores the quota beside the TAT and converts a key the first
    /// time it meets it under another quota, so every key converts at its
    /// next decision, with the tokens it has then under the old quota.
    /// Leased tokens are kept (they left the global bucket and expire by
    /// their age); remembered refusals are forgotten; the local fallback's
    /// buckets are reconfigured the same way; the breaker keeps its state
    /// (see [`CircuitBreaker::reconfigure`]). Instances sharing a quota
    /// should all be reconfigured: each decides under its own.
    ///
    /// # Errors
    /// As [`Builder::build`], and for a changed name, prefix, capacity or
    /// fallback kind.
    pub fn reconfigure(&self, config: &crate::RedisLimiterConfig) -> Result<(), ConfigError> {
        let inner = &self.inner;
        if config.name != *inner.name {
            return Err(ConfigError::new("name", "cannot change while serving"));
        }
        if config.prefix.as_ref().is_some_and(|p| *p != inner.prefix) {
            return Err(ConfigError::new("prefix", "cannot change while serving"));
        }
        if config.capacity != inner.capacity {
            return Err(ConfigError::new("capacity", "cannot change while serving"));
        }
        floodwall_core::config::check_duration("timeout", config.timeout)?;
        if config.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        let lease = config.lease.map(|l| (l.max_tokens, l.max_age));
        let derived = builder::Derived::of(&inner.name, config.quota, lease, config.fallback)?;
        if derived.local.is_some() != inner.local.is_some() {
            return Err(ConfigError::new(
                "fallback",
                "its kind cannot change while serving (its share can)",
            ));
        }
        if let Some(breaker) = config.breaker {
            breaker.validate()?;
        }
        let now = Instant::now();
        let mut live = inner.live.write();
        if let Some(breaker) = config.breaker {
            inner.breaker.reconfigure(breaker, now)?;
        }
        inner.leases.reconfigure(
            derived.lease_size,
            derived.lease_age,
            config.quota.interval(),
            now,
        );
        if let (Some(local), Some(quota)) = (&inner.local, derived.local) {
            local.reconfigure(quota, now);
        }
        *live = Live {
            quota: config.quota,
            interval_arg: derived.interval_arg,
            burst_arg: derived.burst_arg,
            timeout: config.timeout,
            fallback: config.fallback,
            lease,
            policy: derived.policy,
            changed_at: Some(now),
        };
        drop(live);
        inner.metrics.reconfigured.increment(1);
        inner.metrics.limit.set(counters::rate(&config.quota));
        tracing::info!(limiter = %inner.name, quota = ?config.quota, "redis limiter reconfigured");
        Ok(())
    }

    /// The breaker guarding Redis, for manual control (force it open for
    /// Redis maintenance, reset it after).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The Redis key used for `key`: the prefix and the key as it shows,
    /// a key that shows longer than
    /// [`MAX_KEY_LEN`](floodwall_core::key::MAX_KEY_LEN) bytes as its
    /// 128-bit digest ([`BoundedKey`](floodwall_core::key::BoundedKey)), so a
    /// client cannot grow Redis's memory with long keys.
    pub fn redis_key(&self, key: &K) -> String {
        types::redis_key(&self.inner.prefix, key)
    }
}

impl<K> Inner<K>
where
    K: Key,
{
    fn record(&self, source: Source, admitted: bool) {
        let i = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
        if admitted {
            self.stats.admitted.fetch_add(1, Ordering::Relaxed);
            self.metrics.requests[i].admitted();
        } else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            self.metrics.requests[i].rejected(RejectKind::RateLimited);
        }
    }

    /// Decides without Redis.
    fn fall_back(
        &self,
        key: &K,
        n: u32,
        now: Instant,
        retry: Option<Duration>,
    ) -> Result<Source, Refusal> {
        self.stats.fallback.fetch_add(1, Ordering::Relaxed);
        let fallback = self.live.read().fallback;
        let decision = match (&fallback, &self.local) {
            (Fallback::Open, _) => Ok(Source::FailOpen),
            (Fallback::Local { .. }, Some(local)) => match local.try_acquire(key, now, n) {
                Ok(()) => Ok(Source::Fallback),
                Err(Denied::RateLimited { retry_after }) => Err(Refusal::RateLimited {
                    retry_after,
                    source: Source::Fallback,
                }),
                Err(Denied::ExceedsBurst { .. }) => {
                    Err(Refusal::Unavailable { retry_after: retry })
                }
            },
            _ => Err(Refusal::Unavailable { retry_after: retry }),
        };
        let source = match &decision {
            Ok(source) => *source,
            Err(Refusal::RateLimited { source, .. }) => *source,
            Err(_) if fallback == Fallback::Closed => Source::FailClosed,
            Err(_) => Source::Fallback,
        };
        self.record(source, decision.is_ok());
        decision
    }
}

/// A decision's synchronous outcome.
pub(crate) enum Plan<K: Key> {
    Decided(Result<Source, Refusal>),
    Later(Later<K>),
}

/// The part of a decision that has to wait.
pub(crate) enum Later<K: Key> {
    /// For Redis.
    RoundTrip(RoundTrip<K>),
    /// For another request's lease fetch on the same key.
    Wait(Wait<K>),
}

impl<K: Key> Later<K> {
    pub(crate) async fn run(self) -> Result<Source, Refusal> {
        match self {
            Later::RoundTrip(trip) => trip.run().await,
            Later::Wait(wait) => {
                let Wait {
                    limiter,
                    key,
                    n,
                    deadline,
                    fetched,
                } = wait;
                let _ = tokio::time::timeout_at(deadline, fetched).await;
                // Look once more, without waiting again.
                match limiter.plan_until(key, n, Instant::now(), deadline, false) {
                    Plan::Decided(decision) => decision,
                    Plan::Later(later) => Box::pin(later.run()).await,
                }
            }
        }
    }
}

/// A request waiting for another request's lease fetch on its key.
pub(crate) struct Wait<K: Key> {
    limiter: RedisLimiter<K>,
    key: K,
    n: u32,
    deadline: Instant,
    fetched: OwnedNotified,
}

/// A decision that needs Redis. Dropping it before it finishes gives back
/// the breaker permit and the lease claim.
pub(crate) struct RoundTrip<K: Key> {
    inner: Arc<Inner<K>>,
    key: K,
    n: u32,
    want: u32,
    claimed: bool,
    deadline: Instant,
    permit: Option<Permit>,
}

impl<K> RoundTrip<K>
where
    K: Key,
{
    pub(crate) async fn run(mut self) -> Result<Source, Refusal> {
        let inner = self.inner.clone();
        let redis_key = types::redis_key(&inner.prefix, &self.key);
        let (interval_arg, burst_arg, changed_at) = {
            let live = inner.live.read();
            (
                live.interval_arg.clone(),
                live.burst_arg.clone(),
                live.changed_at,
            )
        };
        let since_us = changed_at.map_or(0, |at| {
            u64::try_from(Instant::now().saturating_duration_since(at).as_micros())
                .unwrap_or(u64::MAX)
        });
        let args = Args {
            key: &redis_key,
            interval: &interval_arg,
            burst: &burst_arg,
            need: self.n,
            want: self.want,
            since_us,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout_at(
            self.deadline,
            inner.script.run(&inner.redis, args),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(CallError::timeout()),
        };
        let now = Instant::now();
        inner
            .metrics
            .round_trip_seconds
            .record(now.saturating_duration_since(started).as_secs_f64());
        let permit = self.permit.take().expect("a round trip runs once");
        let grant = match result {
            Ok(grant) => {
                inner.breaker.on_success(permit, now);
                inner.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                inner.metrics.round_trips.increment(1);
                grant
            }
            Err(err) => {
                inner.breaker.on_failure(permit, now);
                inner.stats.record_error(err.class);
                inner.metrics.errors[err.class.index()].increment(1);
                tracing::debug!(limiter = %inner.name, error = %err, "redis limiter call failed");
                self.release_claim();
                return inner.fall_back(&self.key, self.n, now, None);
            }
        };
        if grant.granted >= self.n {
            if std::mem::take(&mut self.claimed) {
                inner.leases.fill(&self.key, grant.granted - self.n, now);
            }
            inner.record(Source::Redis, true);
            Ok(Source::Redis)
        } else {
            self.release_claim();
            inner
                .leases
                .block(&self.key, self.n, started, grant.retry_after);
            inner.record(Source::Redis, false);
            Err(Refusal::RateLimited {
                retry_after: grant.retry_after,
                source: Source::Redis,
            })
        }
    }

    fn release_claim(&mut self) {
        if std::mem::take(&mut self.claimed) {
            self.inner.leases.release(&self.key);
        }
    }
}

impl<K: Key> Drop for RoundTrip<K> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.inner.breaker.on_cancel(permit);
        }
        if self.claimed {
            self.inner.leases.release(&self.key);
        }
    }
}
