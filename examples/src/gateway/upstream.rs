//! Clients toward the upstreams, each with its floodwall client stack.
//!
//! Toward a room service (gRPC), outermost first:
//! deadline propagation → collaborative priority admission → circuit
//! breaker → SRE adaptive throttling → tonic channel. Toward an HTTP
//! upstream the same, with the deadline sent as `x-request-timeout-ms` and
//! responses read by HTTP status, over a pooled hyper client.
//!
//! The order matters. Requests dropped by collaborative admission never
//! reach the throttle, so they do not count as requests the room service
//! failed to accept. The breaker sits above the throttle: the throttle
//! counts every request it sees and the room service's answers, while the
//! breaker ignores the throttle's refusals (they never reached the room
//! service) and counts only faults ([`FaultsOnly`]): overload answers are
//! the throttle's business, and a breaker that opened on them would cut
//! off the traffic the room service was still admitting.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use floodwall::breaker::{Breaker, BreakerHandle, BreakerLayer, State};
use floodwall::core::{BoxError, Classify, GrpcClassifier, HttpClassifier, Outcome};
use floodwall::deadline::{
    PropagateDeadline, PropagateDeadlineConfig, PropagateDeadlineLayer, Wire,
};
use floodwall::grpc::{StatusErrorLayer, TonicClassifier};
use floodwall::priority::{
    PriorityClient, PriorityClientConfig, PriorityClientHandle, PriorityClientLayer,
};
use floodwall::throttle::{NoCriticality, Throttle, ThrottleConfig, ThrottleLayer, ThrottleStats};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::util::{BoxCloneSyncService, Either};

use super::config::{UpstreamConfig, UpstreamKind};
use crate::proto::room_client::RoomClient;

/// The transport under a room client: the floodwall stack over a channel.
/// Its errors are `tonic::Status` (a floodwall rejection rides as the
/// status's source), a concrete type so the generated client's futures
/// stay `Send` without higher-ranked trait trouble.
pub type GrpcTransport = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::Status,
>;

/// The transport under an HTTP upstream: the floodwall stack over hyper,
/// boxed (for the aggregate page's modules and the gift writes; the proxy
/// calls the same stack unboxed).
pub type HttpTransport =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Bytes>, BoxError>;

/// The floodwall stack toward an HTTP upstream, outermost first: deadline
/// propagation, collaborative priority admission, the breaker and the
/// throttle (each optional: an [`Either`] of the layer and the stack below
/// as it is), over the pooled client ([`SendVia`]). A concrete type: the
/// proxy clones it (a few reference counts) and its future lives in the
/// handler's, with no boxed clone per request.
pub(crate) type HttpStack =
    PropagateDeadline<PriorityClient<Either<Breaker<Throttled, HttpFaultsOnly>, Throttled>>>;

type Throttled = Either<Throttle<SendVia, HttpClassifier, NoCriticality>, SendVia>;

/// The pooled client as a service: sends the request and collects the
/// answer ([`send_via`]), in a named future ([`SendFuture`]) that lives in
/// the caller's own, with no allocation of its own; the client is shared,
/// so the stack's clone per request costs one reference count, not the
/// client's several.
#[derive(Clone)]
pub(crate) struct SendVia(Arc<Client<HttpConnector, Full<Bytes>>>);

impl tower::Service<http::Request<Full<Bytes>>> for SendVia {
    type Response = http::Response<Bytes>;
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        // The pooled client is always ready (it waits for a connection in
        // its future).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
        send_via(&self.0, req)
    }
}

pin_project! {
    /// [`send_via`]'s future: the pooled client's answer, then its body
    /// collected (capped at [`MAX_UPSTREAM_BODY`]). Small while it is
    /// moved up through the layers' futures (the client's own future is a
    /// pointer); the body's collection state is made in place once the
    /// head is in.
    pub(crate) struct SendFuture {
        #[pin]
        stage: SendStage,
    }
}

pin_project! {
    #[project = SendStageProj]
    enum SendStage {
        Sending { #[pin] res: ResponseFuture },
        Collecting {
            parts: Option<http::response::Parts>,
            #[pin]
            body: Collect<Limited<Incoming>>,
        },
    }
}

impl Future for SendFuture {
    type Output = Result<http::Response<Bytes>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut stage = self.project().stage;
        loop {
            match stage.as_mut().project() {
                SendStageProj::Sending { res } => {
                    let (parts, body) = ready!(res.poll(cx))?.into_parts();
                    // Capped: an oversized answer is a 502, not a memory spike.
                    stage.set(SendStage::Collecting {
                        parts: Some(parts),
                        body: Limited::new(body, MAX_UPSTREAM_BODY).collect(),
                    });
                }
                SendStageProj::Collecting { parts, body } => {
                    let bytes = ready!(body.poll(cx))?.to_bytes();
                    let parts = parts.take().expect("polled after completion");
                    return Poll::Ready(Ok(http::Response::from_parts(parts, bytes)));
                }
            }
        }
    }
}

impl std::fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture").finish_non_exhaustive()
    }
}

/// One breaker state change, for the admin page and the demo report.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Milliseconds since the upstream client was built.
    pub at_ms: u64,
    /// The state left.
    pub from: String,
    /// The state entered.
    pub to: String,
}

/// A client toward one upstream. Cloning shares everything.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A room service.
    Grpc(GrpcUpstream),
    /// An HTTP upstream.
    Http(HttpUpstream),
}

impl Upstream {
    /// Builds the client and its layers. Nothing connects until the first
    /// call.
    ///
    /// # Errors
    /// An invalid URL or layer configuration.
    pub fn build(name: &str, config: &UpstreamConfig, protected: bool) -> Result<Self, BoxError> {
        Ok(match config.kind {
            UpstreamKind::Grpc => Upstream::Grpc(GrpcUpstream::build(name, config, protected)?),
            UpstreamKind::Http => Upstream::Http(HttpUpstream::build(name, config, protected)?),
        })
    }

    /// The live state of the upstream's layers, as JSON.
    pub fn state(&self) -> serde_json::Value {
        match self {
            Upstream::Grpc(g) => g.guards.state("grpc", &g.url),
            Upstream::Http(h) => h.guards.state("http", &h.base.to_string()),
        }
    }
}

/// A stack error as a status: the status a floodwall rejection was turned
/// into; DEADLINE_EXCEEDED when tonic's channel enforced the `grpc-timeout`
/// we sent (it times the call out itself, at the same instant as the
/// deadline layer); UNAVAILABLE for other transport failures. The error
/// rides as the status's source.
fn into_status(e: BoxError) -> tonic::Status {
    let e = match e.downcast::<tonic::Status>() {
        Ok(status) => return *status,
        Err(e) => e,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
    let mut timed_out = false;
    while let Some(c) = cause {
        timed_out |= c.is::<tonic::TimeoutExpired>();
        cause = c.source();
    }
    let mut status = if timed_out {
        tonic::Status::deadline_exceeded("the deadline passed waiting for the room service")
    } else {
        tonic::Status::unavailable(e.to_string())
    };
    status.set_source(Arc::from(e));
    status
}

/// A room-service client.
#[derive(Clone)]
pub struct GrpcUpstream {
    /// The generated client over the floodwall stack.
    pub client: RoomClient<GrpcTransport>,
    url: String,
    guards: Guards,
}

impl std::fmt::Debug for GrpcUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcUpstream")
            .field("url", &self.url)
            .finish()
    }
}

/// The breaker's classifier: gRPC server faults fail, overload answers
/// (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`: the room service shedding) do not;
/// the channel's own timeouts are timeouts (for the outcome rule).
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultsOnly;

impl<B> Classify<http::Response<B>, BoxError> for FaultsOnly {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match TonicClassifier(GrpcClassifier).classify(result) {
            Outcome::Overloaded => Outcome::Success,
            other => other,
        }
    }
}

/// [`FaultsOnly`] for HTTP upstreams: 5xx answers fail, except 503 (the
/// upstream shedding); 429 does not fail either.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFaultsOnly;

impl<B> Classify<http::Response<B>, BoxError> for HttpFaultsOnly {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match HttpClassifier.classify(result) {
            Outcome::Overloaded => Outcome::Success,
            other => other,
        }
    }
}

/// The throttle's numbers and configuration now, for `/state`.
type ThrottleView = Arc<dyn Fn() -> (ThrottleStats, ThrottleConfig) + Send + Sync>;

/// The client-side guards toward one upstream (breaker, throttle,
/// collaborative priority admission), as configured, and their handles.
#[derive(Clone, Default)]
struct Guards {
    breaker: Option<BreakerHandle>,
    throttle: Option<ThrottleView>,
    priority: Option<PriorityClientHandle>,
    transitions: Arc<Mutex<Vec<Transition>>>,
}

/// The layers [`Guards::build`] made, to put in a stack.
struct GuardLayers<B, T> {
    priority: PriorityClientLayer,
    breaker: Option<BreakerLayer<B>>,
    throttle: Option<ThrottleLayer<T>>,
}

impl Guards {
    /// The layers `config` asks for toward upstream `name`; the breaker
    /// reads answers with `faults`, the throttle with `overload`.
    fn build<B, T>(
        name: &str,
        config: &UpstreamConfig,
        faults: B,
        overload: T,
    ) -> Result<(Self, GuardLayers<B, T>), BoxError>
    where
        B: Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let breaker = config
            .breaker
            .map(|b| {
                let log = transitions.clone();
                let born = Instant::now();
                BreakerLayer::builder(b)
                    .name(name.to_owned())
                    .classify(faults)
                    .on_state_change(move |c| {
                        let at_ms = u64::try_from(born.elapsed().as_millis()).unwrap_or(u64::MAX);
                        let mut log = log.lock();
                        // Bounded: the newest MAX_TRANSITIONS are kept.
                        if log.len() == MAX_TRANSITIONS {
                            log.remove(0);
                        }
                        log.push(Transition {
                            at_ms,
                            from: state_name(c.from),
                            to: state_name(c.to),
                        });
                    })
                    .build()
            })
            .transpose()?;
        let throttle = config
            .throttle
            .map(|t| {
                ThrottleLayer::builder(t)
                    .name(name.to_owned())
                    .classify(overload)
                    .build()
            })
            .transpose()?;
        let priority = PriorityClientLayer::builder(PriorityClientConfig {
            collaborative: config.collaborative,
            ..PriorityClientConfig::default()
        })
        .name(name.to_owned())
        .build()?;
        let guards = Guards {
            breaker: breaker.as_ref().map(BreakerLayer::handle),
            throttle: throttle.as_ref().map(|t| {
                let handle = t.handle();
                Arc::new(move || (handle.stats(None), handle.config())) as ThrottleView
            }),
            priority: Some(priority.handle()),
            transitions,
        };
        Ok((
            guards,
            GuardLayers {
                priority,
                breaker,
                throttle,
            },
        ))
    }

    fn state(&self, kind: &str, url: &str) -> serde_json::Value {
        let throttle = self.throttle.as_ref().map(|view| {
            let (s, config) = view();
            serde_json::json!({
                "config": format!("{config:?}"),
                "requests": s.requests,
                "accepts": s.accepts,
                "reject_probability": s.probability,
            })
        });
        let breaker = self.breaker.as_ref().map(|b| {
            let c = b.counts();
            serde_json::json!({
                "state": state_name(b.state()),
                "config": format!("{:?}", b.breaker().config()),
                "window": format!("{c:?}"),
                "transitions": self.transitions.lock().clone(),
            })
        });
        let priority = self.priority.as_ref().map(|p| {
            serde_json::json!({
                "advertised_level": p.level().to_string(),
                "local_drops": p.local_drops(),
            })
        });
        serde_json::json!({
            "kind": kind,
            "url": url,
            "breaker": breaker,
            "throttle": throttle,
            "priority": priority,
        })
    }
}

fn state_name(s: State) -> String {
    format!("{s:?}").to_lowercase()
}

impl GrpcUpstream {
    fn build(name: &str, config: &UpstreamConfig, protected: bool) -> Result<Self, BoxError> {
        let channel = tonic::transport::Endpoint::from_shared(config.url.clone())?
            .tcp_nodelay(true)
            .connect_lazy();
        if !protected {
            let transport = ServiceBuilder::new()
                .map_err(|e: tonic::transport::Error| into_status(e.into()))
                .service(channel);
            return Ok(Self {
                client: RoomClient::new(BoxCloneSyncService::new(transport)),
                url: config.url.clone(),
                guards: Guards::default(),
            });
        }
        let (guards, layers) =
            Guards::build(name, config, FaultsOnly, TonicClassifier(GrpcClassifier))?;
        let transport = ServiceBuilder::new()
            .layer(StatusErrorLayer::new())
            .layer(propagate(Wire::Grpc, config.timeout)?)
            .layer(layers.priority)
            .option_layer(layers.breaker)
            .option_layer(layers.throttle)
            .map_err(|e: tonic::transport::Error| BoxError::from(e))
            .service(channel);
        let transport = ServiceBuilder::new()
            .map_err(into_status)
            .service(transport);
        Ok(Self {
            client: RoomClient::new(BoxCloneSyncService::new(transport)),
            url: config.url.clone(),
            guards,
        })
    }

    /// The breaker's state changes so far.
    pub fn transitions(&self) -> Vec<Transition> {
        self.guards.transitions.lock().clone()
    }

    /// The breaker's state, if there is a breaker.
    pub fn breaker_state(&self) -> Option<State> {
        self.guards.breaker.as_ref().map(BreakerHandle::state)
    }

    /// The breaker's manual controls, if there is a breaker.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.guards.breaker.as_ref()
    }
}

/// An HTTP upstream client.
#[derive(Clone)]
pub struct HttpUpstream {
    /// The transport (the floodwall stack over a pooled hyper client),
    /// boxed.
    pub transport: HttpTransport,
    /// What [`send`](Self::send) calls: the stack itself, or with the
    /// layers off the pooled client (`transport` is the same call, boxed).
    send: SendPath,
    base: http::Uri,
    guards: Guards,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("base", &self.base)
            .finish()
    }
}

/// What [`HttpUpstream::send`] calls.
#[derive(Clone)]
enum SendPath {
    Layered(Box<HttpStack>),
    Direct(Box<Client<HttpConnector, Full<Bytes>>>),
}

/// How many breaker transitions an upstream's log keeps (the newest).
pub const MAX_TRANSITIONS: usize = 64;

/// The largest upstream response body the gateway relays (8 MiB); a larger
/// one is answered with 502 `upstream_too_large`.
pub const MAX_UPSTREAM_BODY: usize = 8 << 20;

/// Sends `req` through `client` and collects the answer, capped at
/// [`MAX_UPSTREAM_BODY`]. The request is handed to the client before the
/// returned future exists, so the future holds no clone of the client.
fn send_via(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> SendFuture {
    SendFuture {
        stage: SendStage::Sending {
            res: client.request(req),
        },
    }
}

/// Deadline propagation toward an upstream: its `wire`, and `timeout` as
/// the call's own budget.
fn propagate(wire: Wire, timeout: Duration) -> Result<PropagateDeadlineLayer, BoxError> {
    Ok(PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        wire,
        timeout: Some(timeout),
        ..PropagateDeadlineConfig::default()
    })?)
}

impl HttpUpstream {
    fn build(name: &str, config: &UpstreamConfig, protected: bool) -> Result<Self, BoxError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let send = SendVia(Arc::new(client.clone()));
        let base = config.url.parse()?;
        if !protected {
            return Ok(Self {
                transport: BoxCloneSyncService::new(send),
                send: SendPath::Direct(Box::new(client)),
                base,
                guards: Guards::default(),
            });
        }
        let (guards, layers) = Guards::build(name, config, HttpFaultsOnly, HttpClassifier)?;
        let stack: HttpStack = ServiceBuilder::new()
            .layer(propagate(Wire::http(), config.timeout)?)
            .layer(layers.priority)
            .option_layer(layers.breaker)
            .option_layer(layers.throttle)
            .service(send);
        Ok(Self {
            transport: BoxCloneSyncService::new(stack.clone()),
            send: SendPath::Layered(Box::new(stack)),
            base,
            guards,
        })
    }

    /// Sends `req` through the stack and collects the answer: the stack
    /// cloned (no boxed service), or with the layers off the pooled client
    /// called directly.
    pub(crate) async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Bytes>, BoxError> {
        match &self.send {
            SendPath::Layered(stack) => super::call_once((**stack).clone(), req).await,
            SendPath::Direct(client) => send_via(client, req).await,
        }
    }

    /// The absolute URI on this upstream of `inbound`'s path and query
    /// (`/` when it has none), which is moved, not parsed again:
    /// [`uri`](Self::uri) of its path and query, without the copy.
    pub(crate) fn uri_of(&self, inbound: http::Uri) -> Result<http::Uri, BoxError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            inbound
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Ok(http::Uri::from_parts(parts)?)
    }

    /// The absolute URI of `path_and_query` on this upstream.
    pub fn uri(&self, path_and_query: &str) -> Result<http::Uri, BoxError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse()?);
        Ok(http::Uri::from_parts(parts)?)
    }
}
