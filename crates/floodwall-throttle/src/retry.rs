use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON};
use floodwall_core::{BoxError, ConfigError};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Random, RetryBudget, SplitMix};

mod config;
mod policy;

pub use config::{BudgetConfig, RetryConfig};

pub use policy::{
    Backoff, DoNotRetry, NO_RETRY_HEADER, RetryErrors, RetryHint, RetryHttp, RetryPolicy, Verdict,
    error_verdict, mark_given_up,
};

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
        let skipped = |reason: &'static str| metrics::counter!(crate::RETRY_SKIPPED, LABEL_NAME => name.clone(), LABEL_REASON => reason);
        Self {
            attempts: metrics::counter!(crate::RETRY_ATTEMPTS, LABEL_NAME => name.clone()),
            skipped_budget: skipped("budget"),
            skipped_attempts: skipped("attempts"),
            skipped_do_not_retry: skipped("do_not_retry"),
        }
    }
}

/// A Tower layer that retries failed attempts within a retry budget (gRPC
/// proposal A6), with exponential backoff and full jitter.
///
/// - At most [`max_attempts`](RetryConfig::max_attempts) attempts per request
///   (3 by default, the first included).
/// - A retry is sent only while the shared [`RetryBudget`] allows it; every
///   attempt's outcome feeds the budget.
/// - Server pushback wins over the backoff: a rejection's retry-after,
///   `Retry-After`, `grpc-retry-pushback-ms` (negative or unparseable: never
///   retry; longer than [`max_pushback`](RetryConfig::max_pushback): give up),
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
/// use floodwall_core::{BoxError, ConfigError};
/// use floodwall_throttle::{RetryBudget, RetryConfig, RetryLayer};
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
/// let svc = RetryLayer::builder(RetryConfig::default())
///     .budget(budget.clone())
///     .build()?
///     .layer(flaky);
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
    /// A layer for `config`, retrying [`RetryErrors`], with its own budget.
    ///
    /// # Errors
    /// As [`RetryConfig::validate`].
    pub fn new(config: RetryConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name, the policy, a shared budget and the
    /// jitter's random source.
    pub fn builder(config: RetryConfig) -> Builder {
        Builder {
            config,
            policy: RetryErrors,
            budget: None,
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

    /// A handle on the layer's name and budget.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle {
            name: self.shared.name.clone(),
            budget: self.shared.budget.clone(),
        }
    }
}

/// Reads a [`RetryLayer`]'s budget; cheap to clone.
#[derive(Debug, Clone)]
pub struct RetryHandle {
    name: Arc<str>,
    budget: Arc<RetryBudget>,
}

impl RetryHandle {
    /// The layer's name (its metric label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Changes the retry budget's `max_tokens` and `token_ratio` while it
    /// is in use (see [`RetryBudget::reconfigure`]: tokens kept, capped at
    /// the new maximum); every layer sharing the budget sees it.
    ///
    /// # Errors
    /// As [`RetryBudget::new`]: a refused change changes nothing.
    pub fn reconfigure_budget(&self, max_tokens: f64, token_ratio: f64) -> Result<(), ConfigError> {
        self.budget.reconfigure(max_tokens, token_ratio)
    }

    /// The budget the layer draws on (shared with every layer given it).
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
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
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`RetryLayer`]; made by [`RetryLayer::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<P = RetryErrors> {
    config: RetryConfig,
    policy: P,
    budget: Option<Arc<RetryBudget>>,
    rng: Option<Box<dyn Random>>,
    name: Arc<str>,
}

impl<P> fmt::Debug for Builder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<P> Builder<P> {
    /// Shares `budget` (one per backend, across layers and clients) instead
    /// of a budget of this layer's own from the config.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The random source of the backoff's jitter (any `Fn() -> f64` in
    /// `[0, 1)`, e.g. a fixed value in tests). Default a [`SplitMix`]
    /// seeded from entropy.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// The metric label. Default `"retry"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// What is retried. Default [`RetryErrors`]; [`RetryHttp`] reads HTTP
    /// and gRPC answers.
    pub fn policy<P2>(self, policy: P2) -> Builder<P2> {
        Builder {
            config: self.config,
            policy,
            budget: self.budget,
            rng: self.rng,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`RetryConfig::validate`].
    pub fn build(self) -> Result<RetryLayer<P>, ConfigError> {
        self.config.validate()?;
        let budget = match self.budget {
            Some(budget) => budget,
            None => Arc::new(self.config.budget.build()?),
        };
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(&self.name),
                policy: self.policy,
                budget,
                max_attempts: self.config.max_attempts,
                backoff: self.config.backoff,
                max_pushback: self.config.max_pushback,
                rng: self
                    .rng
                    .unwrap_or_else(|| Box::new(SplitMix::from_entropy())),
                name: self.name,
            }),
        })
    }
}

/// The service a [`RetryLayer`] builds.
pub struct Retry<S, P = RetryErrors> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S, P> Retry<S, P> {
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

impl<S: Clone, P> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Retry<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
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
        let mut svc = floodwall_core::service::take_ready(&mut self.inner);
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
    /// The response future of [`Retry`].
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
                        Verdict::Fatal => {
                            return Poll::Ready(mark_given_up(&shared.policy, result));
                        }
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
                        return Poll::Ready(mark_given_up(&shared.policy, result));
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
                        return Poll::Ready(mark_given_up(&this.shared.policy, Err(err.into())));
                    }
                    let fut = this.svc.call(this.req.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
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
