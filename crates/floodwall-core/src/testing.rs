//! Helpers for testing code that reads rejections (feature `test-util`).

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{RateLimitPolicy, RejectKind, Rejection};

/// A rejection made from parts: any kind, retry-after, permanence and
/// rate-limit policy, for testing a response mapper or a classifier
/// without the layer that would raise it. Displays as `stub <kind>`.
///
/// ```
/// use floodwall_core::testing::StubRejection;
/// use floodwall_core::{RejectKind, Rejected};
///
/// let stub = StubRejection::new(RejectKind::Overloaded).permanent();
/// assert_eq!(stub.to_string(), "stub overloaded");
/// let r = Rejected::new(stub);
/// assert!(r.is_permanent());
/// assert_eq!(r.kind(), RejectKind::Overloaded);
/// ```
#[derive(Debug, Clone)]
pub struct StubRejection {
    kind: RejectKind,
    retry_after: Option<Duration>,
    permanent: bool,
    policy: Option<Arc<RateLimitPolicy>>,
}

impl StubRejection {
    /// A rejection of `kind`, with no retry-after and no policy.
    pub fn new(kind: RejectKind) -> Self {
        Self {
            kind,
            retry_after: None,
            permanent: false,
            policy: None,
        }
    }

    /// With a retry-after.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Permanent: retrying cannot succeed.
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// With the rate-limit policy it enforces.
    pub fn policy(mut self, policy: Arc<RateLimitPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl fmt::Display for StubRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stub {}", self.kind)
    }
}

impl Error for StubRejection {}

impl Rejection for StubRejection {
    fn kind(&self) -> RejectKind {
        self.kind
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    fn rate_limit(&self) -> Option<&RateLimitPolicy> {
        self.policy.as_deref()
    }

    fn is_permanent(&self) -> bool {
        self.permanent
    }
}
