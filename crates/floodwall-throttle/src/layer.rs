use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::metrics::{
    LABEL_CRITICALITY, LABEL_NAME, THROTTLE_ADMITTED, THROTTLE_PROBABILITY, THROTTLE_REJECTED,
};
use floodwall_core::outcome::{self, Verdict};
use floodwall_core::{
    BoxError, Classify, Criticality, Outcome, RejectKind, Rejected, Rejection, ResultClassifier,
};
use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{AdaptiveThrottle, ConfigError, Random, SplitMix, Stats, ThrottleConfig, Ticket};

/// The default name of a throttle layer (metric label).
pub const DEFAULT_NAME: &str = "throttle";

/// Requests carry no criticality: one set of statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCriticality;

/// Where a request's [`Criticality`] comes from. Closures
/// `Fn(&Req) -> Option<Criticality>` implement it; [`NoCriticality`] gives
/// none; [`FromExtensions`] reads an `http::Request`'s extensions.
pub trait CriticalityOf<Req>: Send + Sync + 'static {
    /// The request's class, if it has one.
    fn criticality(&self, req: &Req) -> Option<Criticality>;
}

impl<Req> CriticalityOf<Req> for NoCriticality {
    #[inline]
    fn criticality(&self, _: &Req) -> Option<Criticality> {
        None
    }
}

impl<Req, F> CriticalityOf<Req> for F
where
    F: Fn(&Req) -> Option<Criticality> + Send + Sync + 'static,
{
    fn criticality(&self, req: &Req) -> Option<Criticality> {
        self(req)
    }
}

/// Reads the [`Criticality`] extension of an `http::Request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtensions;

impl<B> CriticalityOf<http::Request<B>> for FromExtensions {
    fn criticality(&self, req: &http::Request<B>) -> Option<Criticality> {
        req.extensions().get::<Criticality>().copied()
    }
}

/// The request was dropped locally by adaptive throttling: the backend has
/// been refusing, and sending it would only add load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    probability: f64,
}

impl Throttled {
    /// The rejection probability the request was dropped with.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request throttled locally (rejection probability {:.3})",
            self.probability
        )
    }
}

impl std::error::Error for Throttled {}

impl Rejection for Throttled {
    fn kind(&self) -> RejectKind {
        RejectKind::Throttled
    }
}

struct Shared<C, X> {
    throttle: AdaptiveThrottle<Box<dyn Random>>,
    classify: C,
    criticality: X,
    name: Arc<str>,
    metrics: Metrics,
}

/// Metric handles per criticality class (the fifth: none).
struct Metrics {
    admitted: Counter,
    rejected: [Counter; 5],
    probability: [Gauge; 5],
}

impl Metrics {
    fn new(name: &str) -> Self {
        let label = |i: usize| Criticality::ALL.get(i).map_or("none", |c| c.as_str());
        let name = name.to_owned();
        Self {
            admitted: metrics::counter!(THROTTLE_ADMITTED, LABEL_NAME => name.clone()),
            rejected: std::array::from_fn(
                |i| metrics::counter!(THROTTLE_REJECTED, LABEL_NAME => name.clone(), LABEL_CRITICALITY => label(i)),
            ),
            probability: std::array::from_fn(
                |i| metrics::gauge!(THROTTLE_PROBABILITY, LABEL_NAME => name.clone(), LABEL_CRITICALITY => label(i)),
            ),
        }
    }
}

/// A Tower layer for client-side adaptive throttling (Google SRE, "Handling
/// Overload"): when the backend refuses, the client drops requests locally
/// with probability `max(0, (requests − K·accepts)/(requests + 1))` instead
/// of sending them. See [`AdaptiveThrottle`] for the statistics.
///
/// Put it on the client side of a call (around a hyper client, a tonic
/// channel). A response the classifier calls
/// [`Overloaded`](Outcome::Overloaded) (HTTP 429/503, gRPC
/// `RESOURCE_EXHAUSTED`/`UNAVAILABLE` with the core classifiers) is not an
/// accept, nor is an error (no response came back: a transport failure, a
/// timeout, another layer's rejection); every other response is. Requests
/// dropped here fail with [`Throttled`] in a [`Rejected`]
/// (HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc).
///
/// # Clone
/// The statistics live in an `Arc`: every service built from one layer, and
/// every clone, shares them. Use one layer per backend.
///
/// ```
/// use floodwall_core::{BoxError, HttpClassifier};
/// use floodwall_throttle::{ThrottleConfig, ThrottleLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let throttle = ThrottleLayer::builder(ThrottleConfig::default())
///     .name("rooms")
///     .classify(HttpClassifier)
///     .build()?;
/// let handle = throttle.handle();
/// let client = throttle.layer(service_fn(|_: http::Request<()>| async {
///     Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap())
/// }));
/// for _ in 0..50 {
///     let _ = client.clone().oneshot(http::Request::new(())).await;
/// }
/// // Every response said "overloaded": the client now drops most requests.
/// assert!(handle.stats(None).probability > 0.9);
/// # Ok(())
/// # }
/// ```
pub struct ThrottleLayer<C = ResultClassifier, X = NoCriticality> {
    shared: Arc<Shared<C, X>>,
}

impl ThrottleLayer {
    /// A layer with `config`, named [`DEFAULT_NAME`], classifying every `Ok`
    /// response as accepted.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn new(config: ThrottleConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder for the name, classifier, criticality source and random
    /// source.
    pub fn builder(config: ThrottleConfig) -> Builder {
        Builder {
            config,
            name: Arc::from(DEFAULT_NAME),
            rng: None,
            classify: ResultClassifier,
            criticality: NoCriticality,
        }
    }
}

impl<C, X> ThrottleLayer<C, X> {
    /// A cheap handle on the live statistics.
    pub fn handle(&self) -> ThrottleHandle<C, X> {
        ThrottleHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> Clone for ThrottleLayer<C, X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> fmt::Debug for ThrottleLayer<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("name", &self.shared.name)
            .field("throttle", &self.shared.throttle)
            .finish_non_exhaustive()
    }
}

impl<S, C, X> Layer<S> for ThrottleLayer<C, X> {
    type Service = ThrottleService<S, C, X>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`ThrottleLayer`].
pub struct Builder<C = ResultClassifier, X = NoCriticality> {
    config: ThrottleConfig,
    name: Arc<str>,
    rng: Option<Box<dyn Random>>,
    classify: C,
    criticality: X,
}

impl<C, X> fmt::Debug for Builder<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C, X> Builder<C, X> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The random source (seed it for deterministic tests). Default:
    /// [`SplitMix`] seeded from the clock.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// How responses are read: [`Outcome::Overloaded`] is not an accept.
    /// Use `floodwall_core::HttpClassifier` for HTTP clients,
    /// `GrpcClassifier` for gRPC channels.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, X> {
        Builder {
            config: self.config,
            name: self.name,
            rng: self.rng,
            classify,
            criticality: self.criticality,
        }
    }

    /// Where requests' criticality comes from: statistics are kept per
    /// class. Default: none.
    pub fn criticality<X2>(self, criticality: X2) -> Builder<C, X2> {
        Builder {
            config: self.config,
            name: self.name,
            rng: self.rng,
            classify: self.classify,
            criticality,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn build(self) -> Result<ThrottleLayer<C, X>, ConfigError> {
        let rng = self
            .rng
            .unwrap_or_else(|| Box::new(SplitMix::from_entropy()));
        let throttle = AdaptiveThrottle::with_rng(self.config, rng, Instant::now())?;
        Ok(ThrottleLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(&self.name),
                throttle,
                classify: self.classify,
                criticality: self.criticality,
                name: self.name,
            }),
        })
    }
}

/// A live view of a [`ThrottleLayer`]'s statistics.
pub struct ThrottleHandle<C = ResultClassifier, X = NoCriticality> {
    shared: Arc<Shared<C, X>>,
}

impl<C, X> ThrottleHandle<C, X> {
    /// Requests, accepts and rejection probability now for `class`.
    pub fn stats(&self, class: Option<Criticality>) -> Stats {
        self.shared.throttle.stats(Instant::now(), class)
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<C, X> Clone for ThrottleHandle<C, X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> fmt::Debug for ThrottleHandle<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The service a [`ThrottleLayer`] builds.
pub struct ThrottleService<S, C = ResultClassifier, X = NoCriticality> {
    inner: S,
    shared: Arc<Shared<C, X>>,
}

impl<S, C, X> ThrottleService<S, C, X> {
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

impl<S: Clone, C, X> Clone for ThrottleService<S, C, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C, X> fmt::Debug for ThrottleService<S, C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, C, X, Req> Service<Req> for ThrottleService<S, C, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
    X: CriticalityOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, X>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let class = shared.criticality.criticality(&req);
        let slot = class.map_or(4, Criticality::index);
        match shared.throttle.admit_ticket(Instant::now(), class) {
            Ok(ticket) => {
                shared.metrics.admitted.increment(1);
                shared.metrics.probability[slot].set(ticket.probability());
                // The guard first: if the inner call panics, the attempt is
                // still taken back.
                let guard = Guard {
                    shared: self.shared.clone(),
                    ticket: Some(ticket),
                    caller_limited: outcome::caller_limited(),
                };
                ResponseFuture {
                    state: State::Sent {
                        fut: self.inner.call(req),
                        guard,
                    },
                }
            }
            Err(probability) => {
                shared.metrics.rejected[slot].increment(1);
                shared.metrics.probability[slot].set(probability);
                tracing::debug!(name = %shared.name, probability, "adaptive throttling dropped a request");
                ResponseFuture {
                    state: State::Dropped {
                        error: Some(Rejected::boxed(Throttled { probability })),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`ThrottleService`].
    pub struct ResponseFuture<F, C, X> {
        #[pin]
        state: State<F, C, X>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, X> {
        Sent { #[pin] fut: F, guard: Guard<C, X> },
        Dropped { error: Option<BoxError> },
    }
}

impl<F, C, X, T, E> Future for ResponseFuture<F, C, X>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sent { fut, guard } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                let verdict = outcome::judge(
                    &guard.shared.classify,
                    result.as_ref(),
                    guard.caller_limited,
                );
                guard.finish(verdict, result.is_ok());
                Poll::Ready(result)
            }
            StateProj::Dropped { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// Holds an admitted attempt's ticket until the attempt is judged; an
/// attempt whose future is dropped first is taken back.
struct Guard<C, X> {
    shared: Arc<Shared<C, X>>,
    ticket: Option<Ticket>,
    /// The caller's deadline gave this call less than its budget.
    caller_limited: bool,
}

impl<C, X> Guard<C, X> {
    /// Counts the attempt by the one outcome rule. A response is an accept
    /// unless it is an overload signal (overloaded, or timed out with its
    /// full budget). An error is an accept only if the classifier calls it
    /// a success (an application status carried as an error): by default
    /// no response came back. Silent attempts are taken back.
    fn finish(&mut self, verdict: Verdict, answered: bool) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let accepted = match verdict {
            Verdict::Answered(Outcome::Success) => true,
            Verdict::Answered(Outcome::Failure) => answered,
            Verdict::Answered(Outcome::Overloaded | Outcome::TimedOut) | Verdict::TimedOut => false,
            Verdict::Silent(_) => {
                self.shared.throttle.forget(ticket);
                return;
            }
        };
        if accepted {
            self.shared.throttle.accept(ticket);
        }
    }
}

impl<C, X> Drop for Guard<C, X> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            // Dropped by its caller (says nothing: taken back), or by a
            // deadline layer above whose deadline ran out (a timeout, by
            // the outcome rule: not accepted).
            self.finish(outcome::dropped(self.caller_limited), false);
        }
    }
}

impl<F, C, X> fmt::Debug for ResponseFuture<F, C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
