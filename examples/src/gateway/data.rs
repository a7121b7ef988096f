//! The data plane: what every request goes through before its route's
//! stack (the peer, the inbound header hygiene, the route lookup, the
//! arrival and client key when the route has layers) and after it (the
//! outbound hygiene, the tally).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall::core::{Arrival, BoxError, Rejected};
use floodwall::http::Respond;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::Service;

use super::conn::Peer;
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

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
            return Box::pin(async move { Ok(res) });
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
        Box::pin(async move {
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
    ) -> <Self as Service<Request<Incoming>>>::Future {
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
            RouteStack::Lean(svc) => Box::pin(through(svc.clone(), req, shared, now)),
            RouteStack::Protected(svc) => Box::pin(through((**svc).clone(), req, shared, now)),
            RouteStack::Direct(handler) => Box::pin(through(handler.clone(), req, shared, now)),
        }
    }
}

/// `req`, which arrived at `arrival`, through a route's stack `svc` (its
/// layers deciding at `arrival`: see [`call_once_at`](super::call_once_at)),
/// a rejection or failure answered, the answer's internal headers dropped
/// and the answer tallied.
async fn through<S>(
    svc: S,
    req: Request<Incoming>,
    shared: Arc<Shared>,
    arrival: Instant,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Incoming>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    let mut res = match super::call_once_at(svc, req, arrival).await {
        Ok(res) => res,
        Err(e) => {
            let e = e.into();
            match Rejected::find(&*e) {
                Some(r) => GatewayResponder.respond(r),
                None => upstream_failure(&e),
            }
        }
    };
    outbound_hygiene(res.headers_mut());
    crate::tally::count_response(&shared.tally, &res);
    Ok(res)
}
