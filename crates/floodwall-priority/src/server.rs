use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::wire::{ADMISSION_LEVEL_HEADER, PRIORITY_HEADER, UPSTREAM_DROPS_HEADER};
use floodwall_core::{Arrival, BoxError, Criticality, Priority, RejectKind, Rejected};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use metrics::Gauge;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{AdmissionConfig, ConfigError};
use crate::controller::{AdmissionController, WindowReport};
use crate::error::Prioritized;

mod future;

pub use future::ResponseFuture;

/// The default name of a priority admission layer (metric label).
pub const DEFAULT_NAME: &str = "priority";

static LEVEL_HEADER: HeaderName = HeaderName::from_static(ADMISSION_LEVEL_HEADER);
static PRIORITY: HeaderName = HeaderName::from_static(PRIORITY_HEADER);
static DROPS: HeaderName = HeaderName::from_static(UPSTREAM_DROPS_HEADER);
static ADMIT_ALL_VALUE: HeaderValue = HeaderValue::from_static("255-127");

/// How a request's place in the admission order is found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Mode {
    /// DAGOR (the default): the request's [`Priority`] (business, user).
    #[default]
    Dagor,
    /// The four SRE criticality classes from the request's [`Criticality`]
    /// extension (default `Critical`): every lower class is shed before any
    /// higher one. Within a class, the user part of the request's
    /// [`Priority`] orders requests if it has one; otherwise requests are
    /// spread evenly over the 128 user values, so the level can shed part
    /// of a class. Responses and rejections carry no admission level in
    /// this mode (it is on the class scale, which DAGOR clients would
    /// misread), and the handler runs with the request's own priority.
    Criticality,
}

/// Where queuing time (arrival to start of processing) is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Queuing {
    /// From the request's [`Arrival`] extension (stamped by the outermost
    /// floodwall layer; zero without one) to the moment this layer calls the
    /// inner service. The default; put the layer inside whatever queues.
    #[default]
    AtCall,
    /// Reported by someone else through [`AdmissionHandle::record_queuing`],
    /// e.g. the CoDel queue's sojourn times
    /// (`floodwall_codel::Builder::on_sojourn`). The layer measures nothing.
    Reported,
}

struct Metrics {
    /// `requests_total` per business priority, made on first use.
    requests: [OnceLock<RequestCounters>; 256],
    level: Gauge,
    queuing: Gauge,
}

pub(crate) fn label_of(mode: Mode, business: u8) -> String {
    match mode {
        Mode::Criticality => Criticality::ALL
            .get(usize::from(business))
            .map_or_else(|| business.to_string(), |c| c.as_str().to_owned()),
        Mode::Dagor => business.to_string(),
    }
}

struct Shared {
    controller: AdmissionController,
    name: Arc<str>,
    mode: Mode,
    queuing: Queuing,
    trust_inbound: bool,
    unprioritized: Priority,
    criticality: Criticality,
    spread: AtomicU64,
    metrics: Metrics,
}

impl Shared {
    /// The `requests_total` counters of `p`'s business priority.
    fn requests(&self, p: Priority) -> &RequestCounters {
        let business = p.business();
        self.metrics.requests[usize::from(business)].get_or_init(|| {
            RequestCounters::with_labels(
                crate::METRIC_PREFIX,
                &self.name,
                &[(crate::LABEL_PRIORITY, &label_of(self.mode, business))],
            )
        })
    }

    /// The request's priority, read (and, from a trusted header, recorded
    /// in the extensions).
    #[inline]
    fn priority_of<B>(&self, req: &mut Request<B>) -> Priority {
        match self.mode {
            Mode::Dagor => {
                if let Some(p) = req.extensions().get::<Priority>() {
                    return *p;
                }
                if self.trust_inbound
                    && let Some(p) = req
                        .headers()
                        .get(&PRIORITY)
                        .and_then(|v| Priority::parse(v.as_bytes()).ok())
                {
                    req.extensions_mut().insert(p);
                    return p;
                }
                self.unprioritized
            }
            Mode::Criticality => {
                let class = req
                    .extensions()
                    .get::<Criticality>()
                    .copied()
                    .unwrap_or(self.criticality);
                let user = match req.extensions().get::<Priority>() {
                    Some(p) => p.user(),
                    None => {
                        // An even spread over 0..=127: a Weyl sequence.
                        let n = self.spread.fetch_add(1, Relaxed);
                        (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as u8
                    }
                };
                Priority::new(class.index() as u8, user).unwrap_or(Priority::LOWEST)
            }
        }
    }

    #[cold]
    fn window_closed(&self, report: &WindowReport) {
        self.metrics.level.set(f64::from(report.level.index()));
        self.metrics
            .queuing
            .set(report.average_queuing.as_secs_f64());
        if report.level != report.previous {
            tracing::debug!(
                name = %self.name,
                previous = %report.previous,
                level = %report.level,
                overloaded = report.overloaded,
                average_queuing_ms = report.average_queuing.as_secs_f64() * 1e3,
                arrivals = report.arrivals,
                admitted = report.admitted,
                "admission level changed"
            );
        }
    }
}

/// DAGOR-style priority admission for an HTTP or gRPC server.
///
/// Each request's [`Priority`] (from its extensions, set by
/// [`AssignPriorityLayer`](crate::AssignPriorityLayer) at the edge; or, with
/// [`trust_inbound`](Builder::trust_inbound), from the
/// [`PRIORITY_HEADER`] an upstream floodwall service sent) is admitted iff it
/// is at or above the adaptive admission level of an
/// [`AdmissionController`]; otherwise the call fails at once with a
/// [`Prioritized`] rejection (HTTP 503 / gRPC `UNAVAILABLE`) and never
/// reaches the inner service.
///
/// Every response carries the level in force when its request was admitted
/// in [`ADMISSION_LEVEL_HEADER`] for collaborative clients
/// ([`PriorityClientLayer`](crate::PriorityClientLayer)); rejections carry it
/// too once `floodwall-http` or `floodwall-grpc` turns them into responses.
/// The inner service runs with the request's priority as the task's
/// [`current`](crate::current) priority, so its outbound calls inherit it.
///
/// # Clone
/// The layer, and every service it builds, share one controller.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use floodwall_core::Priority;
/// use floodwall_priority::{AdmissionConfig, AdmissionLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let layer = AdmissionLayer::new(AdmissionConfig::default())?;
/// let handle = layer.handle();
/// let service = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Priority::new(2, 40)?);
/// let res = service.oneshot(req).await?;
/// assert_eq!(res.headers()["x-floodwall-admission-level"], "255-127");
/// assert_eq!(handle.level(), Priority::LOWEST);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    /// A layer with the default name, DAGOR mode, queuing measured at call.
    ///
    /// # Errors
    /// As [`AdmissionConfig::validate`].
    pub fn new(config: AdmissionConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder for the other options.
    pub fn builder(config: AdmissionConfig) -> Builder {
        Builder {
            config,
            name: Arc::from(DEFAULT_NAME),
            mode: Mode::Dagor,
            queuing: Queuing::AtCall,
            trust_inbound: false,
            unprioritized: Priority::LOWEST,
            criticality: Criticality::Critical,
        }
    }

    /// A handle on the live controller.
    pub fn handle(&self) -> AdmissionHandle {
        AdmissionHandle {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for AdmissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("name", &self.shared.name)
            .field("level", &self.shared.controller.level())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Builds an [`AdmissionLayer`].
#[derive(Debug)]
pub struct Builder {
    config: AdmissionConfig,
    name: Arc<str>,
    mode: Mode,
    queuing: Queuing,
    trust_inbound: bool,
    unprioritized: Priority,
    criticality: Criticality,
}

impl Builder {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// DAGOR priorities (default) or criticality classes.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Where queuing time is measured. Default [`Queuing::AtCall`].
    pub fn queuing(mut self, queuing: Queuing) -> Self {
        self.queuing = queuing;
        self
    }

    /// Whether to believe the [`PRIORITY_HEADER`] of requests without a
    /// [`Priority`] extension. Default `false`: turn it on for internal
    /// services whose callers are floodwall services; never on a server
    /// that untrusted clients reach directly.
    pub fn trust_inbound(mut self, trust: bool) -> Self {
        self.trust_inbound = trust;
        self
    }

    /// The priority of requests that carry none. Default
    /// [`Priority::LOWEST`]: unlabelled traffic is shed first.
    pub fn unprioritized(mut self, priority: Priority) -> Self {
        self.unprioritized = priority;
        self
    }

    /// In criticality mode, the class of requests without a [`Criticality`]
    /// extension. Default `Critical`.
    pub fn default_criticality(mut self, class: Criticality) -> Self {
        self.criticality = class;
        self
    }

    /// The layer, its first window starting now. Metric handles for the
    /// level register now; per-priority counters on first use.
    ///
    /// # Errors
    /// As [`AdmissionConfig::validate`].
    pub fn build(self) -> Result<AdmissionLayer, ConfigError> {
        let controller = AdmissionController::new(&self.config, Instant::now())?;
        let label = || (LABEL_NAME, self.name.to_string());
        let metrics = Metrics {
            requests: [const { OnceLock::new() }; 256],
            level: metrics::gauge!(metric_name(crate::METRIC_PREFIX, "level"), &[label()]),
            queuing: metrics::gauge!(
                metric_name(crate::METRIC_PREFIX, "queuing_seconds"),
                &[label()]
            ),
        };
        metrics.level.set(f64::from(Priority::LOWEST.index()));
        Ok(AdmissionLayer {
            shared: Arc::new(Shared {
                controller,
                name: self.name,
                mode: self.mode,
                queuing: self.queuing,
                trust_inbound: self.trust_inbound,
                unprioritized: self.unprioritized,
                criticality: self.criticality,
                spread: AtomicU64::new(0),
                metrics,
            }),
        })
    }
}

/// Reads (and feeds) an [`AdmissionLayer`]'s controller.
#[derive(Clone)]
pub struct AdmissionHandle {
    shared: Arc<Shared>,
}

impl AdmissionHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The admission level now ([`Priority::LOWEST`] admits everything).
    pub fn level(&self) -> Priority {
        self.shared.controller.level()
    }

    /// The last closed window's report.
    pub fn last_window(&self) -> Option<WindowReport> {
        self.shared.controller.last_window()
    }

    /// Records one request's queuing time, for [`Queuing::Reported`]. (With
    /// [`Queuing::AtCall`] the layer records its own and this adds to them.)
    pub fn record_queuing(&self, queued: Duration) {
        let now = Instant::now();
        self.shared.controller.record_queuing(now, queued);
    }

    /// Changes the layer's configuration while it serves (see
    /// [`AdmissionController::reconfigure`] for what is kept), and counts
    /// it in `floodwall_priority_reconfigurations_total{name}`.
    ///
    /// # Errors
    /// As [`AdmissionConfig::validate`]: a refused configuration changes
    /// nothing.
    pub fn reconfigure(&self, config: &AdmissionConfig) -> Result<(), ConfigError> {
        self.shared.controller.reconfigure(config, Instant::now())?;
        metrics::counter!(
            floodwall_core::metrics::metric_name(crate::METRIC_PREFIX, "reconfigurations_total"),
            floodwall_core::metrics::LABEL_NAME => self.shared.name.to_string()
        )
        .increment(1);
        tracing::info!(name = %self.shared.name, ?config, "priority admission reconfigured");
        Ok(())
    }

    /// The controller itself.
    pub fn controller(&self) -> &AdmissionController {
        &self.shared.controller
    }
}

impl fmt::Debug for AdmissionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionHandle")
            .field("name", &self.shared.name)
            .field("level", &self.level())
            .finish()
    }
}

/// The service an [`AdmissionLayer`] builds.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Admission<S> {
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

impl<S: fmt::Debug> fmt::Debug for Admission<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let now = floodwall_core::clock::now();
        let priority = shared.priority_of(&mut req);
        if shared.trust_inbound
            && let Some(drops) = req.headers_mut().remove(&DROPS)
            && let Some(n) = drops.to_str().ok().and_then(|s| s.parse::<u32>().ok())
        {
            shared.controller.record_upstream_drops(u64::from(n));
        }
        let decision = shared.controller.admit(now, priority);
        if let Some(report) = shared.controller.take_report() {
            shared.window_closed(&report);
        }
        let dagor = shared.mode == Mode::Dagor;
        let level = match decision {
            Ok(level) => level,
            Err(level) => {
                shared.requests(priority).rejected(RejectKind::Prioritized);
                let rejection = Prioritized::new(priority, level, false);
                return ResponseFuture::rejected(if dagor {
                    rejection
                } else {
                    rejection.unadvertised()
                });
            }
        };
        shared.requests(priority).admitted();
        if shared.queuing == Queuing::AtCall {
            let queued = Arrival::of(req.extensions()).map_or(Duration::ZERO, |a| a.elapsed(now));
            shared.controller.record_queuing(now, queued);
        }
        // In criticality mode the priority above is made up: the handler
        // keeps the request's own (if any), and no class-scale level is
        // advertised to DAGOR clients.
        let (fut, level) = if dagor {
            (
                crate::scope::scope(priority, self.inner.call(req)),
                Some(level),
            )
        } else {
            let own = req.extensions().get::<Priority>().copied();
            let fut = self.inner.call(req);
            let fut = match own {
                Some(p) => crate::scope::scope(p, fut),
                None => crate::scope::unscoped(fut),
            };
            (fut, None)
        };
        ResponseFuture::admitted(fut, level)
    }
}
