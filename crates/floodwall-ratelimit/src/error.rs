//! Errors the rate-limit layers return, boxed in [`floodwall_core::Rejected`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::{RateLimitPolicy, RejectKind, Rejection};

pub use floodwall_core::ConfigError;

/// The request was refused by a rate limiter; it would be admitted after
/// [`retry_after`](Self::retry_after) if nothing else arrived.
///
/// What "admitted" means depends on the limiter: for a token bucket (also in
/// wait mode), the sliding window and the leaky meter, admitted at once;
/// for the leaky shaper, accepted into its queue.
///
/// In wait mode this means the wait would have exceeded the configured
/// maximum.
#[derive(Debug, Clone)]
pub struct RateLimited {
    retry_after: Duration,
    policy: Arc<RateLimitPolicy>,
}

impl RateLimited {
    /// A refusal by the limiter enforcing `policy`, which would admit the
    /// request after `retry_after`. For limiters outside this crate (such as
    /// `floodwall-redis`) that report the same error.
    pub fn new(retry_after: Duration, policy: Arc<RateLimitPolicy>) -> Self {
        Self {
            retry_after,
            policy,
        }
    }

    /// Exactly how long until the request would have conformed.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The quota that was exceeded.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit \"{}\" exceeded; retry after {:?}",
            self.policy.name(),
            self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}

impl Rejection for RateLimited {
    fn kind(&self) -> RejectKind {
        RejectKind::RateLimited
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }

    fn rate_limit(&self) -> Option<&RateLimitPolicy> {
        Some(&self.policy)
    }
}

/// The request asked for more than the limiter allows at once (more tokens
/// than the burst, more than a window's limit), so it can never conform. Not
/// a wait: retrying will not help.
#[derive(Debug, Clone)]
pub struct ExceedsBurst {
    requested: u32,
    burst: u32,
    policy: Arc<RateLimitPolicy>,
}

impl ExceedsBurst {
    /// A request of `requested` units refused by a limiter that allows at
    /// most `burst` at once under `policy`.
    pub fn new(requested: u32, burst: u32, policy: Arc<RateLimitPolicy>) -> Self {
        Self {
            requested,
            burst,
            policy,
        }
    }

    /// Units the request asked for.
    pub fn requested(&self) -> u32 {
        self.requested
    }

    /// The most the limiter allows at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

impl fmt::Display for ExceedsBurst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request of {} units exceeds the most allowed at once ({}) by rate limit \"{}\"",
            self.requested,
            self.burst,
            self.policy.name()
        )
    }
}

impl std::error::Error for ExceedsBurst {}

impl Rejection for ExceedsBurst {
    fn kind(&self) -> RejectKind {
        RejectKind::RateLimited
    }

    fn is_permanent(&self) -> bool {
        true
    }

    fn rate_limit(&self) -> Option<&RateLimitPolicy> {
        Some(&self.policy)
    }
}
