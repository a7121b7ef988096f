//! How a retry layer reads attempts: verdicts, hints, policies, backoff.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use floodwall_core::outcome::{self, Silence, Verdict as Verdict_};
use floodwall_core::{BoxError, GrpcCode, Outcome, Rejected, ResultClassifier};

/// The header a floodwall retry layer adds to an HTTP response it gave up
/// on, so that retry layers further up do not retry it again.
pub const NO_RETRY_HEADER: &str = "x-floodwall-no-retry";

/// What a finished attempt means for retrying.
///
/// Following gRPC A6, only failures that could be retried (and server
/// pushback saying not to) count against the budget: a failure that is
/// final by nature (a bad request, an unimplemented method) is
/// [`Fatal`](Verdict::Fatal) and leaves the budget alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The attempt succeeded (for the budget: a success).
    Success,
    /// The attempt failed (for the budget: a failure); `hint` says whether
    /// and when it may be retried.
    Failure(RetryHint),
    /// The attempt failed in a way retrying cannot fix: not retried, not
    /// counted by the budget.
    Fatal,
    /// The attempt never reached the dependency: a floodwall layer below
    /// refused it (floodwall's outcome rule, [`floodwall_core::outcome`]).
    /// It says nothing about the dependency, so the budget does not count
    /// it; `hint` says whether and when it may be retried (only after a
    /// retry-after the refusal gave; a retry still needs the budget's
    /// permission).
    Refused(RetryHint),
}

/// Whether a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Retry after the usual backoff.
    Retry,
    /// Retry after exactly this long (server pushback, `Retry-After`).
    RetryAfter(Duration),
    /// Never retry: the server said so, or it can never succeed.
    DoNotRetry,
}

/// How a retry layer reads attempts: which are failures, which may be
/// retried, and how to mark a response it gave up on.
pub trait RetryPolicy<Resp>: Send + Sync + 'static {
    /// The verdict on an attempt's result.
    fn check(&self, result: Result<&Resp, &BoxError>) -> Verdict;

    /// Marks a failed response the layer gives up on as "do not retry", for
    /// retry layers further up. By default responses are left as they are
    /// (errors are always wrapped in [`DoNotRetry`]).
    fn mark(&self, response: &mut Resp) {
        let _ = response;
    }
}

/// The verdict on an error: [`DoNotRetry`] anywhere in its chain is never
/// retried; a permanent floodwall rejection is [`Fatal`](Verdict::Fatal); a
/// deadline the caller imposed that ran out is [`Fatal`](Verdict::Fatal)
/// (no time is left to retry in, and it says nothing about the dependency);
/// a timeout of an attempt that had its full budget is a failure, retried
/// after the backoff; any other floodwall rejection is
/// [`Refused`](Verdict::Refused) (it never reached the dependency): retried
/// after its retry-after if it has one (a rate limit saying when), never
/// otherwise — retrying a request a local throttle, an open breaker or a
/// shedding queue just refused only adds the load they refused, and, since
/// refusals do not spend the budget, would feed itself; anything else is a
/// failure, retried after the backoff.
pub fn error_verdict(err: &BoxError) -> Verdict {
    let mut cur: Option<&(dyn Error + 'static)> = Some(&**err);
    while let Some(e) = cur {
        if e.is::<DoNotRetry>() {
            return Verdict::Failure(RetryHint::DoNotRetry);
        }
        cur = e.source();
    }
    let Some(r) = Rejected::find(&**err) else {
        return Verdict::Failure(RetryHint::Retry);
    };
    if r.is_permanent() {
        return Verdict::Fatal;
    }
    match outcome::judge::<(), _>(&ResultClassifier, Err(err), false) {
        Verdict_::TimedOut => Verdict::Failure(RetryHint::Retry),
        Verdict_::Silent(Silence::CallerDeadline) => Verdict::Fatal,
        _ => Verdict::Refused(match r.retry_after() {
            Some(d) => RetryHint::RetryAfter(d),
            None => RetryHint::DoNotRetry,
        }),
    }
}

/// Every `Ok` is a success; errors as [`error_verdict`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors;

impl<Resp> RetryPolicy<Resp> for RetryErrors {
    fn check(&self, result: Result<&Resp, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => error_verdict(e),
        }
    }
}

/// HTTP and gRPC-over-HTTP responses: 429, 502, 503 and 504, and gRPC
/// `UNAVAILABLE` and `RESOURCE_EXHAUSTED` (in a trailers-only response), are
/// retried, honouring `grpc-retry-pushback-ms` (negative or unparseable:
/// never) and `Retry-After` (seconds); other server errors are
/// [`Fatal`](Verdict::Fatal); a response marked with [`NO_RETRY_HEADER`] is
/// never retried. Errors as [`error_verdict`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryHttp;

impl<B> RetryPolicy<http::Response<B>> for RetryHttp {
    fn check(&self, result: Result<&http::Response<B>, &BoxError>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(e) => return error_verdict(e),
        };
        let headers = res.headers();
        // Decide whether the response is a retryable failure at all.
        match headers.get("grpc-status") {
            Some(code) => {
                let code = code
                    .to_str()
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .map_or(GrpcCode::Unknown, GrpcCode::from_i32);
                match Outcome::from_grpc_code(code) {
                    Outcome::Success => return Verdict::Success,
                    // A deadline the dependency enforced: retrying cannot
                    // make it longer.
                    Outcome::Failure | Outcome::TimedOut => return Verdict::Fatal,
                    Outcome::Overloaded => {}
                }
            }
            None => match res.status().as_u16() {
                429 | 502 | 503 | 504 => {}
                500..=599 => return Verdict::Fatal,
                _ => return Verdict::Success,
            },
        }
        if headers.contains_key(NO_RETRY_HEADER) {
            return Verdict::Failure(RetryHint::DoNotRetry);
        }
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if headers.contains_key("grpc-retry-pushback-ms") {
            // A6: a negative or unparseable pushback means do not retry.
            return Verdict::Failure(match number("grpc-retry-pushback-ms").map(u64::try_from) {
                Some(Ok(ms)) => RetryHint::RetryAfter(Duration::from_millis(ms)),
                _ => RetryHint::DoNotRetry,
            });
        }
        match number("retry-after").and_then(|s| u64::try_from(s).ok()) {
            Some(secs) => Verdict::Failure(RetryHint::RetryAfter(Duration::from_secs(secs))),
            None => Verdict::Failure(RetryHint::Retry),
        }
    }

    fn mark(&self, response: &mut http::Response<B>) {
        response
            .headers_mut()
            .insert(NO_RETRY_HEADER, http::HeaderValue::from_static("1"));
    }
}

/// Marks an answer a retry or hedging layer gives up on, for retry layers
/// further up: a response through the policy's [`mark`](RetryPolicy::mark),
/// an error wrapped in [`DoNotRetry`] (unless it already carries one).
pub fn mark_given_up<P: RetryPolicy<R>, R>(
    policy: &P,
    result: Result<R, BoxError>,
) -> Result<R, BoxError> {
    match result {
        Ok(mut res) => {
            policy.mark(&mut res);
            Ok(res)
        }
        Err(err) if error_verdict(&err) == Verdict::Failure(RetryHint::DoNotRetry) => Err(err),
        Err(err) => Err(Box::new(DoNotRetry::new(err))),
    }
}

/// An error a retry layer gave up on, marked so that retry layers further
/// up do not retry it again. The original error is its source (and
/// `Rejected::find` still finds a rejection inside).
#[derive(Debug)]
pub struct DoNotRetry {
    inner: BoxError,
}

impl DoNotRetry {
    /// Marks `inner`.
    pub fn new(inner: BoxError) -> Self {
        Self { inner }
    }

    /// The original error.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Display for DoNotRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (not retried further)", self.inner)
    }
}

impl Error for DoNotRetry {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.inner)
    }
}

/// Exponential backoff with full jitter: the `n`-th retry waits a uniform
/// random time in `[0, min(initial · multiplier^(n−1), max)]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Backoff {
    /// The bound for the first retry. Default 100 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub initial: Duration,
    /// The largest bound. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max: Duration,
    /// How the bound grows per retry. Default 2.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The wait before retry `n` (1-based) given a uniform draw in `[0, 1)`.
    pub fn delay(&self, n: u32, draw: f64) -> Duration {
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let exponent = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let bound = self.initial.as_secs_f64() * multiplier.powi(exponent);
        let bound = if bound.is_nan() {
            self.max.as_secs_f64()
        } else {
            bound.min(self.max.as_secs_f64())
        };
        let draw = if draw.is_nan() {
            0.0
        } else {
            draw.clamp(0.0, 1.0)
        };
        Duration::try_from_secs_f64(bound * draw).unwrap_or(self.max)
    }
}
