//! DAGOR-style priority admission on the server side.
//!
//! This file holds the [`Admission`] service, the options that shape it
//! ([`Mode`], [`Queuing`]) and the state its layer shares (how a request's
//! priority is read, the per-priority metrics); `layer.rs` the layer, its
//! builder and its handle, and `future.rs` the response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::RequestCounters;
use floodwall_core::wire::{ADMISSION_LEVEL_HEADER, PRIORITY_HEADER, UPSTREAM_DROPS_HEADER};
use floodwall_core::{Arrival, BoxError, Criticality, Priority, RejectKind, Rejected};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use metrics::Gauge;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::controller::{AdmissionController, WindowReport};
use crate::error::Prioritized;

mod future;
mod layer;

pub use future::ResponseFuture;
pub use layer::{AdmissionHandle, AdmissionLayer, Builder};

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
                if let Some(p) = Priority::of(req.extensions()) {
                    return p;
                }
                if self.trust_inbound
                    && let Some(p) = floodwall_core::wire::find_header(req.headers(), &PRIORITY)
                        .and_then(|v| Priority::parse(v.as_bytes()).ok())
                {
                    Priority::stamp(req.extensions_mut(), p);
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
                let user = match Priority::of(req.extensions()) {
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
            && let Some(drops) = floodwall_core::wire::remove_header(req.headers_mut(), &DROPS)
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
            let own = Priority::of(req.extensions());
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
