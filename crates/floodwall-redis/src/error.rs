//! The errors the Redis rate-limit service returns, boxed in
//! [`floodwall_core::Rejected`].
//!
//! Over-quota refusals are the same [`RateLimited`] and [`ExceedsBurst`] as
//! every floodwall rate limiter's (HTTP 429 with `Retry-After` and the
//! `RateLimit` headers); [`LimiterUnavailable`] is this crate's own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use floodwall_core::ConfigError;
pub use floodwall_ratelimit::error::{ExceedsBurst, RateLimited};

use floodwall_core::{BoxError, RateLimitPolicy, RejectKind, Rejected, Rejection};

use crate::Refusal;

/// Redis could not decide (error, timeout, or its breaker is open) and the
/// limiter is configured to fail closed, or the request is heavier than the
/// local fallback's burst. An [`Overloaded`](RejectKind::Overloaded)
/// rejection: HTTP 503 / gRPC `UNAVAILABLE`.
#[derive(Debug, Clone)]
pub struct LimiterUnavailable {
    retry_after: Option<Duration>,
    policy: Arc<RateLimitPolicy>,
}

impl LimiterUnavailable {
    /// The limiter enforcing `policy` could not decide; it will try Redis
    /// again after `retry_after`, if known.
    pub fn new(retry_after: Option<Duration>, policy: Arc<RateLimitPolicy>) -> Self {
        Self {
            retry_after,
            policy,
        }
    }

    /// The quota that could not be checked.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }
}

impl fmt::Display for LimiterUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit \"{}\" could not be checked: redis is unavailable",
            self.policy.name()
        )
    }
}

impl std::error::Error for LimiterUnavailable {}

impl Rejection for LimiterUnavailable {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// The boxed error a refusal becomes.
pub(crate) fn boxed(refusal: Refusal, policy: &Arc<RateLimitPolicy>) -> BoxError {
    match refusal {
        Refusal::RateLimited { retry_after, .. } => {
            Rejected::boxed(RateLimited::new(retry_after, policy.clone()))
        }
        Refusal::ExceedsBurst { requested, burst } => {
            Rejected::boxed(ExceedsBurst::new(requested, burst, policy.clone()))
        }
        Refusal::Unavailable { retry_after } => {
            Rejected::boxed(LimiterUnavailable::new(retry_after, policy.clone()))
        }
    }
}

/// What kind of failure kept Redis from deciding: a label of
/// `floodwall_redis_errors_total{reason}` and the cause in
/// [`Health::Fallback`](crate::Health::Fallback).
///
/// The classes are what an operator does differently: *unreachable* (the
/// network or the process), *timeout* (Redis slow or frozen), *auth*
/// (credentials or ACL: fix the configuration, waiting will not help),
/// *read-only* (a failover in progress: a replica answered, or the cluster
/// is re-electing), *loading* (Redis is loading its dataset after a
/// restart), *script* (the limiter's script failed or answered in a shape
/// it does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Connecting failed or the connection was lost (refused, reset,
    /// no route, every cluster node down, Sentinel found no master).
    Unreachable,
    /// No answer within the limiter's timeout.
    Timeout,
    /// Authentication or authorisation failed: `NOAUTH`, `WRONGPASS`,
    /// `NOPERM`.
    Auth,
    /// A replica or a cluster in failover answered: `READONLY`,
    /// `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`.
    ReadOnly,
    /// Redis is loading its dataset (`LOADING`) or busy running another
    /// script (`BUSY`).
    Loading,
    /// The script failed (`ERR` from Lua, `WRONGTYPE` when its key holds
    /// another type, `NOSCRIPT` after reloading) or its reply had an
    /// unexpected shape.
    Script,
    /// Anything else (a client configuration error, for one).
    Other,
}

impl ErrorClass {
    /// Every class, in label order.
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Unreachable,
        ErrorClass::Timeout,
        ErrorClass::Auth,
        ErrorClass::ReadOnly,
        ErrorClass::Loading,
        ErrorClass::Script,
        ErrorClass::Other,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unreachable => "unreachable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Auth => "auth",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::Loading => "loading",
            ErrorClass::Script => "script",
            ErrorClass::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The class of a redis-rs error.
    pub fn of(err: &redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        if err.is_timeout() {
            return ErrorClass::Timeout;
        }
        match err.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                ErrorClass::Auth
            }
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => ErrorClass::ReadOnly,
            ErrorKind::Server(ServerErrorKind::BusyLoading) => ErrorClass::Loading,
            ErrorKind::Server(
                ServerErrorKind::ResponseError
                | ServerErrorKind::NoScript
                | ServerErrorKind::ExecAbort,
            )
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse => ErrorClass::Script,
            ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::NoValidReplicasFoundBySentinel => ErrorClass::Unreachable,
            ErrorKind::Extension => match err.code() {
                Some("NOAUTH" | "WRONGPASS" | "NOPERM") => ErrorClass::Auth,
                Some("BUSY") => ErrorClass::Loading,
                // The limiter's key holds something else: the script failed.
                Some("WRONGTYPE") => ErrorClass::Script,
                _ => ErrorClass::Other,
            },
            _ => ErrorClass::Other,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one call to Redis did not decide: its class and redis-rs's error
/// (none for a timeout of the limiter's own).
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    pub(crate) class: ErrorClass,
    pub(crate) source: Option<redis::RedisError>,
}

impl CallError {
    pub(crate) fn timeout() -> Self {
        Self {
            class: ErrorClass::Timeout,
            source: None,
        }
    }

    pub(crate) fn script(what: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Script,
            source: Some(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from the limiter script",
                what.into(),
            ))),
        }
    }
}

impl From<redis::RedisError> for CallError {
    fn from(err: redis::RedisError) -> Self {
        Self {
            class: ErrorClass::of(&err),
            source: Some(err),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(err) => write!(f, "{}: {err}", self.class),
            None => write!(f, "{}", self.class),
        }
    }
}
