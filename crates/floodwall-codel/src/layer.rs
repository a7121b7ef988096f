use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodwall_admit::gate::{Gate, Gated, Open};
use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, RequestCounters, metric_name};
use floodwall_core::sync::{self, AtomicU64, AtomicUsize, Mutex, Ordering};
use floodwall_core::{Arrival, BoxError, Deadline, RejectKind, Rejected, Rejection};
use metrics::{Counter, Gauge, Histogram};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{CodelConfig, ConfigError};
use crate::queue::{AdmissionQueue, DropReason};

mod error;
mod future;
mod handle;
mod pool;
mod timing;

pub use error::Shed;
pub use future::{Queued, ResponseFuture};
pub use handle::CodelHandle;
pub(crate) use pool::*;
pub use timing::{NoTiming, TimingFromExtensions, TimingOf};

/// The default name of an admission queue layer (metric label).
pub const DEFAULT_NAME: &str = "codel";

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
            metric_prefix: crate::METRIC_PREFIX,
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
    type Service = Codel<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        Codel {
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
    metric_prefix: &'static str,
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

    /// The metric prefix (`floodwall_<prefix>_…`): the bulkhead reports
    /// under its own.
    pub(crate) fn metric_prefix(mut self, prefix: &'static str) -> Self {
        self.metric_prefix = prefix;
        self
    }

    /// Where requests' arrival times and deadlines come from, e.g.
    /// [`TimingFromExtensions`] for `http::Request`s.
    pub fn timing<X2>(self, timing: X2) -> Builder<X2> {
        Builder {
            config: self.config,
            timing,
            name: self.name,
            on_sojourn: self.on_sojourn,
            metric_prefix: self.metric_prefix,
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
        let prefix = self.metric_prefix;
        let metrics = Metrics {
            requests: RequestCounters::new(prefix, &name),
            queue_length: metrics::gauge!(metric_name(prefix, "queue_length"), &[label()]),
            sojourn: metrics::histogram!(metric_name(prefix, "sojourn_seconds"), &[label()]),
            dropped: DropReason::ALL.map(|r| {
                metrics::counter!(metric_name(prefix, "dropped_total"), LABEL_NAME => name.clone(), LABEL_REASON => r.as_str())
            }),
            lifo: metrics::gauge!(metric_name(prefix, "lifo"), &[label()]),
            reconfigured: metrics::counter!(metric_name(prefix, "reconfigurations_total"), &[label()]),
            limit: metrics::gauge!(metric_name(prefix, "limit"), &[label()]),
        };
        metrics.limit.set(self.config.workers as f64);
        Ok(CodelLayer {
            shared: Arc::new(Shared {
                workers: AtomicUsize::new(self.config.workers),
                min_remaining: AtomicU64::new(nanos(self.config.min_remaining)),
                config: Mutex::new(self.config),
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

/// The service a [`CodelLayer`] builds.
pub struct Codel<S, X = NoTiming> {
    inner: S,
    shared: Arc<Shared<X>>,
}

impl<S, X> Codel<S, X> {
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

impl<S: Clone, X> Clone for Codel<S, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, X> fmt::Debug for Codel<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codel")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, X, Req> Service<Req> for Codel<S, X>
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
            && floodwall_core::clock::now() + shared.min_remaining() >= d
        {
            shared.metrics.shed(DropReason::Deadline);
            return Gated::rejected(future::shed(DropReason::Deadline));
        }
        if shared.queued.load(Ordering::SeqCst) == 0 && shared.try_take() {
            // A free worker and nobody waiting: run at once. The permit
            // exists before any user code runs, so nothing strands it.
            let permit = Permit {
                shared: shared.clone(),
            };
            if let Some(hook) = &shared.on_sojourn {
                let waited = shared.timing.arrival(&req).map_or(Duration::ZERO, |a| {
                    Instant::now().saturating_duration_since(a)
                });
                if !floodwall_core::hook::contain(|| hook(waited)) {
                    tracing::error!(name = %shared.name, "codel: the on_sojourn hook panicked");
                }
            }
            shared.metrics.requests.admitted();
            return Gated::running(self.inner.call(req), permit);
        }
        self.enqueue(req)
    }
}

impl<S, X> Codel<S, X> {
    #[cold]
    fn enqueue<Req>(&mut self, req: Req) -> ResponseFuture<S, Req, X>
    where
        S: Service<Req> + Clone,
        X: TimingOf<Req>,
    {
        // Cloned first: nothing may fail between queueing the request and
        // arming its guard.
        let service = floodwall_core::service::take_ready(&mut self.inner);
        let shared = &self.shared;
        let now = Instant::now();
        let start = shared.timing.arrival(&req).unwrap_or(now);
        let deadline = shared.timing.deadline(&req);
        let (waiter, expires) = match Shared::push(shared, now, start, deadline) {
            Ok(queued) => queued,
            Err(reason) => {
                shared.metrics.shed(reason);
                return Gated::rejected(future::shed(reason));
            }
        };
        // Wake up to drop ourselves when the queue timeout passes, or when
        // the deadline can no longer be met, whichever comes first.
        let timeout = expires.map(|t| (t + Duration::from_nanos(1), DropReason::Timeout));
        let deadline = deadline.map(|d| {
            let at = d.checked_sub(shared.min_remaining()).unwrap_or(now);
            (at, DropReason::Deadline)
        });
        let timer = match (timeout, deadline) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        Gated::waiting(Box::pin(Queued {
            waiter,
            service: Some(service),
            req: Some(req),
            timer,
            sleep: None,
        }))
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

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
