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
