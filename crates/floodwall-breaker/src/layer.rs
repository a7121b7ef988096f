use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{
    BREAKER_CALLS, BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS, LABEL_NAME,
};
use floodwall_core::outcome::{self, Verdict};
use floodwall_core::random::Random;
use floodwall_core::{
    BoxError, Classify, Outcome, RejectKind, Rejected, Rejection, ResultClassifier,
};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BreakerConfig, CircuitBreaker, ConfigError, Permit, State, StateChange, WindowCounts};

/// The default name of a breaker layer (metric label).
pub const DEFAULT_NAME: &str = "breaker";

/// The breaker refused the call: it is open (or forced open, or out of
/// half-open probes, or ramping). Never sent, never counted as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: State,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// The state that refused the call.
    pub fn state(&self) -> State {
        self.state
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(
                f,
                "circuit breaker {}; probing again in {d:?}",
                self.state.as_str()
            ),
            None => write!(f, "circuit breaker {}: call refused", self.state.as_str()),
        }
    }
}

impl std::error::Error for CircuitOpen {}

impl Rejection for CircuitOpen {
    fn kind(&self) -> RejectKind {
        RejectKind::CircuitOpen
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

struct Shared<C> {
    breaker: CircuitBreaker,
    classify: C,
    name: Arc<str>,
    success: Counter,
    failure: Counter,
    cancelled: Counter,
    rejected: [Counter; 5],
}

/// A Tower layer that stops calling a failing service for a while: the
/// [`CircuitBreaker`] state machine around every call.
///
/// A call the breaker refuses fails at once with [`CircuitOpen`] in a
/// [`Rejected`] (HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc,
/// with the time until the next probe as retry-after) and is never counted
/// as a failure. A call let through is classified when it finishes (by
/// default: `Ok` succeeds, `Err` fails; `floodwall_core::HttpClassifier`
/// counts 5xx, `GrpcClassifier` server-fault codes); a response future
/// dropped before it finishes gives its permit back (a half-open probe
/// frees its slot) and decides nothing, and so does a call that a floodwall
/// layer below refused before it reached the dependency (any [`Rejected`]
/// error except `DeadlineExceeded`): a throttle or a shedding queue under
/// the breaker never opens it.
///
/// # Clone
/// The breaker lives in an `Arc`: every service built from one layer value,
/// and every clone, shares it. One layer value per dependency.
///
/// ```
/// use floodwall_breaker::{BreakerConfig, BreakerLayer, State, WindowKind};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let config = BreakerConfig { window: WindowKind::Count(10), minimum_calls: 10, ..Default::default() };
/// let layer = BreakerLayer::builder(config).name("rooms").build()?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|ok: bool| async move {
///     if ok { Ok(()) } else { Err(BoxError::from("backend down")) }
/// }));
/// for _ in 0..10 {
///     let _ = svc.clone().oneshot(false).await;
/// }
/// assert_eq!(handle.state(), State::Open);
/// let err = svc.clone().oneshot(true).await.unwrap_err();
/// assert!(err.to_string().contains("circuit open"));
/// # Ok(())
/// # }
/// ```
pub struct BreakerLayer<C = ResultClassifier> {
    shared: Arc<Shared<C>>,
}

impl BreakerLayer {
    /// A builder for a breaker with `config`.
    pub fn builder(config: BreakerConfig) -> Builder {
        Builder {
            config,
            classify: ResultClassifier,
            name: Arc::from(DEFAULT_NAME),
            rng: None,
            listeners: Vec::new(),
        }
    }

    /// A breaker layer with `config`, named [`DEFAULT_NAME`].
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }
}

impl<C: Send + Sync + 'static> BreakerLayer<C> {
    /// A handle to read the state and control the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Clone for BreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for BreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("name", &self.shared.name)
            .field("breaker", &self.shared.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

type Listener = Box<dyn Fn(&StateChange) + Send + Sync>;

/// Builds a [`BreakerLayer`].
pub struct Builder<C = ResultClassifier> {
    config: BreakerConfig,
    classify: C,
    name: Arc<str>,
    rng: Option<Box<dyn Random>>,
    listeners: Vec<Listener>,
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C> Builder<C> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How finished calls are read: [`Outcome::Success`] succeeds;
    /// `Failure`, `Overloaded` and `TimedOut` fail. Whatever the
    /// classifier, calls are first read by floodwall's outcome rule
    /// ([`floodwall_core::outcome`]): a refusal by a floodwall layer below,
    /// a dropped response future and a timeout of a deadline the caller
    /// imposed (shorter than the call's budget) count neither way.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            classify,
            name: self.name,
            rng: self.rng,
            listeners: self.listeners,
        }
    }

    /// The random source for jitter and ramps.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// Calls `listener` after every state change.
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn build(self) -> Result<BreakerLayer<C>, ConfigError> {
        let name = self.name.to_string();
        let transitions = name.clone();
        let state_gauge = metrics::gauge!(BREAKER_STATE, LABEL_NAME => name.clone());
        state_gauge.set(0.0);
        let newest = std::sync::atomic::AtomicU64::new(0);
        let mut breaker = CircuitBreaker::new(self.config)?.on_state_change(move |c| {
            // Listeners may see two quick changes out of order: the gauge
            // keeps the newest generation's state.
            let prev = newest.fetch_max(c.generation, std::sync::atomic::Ordering::AcqRel);
            if c.generation > prev {
                state_gauge.set(c.to as u8 as f64);
            }
            metrics::counter!(
                BREAKER_TRANSITIONS,
                LABEL_NAME => transitions.clone(),
                "from" => c.from.as_str(),
                "to" => c.to.as_str()
            )
            .increment(1);
        });
        if let Some(rng) = self.rng {
            breaker = breaker.with_rng(rng);
        }
        for listener in self.listeners {
            breaker = breaker.on_state_change(listener);
        }
        let calls = |outcome: &'static str| metrics::counter!(BREAKER_CALLS, LABEL_NAME => name.clone(), "outcome" => outcome);
        let states = [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
        ];
        Ok(BreakerLayer {
            shared: Arc::new(Shared {
                success: calls("success"),
                failure: calls("failure"),
                cancelled: calls("cancelled"),
                rejected: states.map(|s| {
                    metrics::counter!(BREAKER_REJECTED, LABEL_NAME => name.clone(), "state" => s.as_str())
                }),
                breaker,
                classify: self.classify,
                name: self.name,
            }),
        })
    }
}

/// Reads and controls a [`BreakerLayer`]'s breaker.
pub struct BreakerHandle {
    shared: Arc<dyn Target>,
}

/// What a handle needs of the layer's shared state, whatever its classifier.
trait Target: Send + Sync {
    fn breaker(&self) -> &CircuitBreaker;
    fn name(&self) -> &str;
}

impl<C: Send + Sync> Target for Shared<C> {
    fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl BreakerHandle {
    /// The current state.
    pub fn state(&self) -> State {
        self.shared.breaker().state()
    }

    /// The closed state's window now.
    pub fn counts(&self) -> WindowCounts {
        self.shared.breaker().counts(Instant::now())
    }

    /// A receiver that sees every state the breaker enters.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.breaker().subscribe()
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared.breaker().force_open();
    }

    /// Lets every call through until [`reset`](Self::reset); outcomes are
    /// still counted (for metrics) but never trip the breaker.
    pub fn disable(&self) {
        self.shared.breaker().disable();
    }

    /// Closes with an empty window.
    pub fn reset(&self) {
        self.shared.breaker().reset();
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        self.shared.breaker()
    }
}

impl Clone for BreakerHandle {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.shared.name())
            .field("state", &self.state())
            .finish()
    }
}

/// The service a [`BreakerLayer`] builds.
pub struct BreakerService<S, C = ResultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C> BreakerService<S, C> {
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

impl<S: Clone, C> Clone for BreakerService<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for BreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.shared.breaker.try_acquire_with(Instant::now) {
            Ok(permit) => {
                // The guard first: if the inner call panics, the permit (a
                // half-open slot, maybe) is still given back.
                let guard = Guard {
                    shared: self.shared.clone(),
                    permit: Some(permit),
                    caller_limited: outcome::caller_limited(),
                };
                ResponseFuture {
                    state: State_::Called {
                        fut: self.inner.call(req),
                        guard,
                    },
                }
            }
            Err(refused) => {
                self.shared.rejected[refused.state as usize].increment(1);
                ResponseFuture {
                    state: State_::Refused {
                        error: Some(Rejected::boxed(CircuitOpen {
                            state: refused.state,
                            retry_after: refused.retry_after,
                        })),
                    },
                }
            }
        }
    }
}

/// Holds a call's permit; gives it back if the call never finishes.
struct Guard<C> {
    shared: Arc<Shared<C>>,
    permit: Option<Permit>,
    /// The caller's deadline gave this call less than its budget.
    caller_limited: bool,
}

impl<C> Guard<C> {
    fn finish(&mut self, verdict: Verdict) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let failed = match verdict {
            Verdict::Answered(Outcome::Success) => false,
            Verdict::Answered(_) | Verdict::TimedOut => true,
            Verdict::Silent(_) => {
                // Says nothing about the dependency: the permit goes back
                // undecided.
                self.shared.cancelled.increment(1);
                self.shared.breaker.on_cancel(permit);
                return;
            }
        };
        if failed {
            self.shared.failure.increment(1);
        } else {
            self.shared.success.increment(1);
        }
        // The clock is read only if the outcome needs the time.
        self.shared
            .breaker
            .on_outcome_with(permit, failed, Instant::now);
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if self.permit.is_some() {
            // Dropped by the caller (says nothing), or by a deadline layer
            // above whose deadline ran out (a timeout, by the outcome rule).
            self.finish(outcome::dropped(self.caller_limited));
        }
    }
}

pin_project! {
    /// The response future of [`BreakerService`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State_<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State_<F, C> {
        Called { #[pin] fut: F, guard: Guard<C> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, guard } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                // The one outcome rule: refusals from below and timeouts of
                // a deadline the caller imposed say nothing.
                let verdict = outcome::judge(
                    &guard.shared.classify,
                    result.as_ref(),
                    guard.caller_limited,
                );
                guard.finish(verdict);
                Poll::Ready(result)
            }
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
