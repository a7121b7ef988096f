//! The client side: the deadline in scope, sent with every outbound call.

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::{BoxError, ConfigError, Deadline, Phase, clock, outcome};
use http::header::HeaderName;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::builder::{Builder, DeadlineHandle};
use crate::future::{ClientFuture, Metrics, ResponseFuture};
use crate::scope::{self};
use crate::wire::Wire;

/// A client's propagation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PropagateDeadlineConfig {
    /// How the remaining time is sent. Default [`Wire::Grpc`].
    pub wire: Wire,
    /// Subtracted from the remaining time before sending, for the network
    /// and the response's way back. Default zero.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub margin: Duration,
    /// This call's own timeout, which caps what is sent. Default none.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub timeout: Option<Duration>,
}

impl Default for PropagateDeadlineConfig {
    fn default() -> Self {
        Self {
            wire: Wire::Grpc,
            margin: Duration::ZERO,
            timeout: None,
        }
    }
}

pub(crate) struct ClientShared {
    pub(crate) name: Arc<str>,
    /// Replaced by a reconfiguration; a request reads it once.
    pub(crate) config: RwLock<PropagateDeadlineConfig>,
    /// The wire format (fixed: it names the header).
    pub(crate) wire: Wire,
    header: HeaderName,
    metrics: Metrics,
}

/// The client side: an outbound request made while a deadline is in scope
/// (or carried in its extensions) is sent with the time that remains, less
/// the margin, capped by the call's own timeout; with nothing left it fails
/// at once with [`DeadlineExceeded`](crate::DeadlineExceeded) and is not sent. The response is
/// awaited until that same instant.
#[derive(Clone)]
pub struct PropagateDeadlineLayer {
    shared: Arc<ClientShared>,
}

impl PropagateDeadlineLayer {
    /// A layer for `config`, named [`DEFAULT_NAME`](crate::DEFAULT_NAME).
    ///
    /// # Errors
    /// As [`Builder::build`](crate::Builder).
    pub fn new(config: PropagateDeadlineConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name.
    pub fn builder(config: PropagateDeadlineConfig) -> Builder<PropagateDeadlineConfig> {
        Builder::new(config)
    }

    /// The layer's handle.
    pub fn handle(&self) -> DeadlineHandle {
        DeadlineHandle::client(self.shared.clone())
    }

    pub(crate) fn from_parts(config: PropagateDeadlineConfig, name: Arc<str>) -> Self {
        Self {
            shared: Arc::new(ClientShared {
                header: config.wire.header(),
                wire: config.wire.clone(),
                config: RwLock::new(config),
                metrics: Metrics::new(&name),
                name,
            }),
        }
    }
}

impl fmt::Debug for PropagateDeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateDeadlineLayer")
            .field("config", &*self.shared.config.read())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateDeadline {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`PropagateDeadlineLayer`] builds.
#[derive(Clone)]
pub struct PropagateDeadline<S> {
    inner: S,
    shared: Arc<ClientShared>,
}

impl<S: fmt::Debug> fmt::Debug for PropagateDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateDeadline")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for PropagateDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        // The deadline this call inherits, and whether it is the caller's
        // (a deadline in the extensions alone counts as the caller's).
        let (inherited, from_caller) =
            match (scope::current_scoped(), Deadline::of(req.extensions())) {
                (Some(s), Some(e)) if e < s.deadline() => (Some(e), true),
                (Some(s), _) => (Some(s.deadline()), s.from_caller()),
                (None, e) => (e, true),
            };
        // A timeout the caller already put on this request (tonic's
        // `Request::set_timeout`, say) caps it like the configured one.
        let (timeout, margin) = {
            let config = shared.config.read();
            (config.timeout, config.margin)
        };
        let explicit = floodwall_core::wire::find_header(req.headers(), &shared.header)
            .and_then(|v| shared.wire.parse(v));
        if inherited.is_none() && timeout.is_none() && explicit.is_none() {
            shared.metrics.requests.admitted();
            return ResponseFuture::open(self.inner.call(req));
        }
        let now = clock::now();
        let cap = [timeout, explicit]
            .into_iter()
            .flatten()
            .map(|t| Deadline::after(now, t))
            .reduce(Deadline::min);
        let earliest = |a: Option<Deadline>, b: Option<Deadline>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Wait until the caller's deadline; tell the callee `margin` less,
        // so that its answer (or its DEADLINE_EXCEEDED) can come back.
        let wait = earliest(inherited, cap).expect("one of them is set");
        let send = earliest(inherited.map(|d| bring_forward(d, margin, now)), cap)
            .expect("one of them is set");
        let remaining = send.remaining(now);
        if remaining.is_zero() {
            return ResponseFuture::expired(&shared.metrics, Phase::BeforeSend);
        }
        req.headers_mut()
            .insert(shared.header.clone(), shared.wire.encode(remaining));
        // The caller limited this call if the deadline it inherited is the
        // caller's (not this server's own budget) and earlier than the
        // call's own budget (the configured or explicit timeout), or the
        // call has no budget of its own.
        let caller_limited = from_caller && inherited.is_some_and(|i| cap.is_none_or(|c| i < c));
        // The layers below see `wait` in the task's scope (not in the
        // request's extensions: the request carries it on the wire, and a
        // first extension costs the request a map), and decide at `now`.
        // For them a deadline this call's own budget set is a caller's.
        let scoped_from_caller = if inherited == Some(wait) {
            from_caller
        } else {
            true
        };
        let fut = {
            let (scoped, _scope) = scope::enter(wait, scoped_from_caller);
            let _chain = clock::enter(now);
            let _limit = outcome::limit(caller_limited);
            scope::ScopedFuture::entered(scoped, self.inner.call(req))
        };
        shared.metrics.requests.admitted();
        ResponseFuture::timed(
            fut,
            wait,
            now,
            &shared.metrics,
            Phase::AwaitingResponse,
            caller_limited,
        )
    }
}

/// `deadline − margin`, but never before `now`.
fn bring_forward(deadline: Deadline, margin: Duration, now: Instant) -> Deadline {
    match deadline.instant().checked_sub(margin) {
        Some(at) if at > now => Deadline::new(at),
        _ => Deadline::new(now),
    }
}
