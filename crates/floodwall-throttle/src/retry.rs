use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, RETRY_ATTEMPTS, RETRY_SKIPPED};
use floodwall_core::outcome::{self, Silence, Verdict as Verdict_};
use floodwall_core::{BoxError, GrpcCode, Outcome, Rejected, ResultClassifier};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Random, RetryBudget, SplitMix};

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
    /// it; `hint` says whether and when it may be retried (a retry still
    /// needs the budget's permission).
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
/// [`Refused`](Verdict::Refused) (it never reached the dependency), retried
/// after its retry-after or the backoff; anything else is a failure,
/// retried after the backoff.
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
            None => RetryHint::Retry,
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
pub struct Backoff {
    /// The bound for the first retry. Default 100 ms.
    pub initial: Duration,
    /// The largest bound. Default 1 s.
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

struct Shared<P> {
    policy: P,
    budget: Arc<RetryBudget>,
    max_attempts: u32,
    backoff: Backoff,
    max_pushback: Duration,
    rng: Box<dyn Random>,
    name: Arc<str>,
    metrics: Metrics,
}

struct Metrics {
    attempts: Counter,
    skipped_budget: Counter,
    skipped_attempts: Counter,
    skipped_do_not_retry: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let name = name.to_owned();
        let skipped = |reason: &'static str| metrics::counter!(RETRY_SKIPPED, LABEL_NAME => name.clone(), LABEL_REASON => reason);
        Self {
            attempts: metrics::counter!(RETRY_ATTEMPTS, LABEL_NAME => name.clone()),
            skipped_budget: skipped("budget"),
            skipped_attempts: skipped("attempts"),
            skipped_do_not_retry: skipped("do_not_retry"),
        }
    }
}

/// A Tower layer that retries failed attempts within a retry budget (gRPC
/// proposal A6), with exponential backoff and full jitter.
///
/// - At most [`max_attempts`](Builder::max_attempts) attempts per request
///   (3 by default, the first included).
/// - A retry is sent only while the shared [`RetryBudget`] allows it; every
///   attempt's outcome feeds the budget.
/// - Server pushback wins over the backoff: a rejection's retry-after,
///   `Retry-After`, `grpc-retry-pushback-ms` (negative or unparseable: never
///   retry; longer than [`max_pushback`](Builder::max_pushback): give up),
///   and resets the backoff to its first step.
/// - Only retryable failures (and pushback saying not to retry) count
///   against the budget; [`Verdict::Fatal`] failures are returned as they
///   are.
/// - A failure it gives up on is marked "do not retry" ([`DoNotRetry`] for
///   errors, [`NO_RETRY_HEADER`] for HTTP responses with [`RetryHttp`]), and
///   a marked failure is never retried: only the layer directly above a
///   failing service retries, instead of every layer multiplying the load.
///
/// Requests must be `Clone` to be retried (each attempt sends a clone); the
/// inner service must be `Clone` (retries call a clone of it, polled ready
/// first). For HTTP bodies, clone-able bodies such as `Full<Bytes>` work;
/// streaming bodies cannot be retried.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use floodwall_core::BoxError;
/// use floodwall_throttle::{RetryBudget, RetryLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = calls.clone();
/// let flaky = service_fn(move |n: u32| {
///     let first = c.fetch_add(1, Ordering::Relaxed) == 0;
///     async move {
///         if first { Err::<u32, BoxError>("connection reset".into()) } else { Ok(n) }
///     }
/// });
/// let budget = Arc::new(RetryBudget::new(10.0, 0.1)?);
/// let svc = RetryLayer::builder().budget(budget.clone()).build().layer(flaky);
/// assert_eq!(svc.oneshot(7).await?, 7);
/// assert_eq!(calls.load(Ordering::Relaxed), 2, "one retry");
/// assert_eq!(budget.tokens(), 9.1, "one failure, one success");
/// # Ok(())
/// # }
/// ```
pub struct RetryLayer<P = RetryErrors> {
    shared: Arc<Shared<P>>,
}

impl RetryLayer {
    /// A builder: budget, attempts, backoff, policy, random source, name.
    pub fn builder() -> Builder {
        Builder {
            policy: RetryErrors,
            budget: None,
            max_attempts: 3,
            backoff: Backoff::default(),
            max_pushback: Duration::from_secs(30),
            rng: None,
            name: Arc::from("retry"),
        }
    }
}

impl<P> RetryLayer<P> {
    /// The budget this layer draws on.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<P> Clone for RetryLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for RetryLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("budget", &self.shared.budget)
            .field("max_attempts", &self.shared.max_attempts)
            .field("backoff", &self.shared.backoff)
            .finish_non_exhaustive()
    }
}

impl<S, P> Layer<S> for RetryLayer<P> {
    type Service = RetryService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`RetryLayer`].
pub struct Builder<P = RetryErrors> {
    policy: P,
    budget: Option<Arc<RetryBudget>>,
    max_attempts: u32,
    backoff: Backoff,
    max_pushback: Duration,
    rng: Option<Box<dyn Random>>,
    name: Arc<str>,
}

impl<P> fmt::Debug for Builder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<P> Builder<P> {
    /// The budget (share one `Arc` among the layers for one backend).
    /// Default: a fresh budget of 10 tokens with ratio 0.1.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Attempts per request, the first included (at least 1). Default 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest server pushback (`Retry-After`, `grpc-retry-pushback-ms`,
    /// a rejection's retry-after) worth waiting for; a longer one ends the
    /// retries. Default 30 s.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// The random source of the jitter. Default: [`SplitMix`] from the clock.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// The metric label. Default `"retry"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How attempts are read: [`RetryErrors`] (default) or [`RetryHttp`].
    pub fn policy<P2>(self, policy: P2) -> Builder<P2> {
        Builder {
            policy,
            budget: self.budget,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_pushback: self.max_pushback,
            rng: self.rng,
            name: self.name,
        }
    }

    /// The layer.
    pub fn build(self) -> RetryLayer<P> {
        let budget = self.budget.unwrap_or_else(|| {
            Arc::new(RetryBudget::new(10.0, 0.1).expect("valid default budget"))
        });
        RetryLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(&self.name),
                policy: self.policy,
                budget,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                max_pushback: self.max_pushback,
                rng: self
                    .rng
                    .unwrap_or_else(|| Box::new(SplitMix::from_entropy())),
                name: self.name,
            }),
        }
    }
}

/// The service a [`RetryLayer`] builds.
pub struct RetryService<S, P = RetryErrors> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S, P> RetryService<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for RetryService<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for RetryService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for RetryService<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The instance polled ready makes the first attempt and is kept for
        // retries (polled ready again before each); a clone stays behind.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let fut = svc.call(req.clone());
        RetryFuture {
            svc,
            req,
            shared: self.shared.clone(),
            attempt: 1,
            backoff_step: 1,
            state: State::Calling { fut },
        }
    }
}

pin_project! {
    /// The response future of [`RetryService`].
    pub struct RetryFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        svc: S,
        req: Req,
        shared: Arc<Shared<P>>,
        attempt: u32,
        // The exponent of the next backoff; reset after a server pushback
        // (A6).
        backoff_step: u32,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        Waiting { sleep: Pin<Box<Sleep>> },
        Ready,
    }
}

impl<S, Req, P> Future for RetryFuture<S, Req, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response>,
    Req: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let hint = match shared.policy.check(result.as_ref()) {
                        Verdict::Success => {
                            shared.budget.on_success();
                            return Poll::Ready(result);
                        }
                        Verdict::Fatal => return Poll::Ready(give_up(&shared.policy, result)),
                        Verdict::Failure(hint) => {
                            shared.budget.on_failure();
                            hint
                        }
                        // Never reached the dependency: the budget does not
                        // count it.
                        Verdict::Refused(hint) => hint,
                    };
                    let skipped = match hint {
                        RetryHint::DoNotRetry => Some(&shared.metrics.skipped_do_not_retry),
                        RetryHint::RetryAfter(d) if d > shared.max_pushback => {
                            Some(&shared.metrics.skipped_do_not_retry)
                        }
                        _ if *this.attempt >= shared.max_attempts => {
                            Some(&shared.metrics.skipped_attempts)
                        }
                        _ if !shared.budget.can_retry() => Some(&shared.metrics.skipped_budget),
                        _ => None,
                    };
                    if let Some(counter) = skipped {
                        counter.increment(1);
                        return Poll::Ready(give_up(&shared.policy, result));
                    }
                    let delay = match hint {
                        RetryHint::RetryAfter(d) => {
                            *this.backoff_step = 1;
                            d
                        }
                        _ => {
                            let step = *this.backoff_step;
                            *this.backoff_step = step.saturating_add(1);
                            shared.backoff.delay(step, shared.rng.next_f64())
                        }
                    };
                    *this.attempt += 1;
                    shared.metrics.attempts.increment(1);
                    tracing::debug!(name = %shared.name, attempt = *this.attempt, ?delay, "retrying");
                    this.state.set(State::Waiting {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    });
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(err) = ready!(this.svc.poll_ready(cx)) {
                        // The service cannot take the retry: end here, marked
                        // so that layers above do not retry either.
                        return Poll::Ready(give_up(&this.shared.policy, Err(err.into())));
                    }
                    let fut = this.svc.call(this.req.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

/// Marks a failure the layer gives up on, for retry layers further up.
fn give_up<P: RetryPolicy<R>, R>(policy: &P, result: Result<R, BoxError>) -> Result<R, BoxError> {
    match result {
        Ok(mut res) => {
            policy.mark(&mut res);
            Ok(res)
        }
        Err(err) if error_verdict(&err) == Verdict::Failure(RetryHint::DoNotRetry) => Err(err),
        Err(err) => Err(Box::new(DoNotRetry::new(err))),
    }
}

impl<S, Req, P> fmt::Debug for RetryFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
