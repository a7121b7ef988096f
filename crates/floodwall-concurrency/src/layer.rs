//! The Tower layer around a [`Limiter`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::metrics::{
    CONCURRENCY_CALLS, CONCURRENCY_IN_FLIGHT, CONCURRENCY_LIMIT, CONCURRENCY_REJECTED,
    CONCURRENCY_RTT_SECONDS, LABEL_NAME,
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

use crate::{Algorithm, Estimates, Limiter, Partitions, Refused, Token};

/// The default name of an adaptive limit layer (metric label).
pub const DEFAULT_NAME: &str = "concurrency";

/// The adaptive limit refused the request: the limit was reached (and its
/// class, with partitions, had its guaranteed slots in use). Overloaded:
/// HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    refused: Refused,
}

impl LimitExceeded {
    /// A refusal of a request of `class` under `limit` with `in_flight`
    /// requests in flight.
    pub const fn new(limit: u32, in_flight: u32, class: usize) -> Self {
        Self {
            refused: Refused {
                limit,
                in_flight,
                class,
            },
        }
    }

    /// The limit when the request was refused.
    pub fn limit(&self) -> u32 {
        self.refused.limit
    }

    /// Requests in flight then.
    pub fn in_flight(&self) -> u32 {
        self.refused.in_flight
    }

    /// The request's priority class.
    pub fn class(&self) -> usize {
        self.refused.class
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overloaded: concurrency limit {} reached ({} in flight)",
            self.refused.limit, self.refused.in_flight
        )
    }
}

impl std::error::Error for LimitExceeded {}

impl Rejection for LimitExceeded {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}

/// Picks a request's priority class for a partitioned limit.
///
/// Closures `Fn(&Req) -> usize` implement it.
pub trait Partition<Req> {
    /// The class of `req` (0 = most important).
    fn class(&self, req: &Req) -> usize;
}

impl<Req, F: Fn(&Req) -> usize> Partition<Req> for F {
    fn class(&self, req: &Req) -> usize {
        self(req)
    }
}

/// Every request is class 0: no partitioning.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleClass;

impl<Req> Partition<Req> for SingleClass {
    #[inline]
    fn class(&self, _req: &Req) -> usize {
        0
    }
}

/// The class of an `http::Request` is its [`Criticality`] extension's index
/// (`CriticalPlus` = 0 … `Sheddable` = 3); without one, `Critical` (1).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByCriticality;

impl<B> Partition<http::Request<B>> for ByCriticality {
    fn class(&self, req: &http::Request<B>) -> usize {
        req.extensions()
            .get::<Criticality>()
            .copied()
            .unwrap_or_default()
            .index()
    }
}

/// What a cancelled request — its response future dropped before the end,
/// because the caller gave up or went away — tells the algorithm.
///
/// Netflix's limiters and Envoy's controller ignore cancellations (the
/// default). That leaves the limit blind in the worst case: when every
/// request is abandoned by a caller's timeout, no request finishes, the
/// algorithm hears nothing and the limit stays where it was. Where a
/// caller's timeout is what cancels requests (a server behind clients with
/// deadlines, a client layer under a `Timeout`), [`OnCancel::Drop`] turns
/// each cancellation into the loss signal it is.
///
/// ```
/// use floodwall_concurrency::{AdaptiveLimitLayer, Aimd, AimdConfig, OnCancel};
///
/// // Clients give up after 100 ms: a request they abandon is a drop.
/// let layer = AdaptiveLimitLayer::builder(Aimd::new(AimdConfig::default())?)
///     .on_cancel(OnCancel::Drop)
///     .build();
/// assert_eq!(layer.handle().limit(), 10);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCancel {
    /// The slot comes back; the algorithm hears nothing (Netflix, Envoy).
    #[default]
    Ignore,
    /// The slot comes back and the algorithm hears a drop, with the time
    /// the request had been in flight as its RTT (a lower bound of the RTT
    /// it would have had).
    Drop,
}

struct Metrics {
    limit: Gauge,
    in_flight: Gauge,
    baseline: Gauge,
    latest: Gauge,
    success: Counter,
    dropped: Counter,
    ignored: Counter,
    cancelled: Counter,
    rejected: Counter,
}

struct Shared<A, C> {
    limiter: Limiter<A>,
    classify: C,
    on_cancel: OnCancel,
    name: Arc<str>,
    metrics: Metrics,
}

impl<A: Algorithm, C> Shared<A, C> {
    fn finish(&self, token: Token, how: Finish) {
        match how {
            Finish::Success | Finish::Dropped => {
                let dropped = how == Finish::Dropped;
                if dropped {
                    self.metrics.dropped.increment(1);
                } else {
                    self.metrics.success.increment(1);
                }
                let now = Instant::now();
                // The limit and in-flight gauges are set by a listener,
                // when the limit changes: nothing more per request.
                if dropped {
                    self.limiter.dropped(token, now);
                } else {
                    self.limiter.success(token, now);
                }
            }
            Finish::Cancelled if self.on_cancel == OnCancel::Drop => {
                self.metrics.cancelled.increment(1);
                self.limiter.dropped(token, Instant::now());
            }
            Finish::Ignored | Finish::Cancelled => {
                if how == Finish::Ignored {
                    self.metrics.ignored.increment(1);
                } else {
                    self.metrics.cancelled.increment(1);
                }
                self.limiter.ignore(token);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Success,
    Dropped,
    Ignored,
    Cancelled,
}

/// A Tower layer that limits how many requests are in flight to a limit an
/// [`Algorithm`] adapts from their latency.
///
/// The decision is made in `call` (readiness is the inner service's): a
/// request over the limit fails at once with [`LimitExceeded`] in a
/// [`Rejected`] (kind `Overloaded`) and never reaches the inner service.
/// An admitted request is read when it finishes:
///
/// - the classifier says [`Outcome::Success`]: its RTT is a sample;
/// - `Outcome::Overloaded`, or a timeout of a call that had its full budget
///   (a deadline layer's `DeadlineExceeded`, HTTP 504, gRPC
///   `DEADLINE_EXCEEDED`): a *drop*, the loss signal;
/// - `Outcome::Failure`: ignored — a fast failure says nothing about load,
///   and its RTT would fool the no-load estimate;
/// - what floodwall's outcome rule ([`floodwall_core::outcome`]) calls
///   silent: a refusal by a floodwall layer below (rate limited, shed,
///   circuit open, …: it never reached the service), and a timeout of a
///   deadline the caller imposed that was shorter than the call's budget:
///   ignored;
/// - a response future dropped before the end (cancellation): ignored, or
///   a drop with [`OnCancel::Drop`].
///
/// In every case the request's slot comes back.
///
/// # Clone
/// The limiter lives in an `Arc`: every service built from one layer value,
/// and every clone, shares one limit.
///
/// ```
/// use floodwall_concurrency::{AdaptiveLimitLayer, Vegas, VegasConfig};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = AdaptiveLimitLayer::builder(Vegas::new(VegasConfig::default())?)
///     .name("rooms")
///     .build();
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x * 2) }));
/// assert_eq!(svc.clone().oneshot(21).await?, 42);
/// assert_eq!(handle.limit(), 20);
/// assert_eq!(handle.in_flight(), 0);
/// # Ok(())
/// # }
/// ```
pub struct AdaptiveLimitLayer<A, C = ResultClassifier, P = SingleClass> {
    shared: Arc<Shared<A, C>>,
    partition: P,
}

impl<A: Algorithm> AdaptiveLimitLayer<A> {
    /// A layer driven by `algorithm`, with the defaults.
    pub fn new(algorithm: A) -> Self {
        Self::builder(algorithm).build()
    }

    /// A builder for a layer driven by `algorithm`.
    pub fn builder(algorithm: A) -> Builder<A> {
        Builder {
            algorithm,
            classify: ResultClassifier,
            partition: SingleClass,
            partitions: Partitions::single(),
            name: Arc::from(DEFAULT_NAME),
            on_cancel: OnCancel::Ignore,
            listeners: Vec::new(),
        }
    }
}

impl<A: Algorithm, C: Send + Sync + 'static, P> AdaptiveLimitLayer<A, C, P> {
    /// A handle to read the live limit, in-flight count and RTT estimates.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, P: Clone> Clone for AdaptiveLimitLayer<A, C, P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            partition: self.partition.clone(),
        }
    }
}

impl<A, C, P> fmt::Debug for AdaptiveLimitLayer<A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("name", &self.shared.name)
            .field("limiter", &self.shared.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, A, C, P: Clone> Layer<S> for AdaptiveLimitLayer<A, C, P> {
    type Service = AdaptiveLimit<S, A, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            shared: self.shared.clone(),
            partition: self.partition.clone(),
        }
    }
}

/// Builds an [`AdaptiveLimitLayer`].
pub struct Builder<A, C = ResultClassifier, P = SingleClass> {
    algorithm: A,
    classify: C,
    partition: P,
    partitions: Partitions,
    name: Arc<str>,
    on_cancel: OnCancel,
    listeners: Vec<Box<dyn Fn(u32) + Send + Sync>>,
}

impl<A, C, P> fmt::Debug for Builder<A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl<A: Algorithm, C, P> Builder<A, C, P> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How finished calls are read (see [`AdaptiveLimitLayer`]). Default:
    /// [`ResultClassifier`] (`Ok` succeeds, `Err` is ignored unless it is
    /// a floodwall overload or deadline rejection); use
    /// `floodwall_core::HttpClassifier` to read 429/503 as drops.
    pub fn classify<C2>(self, classify: C2) -> Builder<A, C2, P> {
        Builder {
            algorithm: self.algorithm,
            classify,
            partition: self.partition,
            partitions: self.partitions,
            name: self.name,
            on_cancel: self.on_cancel,
            listeners: self.listeners,
        }
    }

    /// Shares the limit between priority classes (see [`Partitions`]);
    /// `partition` picks each request's class (e.g. [`ByCriticality`]).
    pub fn partitions<P2>(self, partitions: Partitions, partition: P2) -> Builder<A, C, P2> {
        Builder {
            algorithm: self.algorithm,
            classify: self.classify,
            partition,
            partitions,
            name: self.name,
            on_cancel: self.on_cancel,
            listeners: self.listeners,
        }
    }

    /// What a cancelled request tells the algorithm (see [`OnCancel`]).
    /// Default [`OnCancel::Ignore`].
    pub fn on_cancel(mut self, on_cancel: OnCancel) -> Self {
        self.on_cancel = on_cancel;
        self
    }

    /// Calls `listener` with the first limit and every new one (see
    /// [`Limiter::on_limit_change`]): e.g. a CoDel queue's
    /// `CodelHandle::set_workers`.
    pub fn on_limit_change(mut self, listener: impl Fn(u32) + Send + Sync + 'static) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The layer. Metric handles are registered now.
    pub fn build(self) -> AdaptiveLimitLayer<A, C, P> {
        let name = self.name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(CONCURRENCY_CALLS, LABEL_NAME => name.clone(), "outcome" => outcome);
        let rtt = |estimate: &'static str| metrics::gauge!(CONCURRENCY_RTT_SECONDS, LABEL_NAME => name.clone(), "estimate" => estimate);
        let metrics = Metrics {
            limit: metrics::gauge!(CONCURRENCY_LIMIT, LABEL_NAME => name.clone()),
            in_flight: metrics::gauge!(CONCURRENCY_IN_FLIGHT, LABEL_NAME => name.clone()),
            baseline: rtt("baseline"),
            latest: rtt("latest"),
            success: calls("success"),
            dropped: calls("dropped"),
            ignored: calls("ignored"),
            cancelled: calls("cancelled"),
            rejected: metrics::counter!(CONCURRENCY_REJECTED, LABEL_NAME => name.clone()),
        };
        let mut limiter = Limiter::partitioned(self.algorithm, self.partitions);
        let gauge = metrics.limit.clone();
        limiter = limiter.on_limit_change(move |l| gauge.set(f64::from(l)));
        for listener in self.listeners {
            limiter = limiter.on_limit_change(listener);
        }
        metrics.in_flight.set(0.0);
        AdaptiveLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                classify: self.classify,
                on_cancel: self.on_cancel,
                name: self.name,
                metrics,
            }),
            partition: self.partition,
        }
    }
}

/// Reads an [`AdaptiveLimitLayer`]'s live state.
#[derive(Clone)]
pub struct AdaptiveLimitHandle {
    shared: Arc<dyn Target>,
}

/// What a handle needs of the shared state, whatever its algorithm.
trait Target: Send + Sync {
    fn limit(&self) -> u32;
    fn in_flight(&self) -> u32;
    fn in_flight_in(&self, class: usize) -> u32;
    fn partitions(&self) -> Partitions;
    fn estimates(&self) -> Estimates;
    fn name(&self) -> &str;
}

impl<A: Algorithm, C: Send + Sync> Target for Shared<A, C> {
    fn limit(&self) -> u32 {
        self.limiter.limit()
    }
    fn in_flight(&self) -> u32 {
        let n = self.limiter.in_flight();
        self.metrics.in_flight.set(f64::from(n));
        n
    }
    fn in_flight_in(&self, class: usize) -> u32 {
        self.limiter.in_flight_in(class)
    }
    fn partitions(&self) -> Partitions {
        *self.limiter.partitions()
    }
    fn estimates(&self) -> Estimates {
        let e = self.limiter.estimates();
        if let Some(b) = e.baseline {
            self.metrics.baseline.set(b.as_secs_f64());
        }
        if let Some(l) = e.latest {
            self.metrics.latest.set(l.as_secs_f64());
        }
        e
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl AdaptiveLimitHandle {
    /// The limit now.
    pub fn limit(&self) -> u32 {
        self.shared.limit()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight()
    }

    /// Requests of priority class `class` in flight now.
    pub fn in_flight_in(&self, class: usize) -> u32 {
        self.shared.in_flight_in(class)
    }

    /// The classes the limit is shared between.
    pub fn partitions(&self) -> Partitions {
        self.shared.partitions()
    }

    /// The RTTs the algorithm steers by (briefly takes its lock; also
    /// refreshes the `floodwall_concurrency_rtt_seconds` gauges).
    pub fn estimates(&self) -> Estimates {
        self.shared.estimates()
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }
}

impl fmt::Debug for AdaptiveLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitHandle")
            .field("name", &self.name())
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// The service an [`AdaptiveLimitLayer`] builds.
pub struct AdaptiveLimit<S, A, C = ResultClassifier, P = SingleClass> {
    inner: S,
    shared: Arc<Shared<A, C>>,
    partition: P,
}

impl<S, A, C, P> AdaptiveLimit<S, A, C, P> {
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

impl<S: Clone, A, C, P: Clone> Clone for AdaptiveLimit<S, A, C, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            partition: self.partition.clone(),
        }
    }
}

impl<S: fmt::Debug, A, C, P> fmt::Debug for AdaptiveLimit<S, A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, A, C, P, Req> Service<Req> for AdaptiveLimit<S, A, C, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    A: Algorithm,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
    P: Partition<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, A, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let class = self.partition.class(&req);
        match self.shared.limiter.try_acquire_in(class, Instant::now()) {
            Ok(token) => {
                // The guard first: if the inner call panics, the slot still
                // comes back.
                let guard = Guard {
                    shared: self.shared.clone(),
                    token: Some(token),
                    caller_limited: outcome::caller_limited(),
                };
                ResponseFuture {
                    state: State::Called {
                        fut: self.inner.call(req),
                        guard,
                    },
                }
            }
            Err(refused) => {
                self.shared.metrics.rejected.increment(1);
                ResponseFuture {
                    state: State::Refused {
                        error: Some(Rejected::boxed(LimitExceeded { refused })),
                    },
                }
            }
        }
    }
}

/// Holds an admitted request's token; gives it back, undecided, if the
/// request never finishes.
struct Guard<A: Algorithm, C> {
    shared: Arc<Shared<A, C>>,
    token: Option<Token>,
    /// The caller's deadline gave this call less than its budget.
    caller_limited: bool,
}

impl<A: Algorithm, C> Guard<A, C> {
    fn finish(&mut self, how: Finish) {
        if let Some(token) = self.token.take() {
            self.shared.finish(token, how);
        }
    }
}

impl<A: Algorithm, C> Drop for Guard<A, C> {
    fn drop(&mut self) {
        if self.token.is_some() {
            // Dropped by the caller, or by a deadline layer above whose
            // deadline ran out: a timeout of a call with its full budget is
            // a drop, by the outcome rule.
            let how = match outcome::dropped(self.caller_limited) {
                Verdict::TimedOut => Finish::Dropped,
                _ => Finish::Cancelled,
            };
            self.finish(how);
        }
    }
}

pin_project! {
    /// The response future of [`AdaptiveLimit`].
    pub struct ResponseFuture<F, A: Algorithm, C> {
        #[pin]
        state: State<F, A, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, A: Algorithm, C> {
        Called { #[pin] fut: F, guard: Guard<A, C> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, A, C, T, E> Future for ResponseFuture<F, A, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    A: Algorithm,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, guard } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                let how = match outcome::judge(
                    &guard.shared.classify,
                    result.as_ref(),
                    guard.caller_limited,
                ) {
                    Verdict::Answered(Outcome::Success) => Finish::Success,
                    Verdict::Answered(Outcome::Overloaded | Outcome::TimedOut)
                    | Verdict::TimedOut => Finish::Dropped,
                    Verdict::Answered(Outcome::Failure) | Verdict::Silent(_) => Finish::Ignored,
                };
                guard.finish(how);
                Poll::Ready(result)
            }
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

impl<F, A: Algorithm, C> fmt::Debug for ResponseFuture<F, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
