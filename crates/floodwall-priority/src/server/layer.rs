//! The [`AdmissionLayer`], its [`Builder`] and its [`AdmissionHandle`]:
//! how the server's priority admission is made, read and retuned.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, metric_name};
#[cfg(doc)]
use floodwall_core::wire::{ADMISSION_LEVEL_HEADER, PRIORITY_HEADER};
use floodwall_core::{Criticality, Priority};
use tokio::time::Instant;
use tower_layer::Layer;

use super::{Admission, DEFAULT_NAME, Metrics, Mode, Queuing, Shared};
use crate::config::{AdmissionConfig, ConfigError};
use crate::controller::{AdmissionController, WindowReport};
#[cfg(doc)]
use crate::error::Prioritized;

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
