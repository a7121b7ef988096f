use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use floodwall_core::metrics::{
    CODEL_DROPPED, CODEL_LIFO, CODEL_QUEUE_LENGTH, CODEL_SOJOURN_SECONDS, LABEL_NAME,
};
use floodwall_core::sync::{self, AtomicUsize, Mutex, Ordering};
use floodwall_core::{Arrival, BoxError, Deadline, RejectKind, Rejected, Rejection};
use metrics::{Counter, Gauge, Histogram};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{CodelConfig, ConfigError};
use crate::queue::{AdmissionQueue, DropReason};

/// The default name of an admission queue layer (metric label).
pub const DEFAULT_NAME: &str = "codel";

/// Where a request's [`Arrival`] and [`Deadline`] come from.
/// [`NoTiming`] gives neither; [`FromExtensions`] reads an
/// `http::Request`'s extensions.
pub trait TimingOf<Req>: Send + Sync + 'static {
    /// When the request reached the outermost layer, if known: queueing
    /// time counts from there.
    fn arrival(&self, req: &Req) -> Option<Instant>;
    /// When the request's caller stops waiting, if known.
    fn deadline(&self, req: &Req) -> Option<Instant>;
}

/// Requests carry no arrival time or deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTiming;

impl<Req> TimingOf<Req> for NoTiming {
    #[inline]
    fn arrival(&self, _: &Req) -> Option<Instant> {
        None
    }

    #[inline]
    fn deadline(&self, _: &Req) -> Option<Instant> {
        None
    }
}

/// Reads the [`Arrival`] and [`Deadline`] extensions of an `http::Request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromExtensions;

impl<B> TimingOf<http::Request<B>> for FromExtensions {
    fn arrival(&self, req: &http::Request<B>) -> Option<Instant> {
        req.extensions().get::<Arrival>().map(|a| a.instant())
    }

    fn deadline(&self, req: &http::Request<B>) -> Option<Instant> {
        req.extensions().get::<Deadline>().map(|d| d.instant())
    }
}

/// The admission queue dropped the request: it never reached the service.
///
/// Its kind is [`RejectKind::DeadlineExceeded`] when the request's own
/// deadline could not be met, [`RejectKind::Overloaded`] otherwise (HTTP
/// 504 and 503, gRPC `DEADLINE_EXCEEDED` and `UNAVAILABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    reason: DropReason,
}

impl Shed {
    /// Why it was dropped.
    pub fn reason(&self) -> DropReason {
        self.reason
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            DropReason::Timeout => f.write_str("overloaded: request waited past its queue timeout"),
            DropReason::Codel => f.write_str("overloaded: request dropped by CoDel"),
            DropReason::Deadline => {
                f.write_str("request deadline could not be met: dropped before it ran")
            }
            DropReason::Full => f.write_str("overloaded: admission queue full"),
        }
    }
}

impl std::error::Error for Shed {}

impl Rejection for Shed {
    fn kind(&self) -> RejectKind {
        match self.reason {
            DropReason::Deadline => RejectKind::DeadlineExceeded,
            _ => RejectKind::Overloaded,
        }
    }
}

/// A waiting request's slot: how its wait ended, and who to wake.
#[derive(Debug, Default)]
struct Slot {
    waker: Option<Waker>,
    outcome: Option<Result<(), DropReason>>,
}

#[derive(Debug)]
struct Waiters {
    queue: AdmissionQueue<u64>,
    slots: HashMap<u64, Slot>,
    next_id: u64,
}

struct Metrics {
    queue_length: Gauge,
    sojourn: Histogram,
    dropped: [Counter; 4],
    lifo: Gauge,
}

struct Shared<X> {
    /// How many requests may run at once (changed by
    /// [`CodelHandle::set_workers`]).
    workers: AtomicUsize,
    min_remaining: Duration,
    /// Workers taken (running requests, and grants not yet picked up).
    busy: AtomicUsize,
    /// A copy of the queue's length, for the lock-free fast path.
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,
    timing: X,
    name: Arc<str>,
    metrics: Metrics,
    on_sojourn: Option<SojournHook>,
}

/// Called with each served request's queuing time (see
/// [`Builder::on_sojourn`]).
type SojournHook = Arc<dyn Fn(Duration) + Send + Sync>;

impl<X> Shared<X> {
    /// Takes a worker if one is free.
    #[inline]
    fn try_take(&self) -> bool {
        let mut busy = self.busy.load(Ordering::SeqCst);
        while busy < self.workers.load(Ordering::Relaxed) {
            match self.busy.compare_exchange_weak(
                busy,
                busy + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => busy = now,
            }
        }
        false
    }

    /// Gives a worker back and, if requests wait, hands it on.
    fn release(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        // Pairs with the enqueuer's store of `queued` then its dispatch:
        // one of the two sees the other's write (the SeqCst total order;
        // modelled in `loom_model` below).
        sync::seqcst_handoff();
        if self.queued.load(Ordering::SeqCst) > 0 {
            let mut w = self.waiters.lock();
            self.dispatch(&mut w, Instant::now());
        }
    }

    /// Hands free workers to waiting requests, dropping what the policy
    /// drops. Runs under the lock.
    fn dispatch(&self, w: &mut Waiters, now: Instant) {
        let Waiters { queue, slots, .. } = w;
        let metrics = &self.metrics;
        while !queue.is_empty() && self.try_take() {
            metrics.lifo.set(if queue.is_lifo(now) { 1.0 } else { 0.0 });
            let popped = queue.pop_timed(now, &mut |id, reason: DropReason| {
                metrics.dropped[reason.index()].increment(1);
                finish(slots, id, Err(reason));
            });
            match popped {
                Some(p) => {
                    metrics.sojourn.record(p.sojourn.as_secs_f64());
                    if let Some(hook) = &self.on_sojourn {
                        hook(p.sojourn);
                    }
                    finish(slots, p.item, Ok(()));
                }
                None => {
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
            }
        }
        self.queued.store(queue.len(), Ordering::SeqCst);
        metrics.queue_length.set(queue.len() as f64);
    }

    /// Queues a request that found no free worker, then hands it one if a
    /// worker came free since it looked: the enqueuer's half of the handoff
    /// whose other half is [`release`](Self::release). Returns the waiter
    /// (armed before anything else can happen) and when the queue's
    /// timeout would drop it.
    fn push(
        this: &Arc<Self>,
        now: Instant,
        start: Instant,
        deadline: Option<Instant>,
    ) -> Result<(Waiter<X>, Option<Instant>), DropReason> {
        let mut w = this.waiters.lock();
        let id = w.next_id;
        w.next_id += 1;
        let expires = w
            .queue
            .push(now, id, start, deadline)
            .map_err(|(_, reason)| reason)?;
        w.slots.insert(id, Slot::default());
        let waiter = Waiter {
            shared: this.clone(),
            id: Some(id),
        };
        this.queued.store(w.queue.len(), Ordering::SeqCst);
        // A worker may have come free since the fast path looked; see
        // `release` for the other half.
        sync::seqcst_handoff();
        this.dispatch(&mut w, now);
        Ok((waiter, expires))
    }

    /// A waiter gave up: take it out of the queue, or give back the worker
    /// it was granted and never used.
    fn cancel(&self, id: u64) {
        let mut w = self.waiters.lock();
        let Some(slot) = w.slots.remove(&id) else {
            return;
        };
        match slot.outcome {
            Some(Ok(())) => {
                self.busy.fetch_sub(1, Ordering::SeqCst);
                self.dispatch(&mut w, Instant::now());
            }
            Some(Err(_)) => {}
            None => {
                w.queue.remove(|x| *x == id);
                self.queued.store(w.queue.len(), Ordering::SeqCst);
                self.metrics.queue_length.set(w.queue.len() as f64);
            }
        }
    }
}

fn finish(slots: &mut HashMap<u64, Slot>, id: u64, outcome: Result<(), DropReason>) {
    if let Some(slot) = slots.get_mut(&id) {
        slot.outcome = Some(outcome);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// A server-side admission queue: at most `workers` requests run in the
/// inner service at once; others wait in a bounded queue that drops by
/// Fail-at-Scale timeouts or RFC 8289 CoDel, serves newest first while
/// congested, and drops requests whose deadline cannot be met.
///
/// One layer is one limit: every service it builds shares the workers and
/// the queue. The inner service must be `Clone` (a waiting request takes a
/// clone with it, so the service is free for the next request).
///
/// ```
/// use floodwall_codel::{CodelConfig, CodelLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// let layer = CodelLayer::new(CodelConfig::with_workers(32))?;
/// let handle = layer.handle();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|req: u32| async move { Ok::<_, std::convert::Infallible>(req) }));
/// assert_eq!(handle.queue_len(), 0);
/// # drop(service);
/// # Ok::<(), floodwall_codel::ConfigError>(())
/// ```
pub struct CodelLayer<X = NoTiming> {
    shared: Arc<Shared<X>>,
}

impl CodelLayer {
    /// A layer for `config`, reading no arrival times or deadlines.
    ///
    /// # Errors
    /// As [`CodelConfig::validate`].
    pub fn new(config: CodelConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name and the timing source.
    pub fn builder(config: CodelConfig) -> Builder {
        Builder {
            config,
            timing: NoTiming,
            name: Arc::from(DEFAULT_NAME),
            on_sojourn: None,
        }
    }
}

impl<X: Send + Sync + 'static> CodelLayer<X> {
    /// A handle on the live queue.
    pub fn handle(&self) -> CodelHandle {
        CodelHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<X> Clone for CodelLayer<X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<X> fmt::Debug for CodelLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodelLayer")
            .field("name", &self.shared.name)
            .field("workers", &self.shared.workers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S, X> Layer<S> for CodelLayer<X> {
    type Service = CodelService<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        CodelService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`CodelLayer`].
pub struct Builder<X = NoTiming> {
    config: CodelConfig,
    timing: X,
    name: Arc<str>,
    on_sojourn: Option<SojournHook>,
}

impl<X: fmt::Debug> fmt::Debug for Builder<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("timing", &self.timing)
            .field("name", &self.name)
            .field("on_sojourn", &self.on_sojourn.is_some())
            .finish()
    }
}

impl<X> Builder<X> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Where requests' arrival times and deadlines come from, e.g.
    /// [`FromExtensions`] for `http::Request`s.
    pub fn timing<X2>(self, timing: X2) -> Builder<X2> {
        Builder {
            config: self.config,
            timing,
            name: self.name,
            on_sojourn: self.on_sojourn,
        }
    }

    /// Calls `hook` with every served request's queuing time, measured from
    /// its arrival (see [`timing`](Self::timing)) to the moment it gets a
    /// worker; a request served at once reports its time since arrival, or
    /// zero without one. This is how priority admission
    /// (`floodwall-priority`) can detect overload from the queue's sojourn
    /// times instead of its own measurement.
    pub fn on_sojourn(mut self, hook: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.on_sojourn = Some(Arc::new(hook));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`CodelConfig::validate`].
    pub fn build(self) -> Result<CodelLayer<X>, ConfigError> {
        self.config.validate()?;
        let name = self.name.to_string();
        let label = || (LABEL_NAME, name.clone());
        let metrics = Metrics {
            queue_length: metrics::gauge!(CODEL_QUEUE_LENGTH, &[label()]),
            sojourn: metrics::histogram!(CODEL_SOJOURN_SECONDS, &[label()]),
            dropped: DropReason::ALL.map(|r| {
                metrics::counter!(CODEL_DROPPED, LABEL_NAME => name.clone(), "reason" => r.as_str())
            }),
            lifo: metrics::gauge!(CODEL_LIFO, &[label()]),
        };
        Ok(CodelLayer {
            shared: Arc::new(Shared {
                workers: AtomicUsize::new(self.config.workers),
                min_remaining: self.config.min_remaining,
                busy: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                waiters: Mutex::new(Waiters {
                    queue: AdmissionQueue::new(&self.config)?,
                    slots: HashMap::new(),
                    next_id: 0,
                }),
                timing: self.timing,
                name: self.name,
                metrics,
                on_sojourn: self.on_sojourn,
            }),
        })
    }
}

/// Reads a [`CodelLayer`]'s live state.
pub struct CodelHandle {
    shared: Arc<dyn Target>,
}

trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn workers(&self) -> usize;
    fn set_workers(&self, workers: usize);
    fn busy(&self) -> usize;
    fn queue_len(&self) -> usize;
    fn is_lifo(&self) -> bool;
    fn waiters(&self) -> usize;
}

impl<X: Send + Sync> Target for Shared<X> {
    fn name(&self) -> &str {
        &self.name
    }

    fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    fn set_workers(&self, workers: usize) {
        let workers = workers.max(1);
        let before = self.workers.swap(workers, Ordering::SeqCst);
        if workers > before {
            // More room: hand it to whoever waits.
            let mut w = self.waiters.lock();
            self.dispatch(&mut w, Instant::now());
        }
    }

    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    fn queue_len(&self) -> usize {
        self.waiters.lock().queue.len()
    }

    fn is_lifo(&self) -> bool {
        self.waiters.lock().queue.is_lifo(Instant::now())
    }

    fn waiters(&self) -> usize {
        self.waiters.lock().slots.len()
    }
}

impl CodelHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// How many requests may run at once.
    pub fn workers(&self) -> usize {
        self.shared.workers()
    }

    /// Changes how many requests may run at once (at least 1). More workers
    /// are handed to waiting requests at once; with fewer, running requests
    /// finish and the queue waits until the count is under the new number.
    ///
    /// This is how the queue follows an adaptive concurrency limit:
    /// `floodwall-concurrency`'s `Builder::on_limit_change` can call it
    /// with every new limit.
    pub fn set_workers(&self, workers: usize) {
        self.shared.set_workers(workers);
    }

    /// Workers taken now (running requests, and requests just granted one).
    pub fn in_flight(&self) -> usize {
        self.shared.busy()
    }

    /// Requests waiting now.
    pub fn queue_len(&self) -> usize {
        self.shared.queue_len()
    }

    /// Whether the queue would serve newest first now.
    pub fn is_lifo(&self) -> bool {
        self.shared.is_lifo()
    }

    /// Response futures that are waiting: queued, or granted a worker they
    /// have not started on yet, or dropped by the queue and not yet told.
    /// Zero once every response future has finished or been dropped.
    pub fn waiters(&self) -> usize {
        self.shared.waiters()
    }
}

impl Clone for CodelHandle {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for CodelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodelHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("queue_len", &self.queue_len())
            .finish()
    }
}

/// The service a [`CodelLayer`] builds.
pub struct CodelService<S, X = NoTiming> {
    inner: S,
    shared: Arc<Shared<X>>,
}

impl<S, X> CodelService<S, X> {
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

impl<S: Clone, X> Clone for CodelService<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, X> fmt::Debug for CodelService<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodelService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, X, Req> Service<Req> for CodelService<S, X>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    X: TimingOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, X>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        // A deadline that cannot be met is refused even with a worker free
        // (no clock read when requests carry no deadline).
        if let Some(d) = shared.timing.deadline(&req)
            && Instant::now() + shared.min_remaining >= d
        {
            shared.metrics.dropped[DropReason::Deadline.index()].increment(1);
            return ResponseFuture::shed(DropReason::Deadline);
        }
        if shared.queued.load(Ordering::SeqCst) == 0 && shared.try_take() {
            // A free worker and nobody waiting: run at once.
            if let Some(hook) = &shared.on_sojourn {
                let waited = shared.timing.arrival(&req).map_or(Duration::ZERO, |a| {
                    Instant::now().saturating_duration_since(a)
                });
                hook(waited);
            }
            let permit = Permit {
                shared: shared.clone(),
            };
            return ResponseFuture {
                state: State::Running {
                    fut: self.inner.call(req),
                    permit,
                },
            };
        }
        self.enqueue(req)
    }
}

impl<S, X> CodelService<S, X> {
    #[cold]
    fn enqueue<Req>(&mut self, req: Req) -> ResponseFuture<S, Req, X>
    where
        S: Service<Req> + Clone,
        X: TimingOf<Req>,
    {
        // Cloned first: nothing may fail between queueing the request and
        // arming its guard.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        let now = Instant::now();
        let start = shared.timing.arrival(&req).unwrap_or(now);
        let deadline = shared.timing.deadline(&req);
        let (waiter, expires) = match Shared::push(shared, now, start, deadline) {
            Ok(queued) => queued,
            Err(reason) => {
                shared.metrics.dropped[reason.index()].increment(1);
                return ResponseFuture::shed(reason);
            }
        };
        // Wake up to drop ourselves when the queue timeout passes, or when
        // the deadline can no longer be met, whichever comes first.
        let timeout = expires.map(|t| (t + Duration::from_nanos(1), DropReason::Timeout));
        let deadline = deadline.map(|d| {
            let at = d.checked_sub(shared.min_remaining).unwrap_or(now);
            (at, DropReason::Deadline)
        });
        let timer = match (timeout, deadline) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        ResponseFuture {
            state: State::Waiting {
                waiter,
                service: Some(service),
                req: Some(req),
                timer,
                sleep: None,
            },
        }
    }
}

/// A worker taken; given back on drop.
struct Permit<X> {
    shared: Arc<Shared<X>>,
}

impl<X> Drop for Permit<X> {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A queued request; leaves the queue (or gives back its grant) on drop.
struct Waiter<X> {
    shared: Arc<Shared<X>>,
    id: Option<u64>,
}

impl<X> Drop for Waiter<X> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.cancel(id);
        }
    }
}

pin_project! {
    /// The response future of [`CodelService`].
    pub struct ResponseFuture<S, Req, X>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, X>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, X>
    where
        S: Service<Req>,
    {
        Waiting {
            waiter: Waiter<X>,
            service: Option<S>,
            req: Option<Req>,
            timer: Option<(Instant, DropReason)>,
            // Made on first poll, so `call` works outside a runtime.
            sleep: Option<Pin<Box<Sleep>>>,
        },
        Running { #[pin] fut: S::Future, permit: Permit<X> },
        Shed { reason: Option<DropReason> },
    }
}

impl<S: Service<Req>, Req, X> ResponseFuture<S, Req, X> {
    fn shed(reason: DropReason) -> Self {
        Self {
            state: State::Shed {
                reason: Some(reason),
            },
        }
    }
}

fn shed_error(reason: DropReason) -> BoxError {
    Rejected::boxed(Shed { reason })
}

impl<S, Req, X> Future for ResponseFuture<S, Req, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { fut, .. } => {
                    return Poll::Ready(ready!(fut.poll(cx)).map_err(Into::into));
                }
                StateProj::Shed { reason } => {
                    let reason = reason.take().expect("polled after completion");
                    return Poll::Ready(Err(shed_error(reason)));
                }
                StateProj::Waiting {
                    waiter,
                    service,
                    req,
                    timer,
                    sleep,
                } => {
                    let id = waiter.id.expect("a waiting request has an id");
                    let shared = &waiter.shared;
                    let mut w = shared.waiters.lock();
                    let slot = w.slots.get_mut(&id).expect("a waiting request has a slot");
                    match slot.outcome {
                        Some(Ok(())) => {
                            w.slots.remove(&id);
                            drop(w);
                            waiter.id = None;
                            let permit = Permit {
                                shared: shared.clone(),
                            };
                            let mut service = service.take().expect("service kept until granted");
                            let fut = service.call(req.take().expect("request kept until granted"));
                            state.set(State::Running { fut, permit });
                        }
                        Some(Err(reason)) => {
                            w.slots.remove(&id);
                            drop(w);
                            waiter.id = None;
                            state.set(State::Shed { reason: None });
                            return Poll::Ready(Err(shed_error(reason)));
                        }
                        None => {
                            if let Some((at, reason)) = *timer
                                && sleep
                                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                                    .as_mut()
                                    .poll(cx)
                                    .is_ready()
                            {
                                w.slots.remove(&id);
                                w.queue.remove(|x| *x == id);
                                shared.queued.store(w.queue.len(), Ordering::SeqCst);
                                shared.metrics.queue_length.set(w.queue.len() as f64);
                                drop(w);
                                shared.metrics.dropped[reason.index()].increment(1);
                                waiter.id = None;
                                state.set(State::Shed { reason: None });
                                return Poll::Ready(Err(shed_error(reason)));
                            }
                            let slot = w.slots.get_mut(&id).expect("checked above");
                            match &slot.waker {
                                Some(old) if old.will_wake(cx.waker()) => {}
                                _ => slot.waker = Some(cx.waker().clone()),
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, X> fmt::Debug for ResponseFuture<S, Req, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A loom model of the handoff between a request that finds no free worker
/// and a request finishing at the same moment (`scripts/loom.sh`).
#[cfg(all(test, floodwall_loom))]
mod loom_model {
    use super::*;

    #[test]
    fn a_worker_released_while_a_request_queues_is_handed_to_it() {
        loom::model(|| {
            let layer = CodelLayer::new(CodelConfig::with_workers(1)).unwrap();
            let shared = layer.shared.clone();
            assert!(shared.try_take(), "a running request holds the one worker");
            let releaser = {
                let shared = shared.clone();
                loom::thread::spawn(move || shared.release())
            };
            let now = Instant::now();
            // The service's fast path, then the queue.
            let direct = shared.queued.load(Ordering::SeqCst) == 0 && shared.try_take();
            let queued = (!direct).then(|| Shared::push(&shared, now, now, None).unwrap());
            releaser.join().unwrap();
            if let Some((waiter, _)) = &queued {
                let id = waiter.id.unwrap();
                let outcome = shared.waiters.lock().slots.get(&id).and_then(|s| s.outcome);
                assert_eq!(
                    outcome,
                    Some(Ok(())),
                    "a queued request was stranded beside a free worker"
                );
            }
            assert_eq!(shared.busy.load(Ordering::SeqCst), 1);
            // The request leaves: a direct one releases its worker, a
            // granted waiter that never ran gives it back on drop.
            if direct {
                shared.release();
            }
            drop(queued);
            assert_eq!(
                shared.busy.load(Ordering::SeqCst),
                0,
                "a granted waiter that leaves gives the worker back"
            );
        });
    }
}
