//! What the limiter answers with: sources, refusals, fallbacks, counters, health.

use std::hash::Hash;

use super::*;

/// What can key a [`RedisLimiter`]: hashable for the local lease and
/// fallback maps, and `Display` for the Redis key. Implemented for every
/// such type (`String`, `&'static str`, `IpAddr`, integers, …).
pub trait Key: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

impl<T: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static> Key for T {}

/// Who decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The limiter script in Redis (one round trip).
    Redis,
    /// Tokens this instance had leased from Redis earlier (no round trip).
    Lease,
    /// A refusal Redis gave for this key moments ago, remembered until the
    /// key's next token conforms (no round trip; Redis would refuse too).
    Cached,
    /// The local fallback bucket, because Redis failed, timed out, or its
    /// breaker is open.
    Fallback,
    /// Admitted without a decision, because Redis could not answer and the
    /// limiter is configured to fail open.
    FailOpen,
    /// Refused without a decision, because Redis could not answer and the
    /// limiter is configured to fail closed.
    FailClosed,
}

impl Source {
    /// A short, stable, lower-case name, used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Lease => "lease",
            Source::Cached => "cached",
            Source::Fallback => "fallback",
            Source::FailOpen => "fail_open",
            Source::FailClosed => "fail_closed",
        }
    }
}

/// Why the limiter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the quota: the global one (`Source::Redis`, or
    /// `Source::Cached` when Redis refused the key moments ago) or, while
    /// Redis is away, the local fallback's share of it
    /// (`Source::Fallback`).
    RateLimited {
        /// How long until the request would conform.
        retry_after: Duration,
        /// Who decided.
        source: Source,
    },
    /// The request weighs more than the burst and can never conform.
    ExceedsBurst {
        /// Units asked for.
        requested: u32,
        /// The most allowed at once.
        burst: u32,
    },
    /// Redis could not decide and the limiter fails closed (or the request
    /// is heavier than the local fallback's burst).
    Unavailable {
        /// When the limiter will try Redis again, if known.
        retry_after: Option<Duration>,
    },
}

/// What to do when Redis cannot answer within the timeout (or its breaker
/// is open).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Fallback {
    /// Admit every request: availability over the quota.
    Open,
    /// Refuse every request (as [`Refusal::Unavailable`]): the quota over
    /// availability.
    Closed,
    /// Decide with a local token bucket per key, at `share` of the global
    /// rate and burst (the burst rounded up, at least 1). With `N`
    /// instances, `share = 1/N` keeps the global rate roughly right.
    Local {
        /// The fraction of the global rate this instance allows on its own,
        /// in `(0, 1]`.
        share: f64,
    },
}

impl Default for Fallback {
    /// `Local { share: 0.1 }`: right for about ten instances.
    fn default() -> Self {
        Fallback::Local { share: 0.1 }
    }
}

/// Counters of what the limiter did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Script calls Redis answered.
    pub round_trips: u64,
    /// Script calls that failed or timed out.
    pub errors: u64,
    /// Requests decided from leased tokens.
    pub lease_hits: u64,
    /// Requests refused from a remembered refusal.
    pub cached_refusals: u64,
    /// Requests decided without Redis (local bucket, fail open, fail closed).
    pub fallback_decisions: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused.
    pub rejected: u64,
    /// `errors` by class.
    pub errors_by_class: ErrorCounts,
}

/// Failed calls to Redis, by [`ErrorClass`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorCounts {
    /// [`ErrorClass::Unreachable`].
    pub unreachable: u64,
    /// [`ErrorClass::Timeout`].
    pub timeout: u64,
    /// [`ErrorClass::Auth`].
    pub auth: u64,
    /// [`ErrorClass::ReadOnly`].
    pub read_only: u64,
    /// [`ErrorClass::Loading`].
    pub loading: u64,
    /// [`ErrorClass::Script`].
    pub script: u64,
    /// [`ErrorClass::Other`].
    pub other: u64,
}

impl ErrorCounts {
    pub(crate) fn from_fn(mut count: impl FnMut(ErrorClass) -> u64) -> Self {
        Self {
            unreachable: count(ErrorClass::Unreachable),
            timeout: count(ErrorClass::Timeout),
            auth: count(ErrorClass::Auth),
            read_only: count(ErrorClass::ReadOnly),
            loading: count(ErrorClass::Loading),
            script: count(ErrorClass::Script),
            other: count(ErrorClass::Other),
        }
    }

    /// The count of one class.
    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Unreachable => self.unreachable,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Auth => self.auth,
            ErrorClass::ReadOnly => self.read_only,
            ErrorClass::Loading => self.loading,
            ErrorClass::Script => self.script,
            ErrorClass::Other => self.other,
        }
    }
}

/// Whether Redis is deciding, as the limiter's breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The breaker is closed: requests go to Redis.
    Redis,
    /// The breaker is open, half-open, or forced open: requests are decided
    /// by the fallback (half-open lets a few probes through to Redis).
    Fallback {
        /// The breaker's state.
        state: State,
        /// The class of the last failed call (none when the breaker was
        /// forced open before any call failed).
        cause: Option<ErrorClass>,
    },
}

/// `prefix` and `key` as a [`BoundedKey`](floodwall_core::key::BoundedKey)
/// shows it (itself up to 64 bytes, else a digest; one-to-one).
pub(crate) fn redis_key(prefix: &str, key: &impl std::fmt::Display) -> String {
    format!(
        "{prefix}{}",
        floodwall_core::key::BoundedKey::new(key.to_string())
    )
}
