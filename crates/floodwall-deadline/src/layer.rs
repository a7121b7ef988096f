use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{DEADLINE_EXCEEDED, DEADLINE_INBOUND_SECONDS, LABEL_NAME};
use floodwall_core::{Arrival, BoxError, Deadline, DeadlineExceeded, Phase, Rejected, outcome};
use http::header::{HeaderName, HeaderValue};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;
use tower_service::Service;

use crate::scope::{self, Scoped};
use crate::timeout::{
    DEFAULT_HTTP_HEADER, Encoded, GRPC_TIMEOUT_HEADER, parse_grpc_timeout, parse_http_timeout,
};

/// How a timeout travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// `grpc-timeout` (gRPC over HTTP/2, tonic).
    Grpc,
    /// An HTTP header of integer milliseconds ([`DEFAULT_HTTP_HEADER`] by
    /// default).
    Http(HeaderName),
}

impl Wire {
    /// The HTTP form under its default name, `x-request-timeout-ms`.
    pub fn http() -> Self {
        Wire::Http(HeaderName::from_static(DEFAULT_HTTP_HEADER))
    }

    fn header(&self) -> HeaderName {
        match self {
            Wire::Grpc => HeaderName::from_static(GRPC_TIMEOUT_HEADER),
            Wire::Http(name) => name.clone(),
        }
    }

    fn parse(&self, value: &HeaderValue) -> Option<Duration> {
        match self {
            Wire::Grpc => parse_grpc_timeout(value.as_bytes()).ok(),
            Wire::Http(_) => parse_http_timeout(value.as_bytes()).ok(),
        }
    }

    fn encode(&self, timeout: Duration) -> HeaderValue {
        let text = match self {
            Wire::Grpc => Encoded::grpc(timeout),
            Wire::Http(_) => Encoded::http(timeout),
        };
        HeaderValue::from_bytes(text.as_bytes())
            .expect("digits and a unit letter are a valid header value")
    }
}

fn exceeded(phase: Phase, caller_limited: bool) -> BoxError {
    Rejected::boxed(DeadlineExceeded::new(phase, caller_limited))
}

/// The default name of a deadline layer (metric label).
pub const DEFAULT_NAME: &str = "deadline";

struct Metrics {
    exceeded: [Counter; 4],
    inbound: Histogram,
}

impl Metrics {
    fn new(name: &str) -> Self {
        Self {
            exceeded: Phase::ALL.map(|p| {
                metrics::counter!(DEADLINE_EXCEEDED, LABEL_NAME => name.to_owned(), "phase" => p.as_str())
            }),
            inbound: metrics::histogram!(DEADLINE_INBOUND_SECONDS, LABEL_NAME => name.to_owned()),
        }
    }

    fn exceeded(&self, phase: Phase) -> BoxError {
        self.exceeded[phase as usize].increment(1);
        // Never sent: who set the deadline does not matter.
        exceeded(phase, false)
    }
}

/// A server's deadline policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the inbound timeout is read. Default [`Wire::Grpc`].
    pub wire: Wire,
    /// Whether the inbound timeout header is believed. Edge services facing
    /// untrusted clients set this to false (and rely on `max`). Default true.
    pub trust_inbound: bool,
    /// The longest any request may take here, header or not. Default none.
    pub max: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            wire: Wire::Grpc,
            trust_inbound: true,
            max: None,
        }
    }
}

struct ServerShared {
    config: ServerConfig,
    header: HeaderName,
    metrics: Metrics,
}

/// The server side: reads the inbound timeout, fixes the request's
/// [`Deadline`] as `arrival + min(header, max)`, refuses a request that
/// arrives with no time left, and drops the handler at the deadline. The
/// handler sees the deadline in its request extensions and, for the
/// outbound calls it makes, in the task scope ([`current`](crate::current)).
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::{ServerConfig, ServerDeadlineLayer, current};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ServerDeadlineLayer::new(ServerConfig::default()))
///     .service(service_fn(|_req: http::Request<()>| async {
///         // What an outbound call made here would send on:
///         Ok::<_, floodwall_core::BoxError>(current().map(|d| d.remaining(tokio::time::Instant::now())))
///     }));
/// let req = http::Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap(), Some(Duration::from_secs(2)));
/// # }
/// ```
#[derive(Clone)]
pub struct ServerDeadlineLayer {
    shared: Arc<ServerShared>,
}

impl ServerDeadlineLayer {
    /// A layer for `config`, metric label [`DEFAULT_NAME`].
    pub fn new(config: ServerConfig) -> Self {
        Self::named(config, DEFAULT_NAME)
    }

    /// A layer for `config` with metric label `name`.
    pub fn named(config: ServerConfig, name: &str) -> Self {
        Self {
            shared: Arc::new(ServerShared {
                header: config.wire.header(),
                config,
                metrics: Metrics::new(name),
            }),
        }
    }
}

impl fmt::Debug for ServerDeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerDeadlineLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`ServerDeadlineLayer`] builds.
#[derive(Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    shared: Arc<ServerShared>,
}

impl<S: fmt::Debug> fmt::Debug for ServerDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerDeadline")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for ServerDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        let now = Instant::now();
        let arrival = match req.extensions().get::<Arrival>() {
            Some(a) => a.instant(),
            None => Arrival::stamp(req.extensions_mut(), now).instant(),
        };
        let inbound = if shared.config.trust_inbound {
            req.headers()
                .get(&shared.header)
                .and_then(|v| shared.config.wire.parse(v))
        } else {
            None
        };
        let timeout = match (inbound, shared.config.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(timeout) = timeout else {
            return ResponseFuture::open(self.inner.call(req));
        };
        // The caller limited this request if its timeout is shorter than
        // the server's own budget (`max`), or if there is no such budget.
        let mut caller_limited = inbound.is_some_and(|i| shared.config.max.is_none_or(|m| i < m));
        // An outer layer's deadline (in the extensions or the task scope)
        // is never extended; the earliest one's origin counts.
        let mut deadline = Deadline::after(arrival, timeout);
        if let Some(&outer) = req.extensions().get::<Deadline>()
            && outer < deadline
        {
            (deadline, caller_limited) = (outer, true);
        }
        if let Some(outer) = scope::current_scoped()
            && outer.deadline() < deadline
        {
            (deadline, caller_limited) = (outer.deadline(), outer.from_caller());
        }
        shared
            .metrics
            .inbound
            .record(deadline.remaining(now).as_secs_f64());
        if deadline.is_expired(now) {
            return ResponseFuture::expired(&shared.metrics, Phase::OnArrival);
        }
        req.extensions_mut().insert(deadline);
        // In scope for the inner `call` as well as for its future.
        let fut = scope::enter(deadline, caller_limited, || {
            outcome::limit_scope(caller_limited, || self.inner.call(req))
        });
        ResponseFuture::timed(
            fut,
            deadline,
            now,
            &shared.metrics,
            Phase::InFlight,
            caller_limited,
        )
    }
}

pin_project! {
    /// The response future of both layers: the inner future, raced against
    /// the deadline's timer when there is one.
    pub struct ResponseFuture<O, T> {
        #[pin]
        kind: Kind<O, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<O, T> {
        // No deadline: the inner future as it is.
        Open { #[pin] fut: O },
        // A deadline: the inner future (in the deadline's task scope, on
        // the server) until the timer fires. The timer is made the first
        // time the inner future is pending: a call that answers at once
        // (a cache hit, a refusal from an inner layer) never touches the
        // runtime's timer.
        Timed {
            #[pin] fut: T,
            #[pin] sleep: Option<Sleep>,
            at: Instant,
            counter: Counter,
            phase: Phase,
            caller_limited: bool,
        },
        // Refused before calling the inner service.
        Expired { error: Option<BoxError> },
    }
}

/// The response future of [`ServerDeadline`]: the handler runs with its
/// deadline in the task scope.
pub type ServerFuture<F> = ResponseFuture<F, TaskLocalFuture<Scoped, F>>;

/// The response future of [`PropagateDeadline`].
pub type ClientFuture<F> = ResponseFuture<F, F>;

impl<O, T> ResponseFuture<O, T> {
    fn open(fut: O) -> Self {
        Self {
            kind: Kind::Open { fut },
        }
    }

    fn timed(
        fut: T,
        deadline: Deadline,
        now: Instant,
        metrics: &Metrics,
        phase: Phase,
        caller_limited: bool,
    ) -> Self {
        // Tokio's timer cannot take instants near the clock's end; thirty
        // years is forever here.
        const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
        let at = now
            .checked_add(FAR)
            .map_or(deadline.instant(), |far| deadline.instant().min(far));
        Self {
            kind: Kind::Timed {
                fut,
                sleep: None,
                at,
                counter: metrics.exceeded[phase as usize].clone(),
                phase,
                caller_limited,
            },
        }
    }

    fn expired(metrics: &Metrics, phase: Phase) -> Self {
        Self {
            kind: Kind::Expired {
                error: Some(metrics.exceeded(phase)),
            },
        }
    }
}

impl<O, T, R, E> Future for ResponseFuture<O, T>
where
    O: Future<Output = Result<R, E>>,
    T: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Open { fut } => fut.poll(cx).map_err(Into::into),
            KindProj::Timed {
                fut,
                mut sleep,
                at,
                counter,
                phase,
                caller_limited,
            } => {
                if let Poll::Ready(out) = fut.poll(cx) {
                    return Poll::Ready(out.map_err(Into::into));
                }
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(*at)));
                }
                ready!(sleep.as_pin_mut().expect("made above").poll(cx));
                counter.increment(1);
                let (phase, caller_limited) = (*phase, *caller_limited);
                // Drop the inner future now, not when the caller drops us;
                // the layers below read the drop as this timeout.
                outcome::expire_scope(caller_limited, || kind.set(Kind::Expired { error: None }));
                Poll::Ready(Err(exceeded(phase, caller_limited)))
            }
            KindProj::Expired { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

impl<O, T> fmt::Debug for ResponseFuture<O, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A client's propagation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// How the remaining time is sent. Default [`Wire::Grpc`].
    pub wire: Wire,
    /// Subtracted from the remaining time before sending, for the network
    /// and the response's way back. Default zero.
    pub margin: Duration,
    /// This call's own timeout, which caps what is sent. Default none.
    pub timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            wire: Wire::Grpc,
            margin: Duration::ZERO,
            timeout: None,
        }
    }
}

struct ClientShared {
    config: ClientConfig,
    header: HeaderName,
    metrics: Metrics,
}

/// The client side: an outbound request made while a deadline is in scope
/// (or carried in its extensions) is sent with the time that remains, less
/// the margin, capped by the call's own timeout; with nothing left it fails
/// at once with [`DeadlineExceeded`] and is not sent. The response is
/// awaited until that same instant.
#[derive(Clone)]
pub struct PropagateDeadlineLayer {
    shared: Arc<ClientShared>,
}

impl PropagateDeadlineLayer {
    /// A layer for `config`, metric label [`DEFAULT_NAME`].
    pub fn new(config: ClientConfig) -> Self {
        Self::named(config, DEFAULT_NAME)
    }

    /// A layer for `config` with metric label `name`.
    pub fn named(config: ClientConfig, name: &str) -> Self {
        Self {
            shared: Arc::new(ClientShared {
                header: config.wire.header(),
                config,
                metrics: Metrics::new(name),
            }),
        }
    }
}

impl fmt::Debug for PropagateDeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropagateDeadlineLayer")
            .field("config", &self.shared.config)
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
            match (scope::current_scoped(), req.extensions().get::<Deadline>()) {
                (Some(s), Some(&e)) if e < s.deadline() => (Some(e), true),
                (Some(s), _) => (Some(s.deadline()), s.from_caller()),
                (None, e) => (e.copied(), true),
            };
        // A timeout the caller already put on this request (tonic's
        // `Request::set_timeout`, say) caps it like the configured one.
        let explicit = req
            .headers()
            .get(&shared.header)
            .and_then(|v| shared.config.wire.parse(v));
        if inherited.is_none() && shared.config.timeout.is_none() && explicit.is_none() {
            return ResponseFuture::open(self.inner.call(req));
        }
        let now = Instant::now();
        let cap = [shared.config.timeout, explicit]
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
        let send = earliest(
            inherited.map(|d| bring_forward(d, shared.config.margin, now)),
            cap,
        )
        .expect("one of them is set");
        let remaining = send.remaining(now);
        if remaining.is_zero() {
            return ResponseFuture::expired(&shared.metrics, Phase::BeforeSend);
        }
        req.headers_mut()
            .insert(shared.header.clone(), shared.config.wire.encode(remaining));
        // The caller limited this call if the deadline it inherited is the
        // caller's (not this server's own budget) and earlier than the
        // call's own budget (the configured or explicit timeout), or the
        // call has no budget of its own.
        let caller_limited = from_caller && inherited.is_some_and(|i| cap.is_none_or(|c| i < c));
        req.extensions_mut().insert(wait);
        let fut = outcome::limit_scope(caller_limited, || self.inner.call(req));
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
