//! The data plane: what every request goes through before its route's
//! stack (the peer, the inbound header hygiene, the route lookup, the
//! arrival and client key when the route has layers) and after it (the
//! outbound hygiene, the tally).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall::core::{Arrival, BoxError, Rejected, clock};
use floodwall::http::Respond;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use super::conn::Peer;
use super::route::LeanRouteService;
use super::runtime::RouteStack;
use super::{Body, ClientKey, GatewayResponder, Runtime, Shared, refusal};

/// What a request may carry in from outside. From a peer that is not a
/// trusted proxy, the user header and the forwarding headers are the
/// client's own words: removed, so nobody can name a user or a client.
/// Toward upstreams the real peer is appended to `X-Forwarded-For`.
///
/// `forwarded` is the peer's own `X-Forwarded-For` value when the
/// connection made it already ([`Peer`]).
fn inbound_hygiene(
    headers: &mut http::HeaderMap,
    runtime: &Runtime,
    peer: IpAddr,
    forwarded: Option<HeaderValue>,
) {
    const XFF: http::HeaderName = http::header::HeaderName::from_static("x-forwarded-for");
    if !runtime.trusts(peer) {
        headers.remove(&runtime.user_header);
        headers.remove(&XFF);
        headers.remove(http::header::FORWARDED);
    }
    let value = if floodwall::core::wire::holds_header(headers, &XFF) {
        let chain = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let chain = if chain.is_empty() {
            peer.to_string()
        } else {
            format!("{chain}, {peer}")
        };
        HeaderValue::from_str(&chain).ok()
    } else if forwarded.is_some() {
        // The usual case, the peer alone, written once per connection.
        forwarded
    } else {
        forwarded_value(peer)
    };
    if let Some(v) = value {
        headers.insert(&XFF, v);
    }
}

/// `peer` as an `X-Forwarded-For` value: written on the stack, one
/// allocation (the value's own).
pub(super) fn forwarded_value(peer: IpAddr) -> Option<HeaderValue> {
    use std::io::Write as _;
    const LEN: usize = 64; // an IPv6 address takes at most 45
    let mut buf = [0u8; LEN];
    let mut w = &mut buf[..];
    let written = write!(w, "{peer}").is_ok();
    let n = LEN - w.len();
    if written {
        HeaderValue::from_bytes(&buf[..n]).ok()
    } else {
        None
    }
}

/// What a response may carry out: the floodwall wire headers between the
/// gateway and its upstreams (admission level, priority, drop reports) are
/// internal.
fn outbound_hygiene(headers: &mut http::HeaderMap) {
    use floodwall::core::wire::{ADMISSION_LEVEL_HEADER, PRIORITY_HEADER, UPSTREAM_DROPS_HEADER};
    // Names made once, not parsed from text on every response.
    const INTERNAL: [http::HeaderName; 3] = [
        http::HeaderName::from_static(ADMISSION_LEVEL_HEADER),
        http::HeaderName::from_static(PRIORITY_HEADER),
        http::HeaderName::from_static(UPSTREAM_DROPS_HEADER),
    ];
    // A response rarely carries one: a scan of its few names (compared,
    // not hashed) decides whether any lookup is needed.
    const SCAN: usize = 16;
    if headers.keys_len() <= SCAN && !headers.keys().any(|k| INTERNAL.contains(k)) {
        return;
    }
    for name in &INTERNAL {
        headers.remove(name);
    }
}

/// The answer to an upstream failure that is not a floodwall rejection:
/// 502 with a fixed text (what failed inside stays inside), or
/// `upstream_too_large` when the upstream's body passed the cap.
pub(crate) fn upstream_failure(e: &BoxError) -> Response<Body> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return refusal(
                StatusCode::BAD_GATEWAY,
                "upstream_too_large",
                "the upstream's answer was too large",
            );
        }
        source = err.source();
    }
    refusal(StatusCode::BAD_GATEWAY, "upstream_error", "upstream error")
}

/// The data plane: arrival, client IP, route lookup, the route's stack.
#[derive(Debug, Clone)]
pub(super) struct DataPlane {
    shared: Arc<Shared>,
}

impl DataPlane {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Service<Request<Incoming>> for DataPlane {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let now = Instant::now();
        let runtime = self.shared.runtime();
        let (peer, forwarded) = match req.extensions().get::<Peer>() {
            Some(p) => (p.addr.ip(), p.forwarded.clone()),
            None => (
                req.extensions()
                    .get::<SocketAddr>()
                    .map_or(IpAddr::from([0, 0, 0, 0]), SocketAddr::ip),
                None,
            ),
        };
        let Some(route) = runtime.route(req.uri().path()) else {
            let res = refusal(StatusCode::NOT_FOUND, "no_route", "no route for this path");
            return Answer::boxed(async move { Ok(res) });
        };
        let handler = match &route.stack {
            RouteStack::Direct(handler) => handler.clone(),
            RouteStack::Protected(_) | RouteStack::Lean(_) => {
                return self.call_layered(req, now, &runtime, &route.stack, peer, forwarded);
            }
        };
        // Layers off: nothing below reads the arrival or the client's
        // address, so neither is worked out; the handler's future lives in
        // this allocation.
        inbound_hygiene(req.headers_mut(), &runtime, peer, forwarded);
        let shared = self.shared.clone();
        Answer::boxed(async move {
            let mut res = handler.serve(req).await;
            outbound_hygiene(res.headers_mut());
            crate::tally::count_response(&shared.tally, &res);
            Ok(res)
        })
    }
}

impl DataPlane {
    /// A request on a route with layers: stamped with its arrival (and its
    /// client's key, when a layer keys by it), through the route's stack;
    /// a rejection the stack returns is answered here.
    fn call_layered(
        &self,
        mut req: Request<Incoming>,
        now: Instant,
        runtime: &Runtime,
        stack: &RouteStack,
        peer: IpAddr,
        forwarded: Option<HeaderValue>,
    ) -> Answer {
        Arrival::stamp(req.extensions_mut(), now);
        if runtime.keys_clients {
            // From the forwarding headers as they came in, before ours is
            // added.
            let key = ClientKey(runtime.client_key(runtime.client_ip(peer, req.headers())));
            // Into the peer's extension, not one of its own: no allocation.
            match req.extensions_mut().get_mut::<Peer>() {
                Some(p) => p.key = Some(key),
                None => {
                    let mut p = Peer::new(SocketAddr::new(peer, 0));
                    p.key = Some(key);
                    req.extensions_mut().insert(p);
                }
            }
        }
        inbound_hygiene(req.headers_mut(), runtime, peer, forwarded);
        let shared = self.shared.clone();
        match stack {
            RouteStack::Lean(svc) => Answer::Lean {
                through: Through::new(svc.clone(), req, shared, now),
            },
            RouteStack::Protected(svc) => {
                Answer::boxed(Through::new((**svc).clone(), req, shared, now))
            }
            RouteStack::Direct(handler) => {
                Answer::boxed(Through::new(handler.clone(), req, shared, now))
            }
        }
    }
}

pin_project! {
    /// The data plane's answer to one request. A lean route's (the usual
    /// route: the edge limits, priority and deadline over the handler) is
    /// its stack's future in place: it lives in the connection's own slot
    /// for the request in flight (hyper keeps one per HTTP/1.1
    /// connection), with no allocation per request. The others are boxed:
    /// a route with a global limit or hot-room layers has a larger future,
    /// which would make every request's answer that large to move.
    #[project = AnswerProj]
    pub(super) enum Answer {
        /// A lean route's stack, called in place.
        Lean { #[pin] through: Through<LeanRouteService> },
        /// Any other answer, boxed.
        Boxed { fut: Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>> },
    }
}

impl Answer {
    fn boxed(
        fut: impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    ) -> Self {
        Answer::Boxed { fut: Box::pin(fut) }
    }
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Lean { through } => through.poll(cx),
            AnswerProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answer::Lean { .. } => "Answer::Lean",
            Answer::Boxed { .. } => "Answer::Boxed",
        })
    }
}

pin_project! {
    /// A request through a route's stack `S`: the stack made ready and
    /// called, then its answer [`finish`]ed. When the stack is ready in the
    /// first poll (which follows the data plane's `call` at once) it is
    /// called inside the call chain of the request's arrival
    /// ([`floodwall::core::clock`]), so the route's layers decide at that
    /// instant and the request's one clock read is the data plane's; a
    /// stack that was not ready at once is called outside it (time has
    /// passed; its layers read the clock). A named future, so a lean
    /// route's lives in place in [`Answer`].
    pub(super) struct Through<S: Service<Request<Incoming>>> {
        #[pin]
        stage: Stage<S, S::Future>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<S, F> {
        // Waiting for the stack to be ready (a stack whose layers decide in
        // `call` always is).
        Ready {
            svc: S,
            req: Option<Request<Incoming>>,
            arrival: Instant,
            waited: bool,
        },
        // Called: the stack's answer (the stack's clone is dropped).
        Called { #[pin] fut: F },
    }
}

impl<S: Service<Request<Incoming>>> Through<S> {
    fn new(svc: S, req: Request<Incoming>, shared: Arc<Shared>, arrival: Instant) -> Self {
        Self {
            stage: Stage::Ready {
                svc,
                req: Some(req),
                arrival,
                waited: false,
            },
            shared,
        }
    }
}

impl<S> Future for Through<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Ready {
                    svc,
                    req,
                    arrival,
                    waited,
                } => {
                    match svc.poll_ready(cx) {
                        Poll::Pending => {
                            *waited = true;
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Ok(finish(this.shared, Err(e.into()))));
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    let req = req.take().expect("polled after completion");
                    let fut = {
                        let _chain = (!*waited).then(|| clock::enter(*arrival));
                        svc.call(req)
                    };
                    this.stage.set(Stage::Called { fut });
                }
                StageProj::Called { fut } => {
                    let out = ready!(fut.poll(cx)).map_err(Into::into);
                    return Poll::Ready(Ok(finish(this.shared, out)));
                }
            }
        }
    }
}

/// A route stack's outcome as the answer sent: a rejection or failure
/// answered, the answer's internal headers dropped, the answer tallied.
fn finish(shared: &Shared, out: Result<Response<Body>, BoxError>) -> Response<Body> {
    let mut res = match out {
        Ok(res) => res,
        Err(e) => match Rejected::find(&*e) {
            Some(r) => GatewayResponder.respond(r),
            None => upstream_failure(&e),
        },
    };
    outbound_hygiene(res.headers_mut());
    crate::tally::count_response(&shared.tally, &res);
    res
}
