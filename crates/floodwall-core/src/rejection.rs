use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a floodwall layer refused a request.
///
/// The kind decides the response a caller sees (see `floodwall-http` and
/// `floodwall-grpc`): [`RateLimited`](RejectKind::RateLimited) is HTTP 429 /
/// gRPC `RESOURCE_EXHAUSTED`; [`DeadlineExceeded`](RejectKind::DeadlineExceeded)
/// is HTTP 504 / gRPC `DEADLINE_EXCEEDED`; every other kind is HTTP 503 /
/// gRPC `UNAVAILABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectKind {
    /// A rate limiter's quota is used up for now.
    RateLimited,
    /// The server shed the request to protect itself (queue full or too old).
    Overloaded,
    /// A circuit breaker is open (or forced open) and did not send the request.
    CircuitOpen,
    /// Adaptive client throttling dropped the request locally.
    Throttled,
    /// The request's deadline passed, or would pass before it could be served.
    DeadlineExceeded,
    /// Priority admission dropped the request: its priority is below the
    /// current admission level.
    Prioritized,
}

impl RejectKind {
    /// Every kind, in declaration order (the order the metrics keep them).
    pub const ALL: [RejectKind; 6] = [
        RejectKind::RateLimited,
        RejectKind::Overloaded,
        RejectKind::CircuitOpen,
        RejectKind::Throttled,
        RejectKind::DeadlineExceeded,
        RejectKind::Prioritized,
    ];

    /// A short, stable, lower-case name, used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectKind::RateLimited => "rate_limited",
            RejectKind::Overloaded => "overloaded",
            RejectKind::CircuitOpen => "circuit_open",
            RejectKind::Throttled => "throttled",
            RejectKind::DeadlineExceeded => "deadline_exceeded",
            RejectKind::Prioritized => "prioritized",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectKind::RateLimited => "rate limited",
            RejectKind::Overloaded => "overloaded",
            RejectKind::CircuitOpen => "circuit open",
            RejectKind::Throttled => "throttled",
            RejectKind::DeadlineExceeded => "deadline exceeded",
            RejectKind::Prioritized => "dropped by priority admission",
        })
    }
}

/// The quota a rate limiter enforces, as reported in the IETF
/// `RateLimit-Policy` / `RateLimit` header fields
/// (draft-ietf-httpapi-ratelimit-headers).
///
/// `quota` requests per `window`; `name` identifies the policy
/// (`RateLimit-Policy: "name";q=100;w=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    name: Arc<str>,
    quota: u64,
    window: Duration,
}

impl RateLimitPolicy {
    /// A policy named `name` allowing `quota` requests per `window`.
    pub fn new(name: impl Into<Arc<str>>, quota: u64, window: Duration) -> Self {
        Self {
            name: name.into(),
            quota,
            window,
        }
    }

    /// The policy's name (the header fields' item key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many requests the policy allows per [`window`](Self::window).
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The time window the quota applies to.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Implemented by every error a floodwall layer raises when it refuses a
/// request (as opposed to errors of the inner service, which pass through).
///
/// Layers box their rejections in the [`Rejected`] envelope, which is what
/// response mappers and callers look for.
pub trait Rejection: Error + Send + Sync + 'static {
    /// Why the request was refused.
    fn kind(&self) -> RejectKind;

    /// How long the caller should wait before trying again, when the layer
    /// knows. `None` means "unknown" (or "never", for a request that can
    /// never conform); it is not "retry now".
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// For rate limiters: the policy that was exceeded.
    fn rate_limit(&self) -> Option<&RateLimitPolicy> {
        None
    }

    /// Whether retrying the same request can never succeed (a request above
    /// a token bucket's burst, say). Response mappers then tell clients not
    /// to retry: no `Retry-After`, gRPC `grpc-retry-pushback-ms: -1`.
    fn is_permanent(&self) -> bool {
        false
    }

    /// For priority admission: the server's admission level when it refused
    /// the request. Response mappers send it back in
    /// [`ADMISSION_LEVEL_HEADER`](crate::wire::ADMISSION_LEVEL_HEADER) so
    /// collaborative clients stop sending what would be refused.
    fn admission_level(&self) -> Option<crate::Priority> {
        None
    }
}

/// The envelope in which every floodwall layer returns its rejections.
///
/// Rust cannot downcast a `dyn Error` to a trait, so layers box their
/// concrete rejection type in this one concrete type. Code that handles
/// errors (the HTTP and gRPC mappers, a retry policy, a test) finds it with
/// [`Rejected::find`] and reads the [`kind`](Self::kind) and
/// [`retry_after`](Self::retry_after) without knowing which layer raised it;
/// the concrete error is still reachable through [`get`](Self::get) and as the
/// [`source`](Error::source).
pub struct Rejected {
    inner: Box<dyn Rejection>,
}

impl Rejected {
    /// Wraps a rejection.
    pub fn new<R: Rejection>(rejection: R) -> Self {
        Self {
            inner: Box::new(rejection),
        }
    }

    /// Wraps a rejection and boxes it as a service error.
    pub fn boxed<R: Rejection>(rejection: R) -> crate::BoxError {
        Box::new(Self::new(rejection))
    }

    /// Why the request was refused.
    pub fn kind(&self) -> RejectKind {
        self.inner.kind()
    }

    /// How long to wait before trying again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after()
    }

    /// The rate-limit policy that was exceeded, for rate limiters.
    pub fn rate_limit(&self) -> Option<&RateLimitPolicy> {
        self.inner.rate_limit()
    }

    /// Whether retrying the same request can never succeed.
    pub fn is_permanent(&self) -> bool {
        self.inner.is_permanent()
    }

    /// The admission level in force, for priority-admission rejections.
    pub fn admission_level(&self) -> Option<crate::Priority> {
        self.inner.admission_level()
    }

    /// The concrete rejection, if it is an `R`.
    pub fn get<R: Rejection>(&self) -> Option<&R> {
        let err: &(dyn Error + 'static) = &*self.inner;
        err.downcast_ref::<R>()
    }

    /// Whether the concrete rejection is an `R`.
    pub fn is<R: Rejection>(&self) -> bool {
        self.get::<R>().is_some()
    }

    /// The concrete rejection, boxed.
    pub fn into_inner(self) -> Box<dyn Rejection> {
        self.inner
    }

    /// Finds a floodwall rejection in `err` or in its chain of sources (so a
    /// rejection wrapped by another layer's error is still found).
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Rejected> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<Rejected>() {
                return Some(r);
            }
            cur = e.source();
        }
        None
    }
}

impl<R: Rejection> From<R> for Rejected {
    fn from(rejection: R) -> Self {
        Self::new(rejection)
    }
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Rejected").field(&self.inner).finish()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request rejected ({})", self.kind())
    }
}

impl Error for Rejected {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Limited(Arc<RateLimitPolicy>);
    impl fmt::Display for Limited {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("limited")
        }
    }
    impl Error for Limited {}
    impl Rejection for Limited {
        fn kind(&self) -> RejectKind {
            RejectKind::RateLimited
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(2))
        }
        fn rate_limit(&self) -> Option<&RateLimitPolicy> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Wrapper(crate::BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn envelope_exposes_the_rejection() {
        let policy = Arc::new(RateLimitPolicy::new("api", 100, Duration::from_secs(1)));
        let err = Rejected::boxed(Limited(policy.clone()));
        let r = Rejected::find(&*err).unwrap();
        assert_eq!(r.kind(), RejectKind::RateLimited);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(r.rate_limit(), Some(&*policy));
        assert!(r.is::<Limited>());
        assert_eq!(r.to_string(), "request rejected (rate limited)");
        assert_eq!(r.source().unwrap().to_string(), "limited");
    }

    #[test]
    fn find_walks_the_source_chain() {
        let policy = Arc::new(RateLimitPolicy::new("api", 1, Duration::from_secs(1)));
        let err = Wrapper(Rejected::boxed(Limited(policy)));
        assert!(Rejected::find(&err).is_some());
        let plain = std::io::Error::other("boom");
        assert!(Rejected::find(&plain).is_none());
    }

    #[test]
    fn kinds_have_stable_labels() {
        assert_eq!(RejectKind::RateLimited.as_str(), "rate_limited");
        assert_eq!(RejectKind::DeadlineExceeded.as_str(), "deadline_exceeded");
        assert_eq!(
            RejectKind::Prioritized.to_string(),
            "dropped by priority admission"
        );
    }
}
