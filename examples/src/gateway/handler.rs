//! The route handlers: room calls, the aggregated enter-room page, and the
//! plain reverse proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use floodwall::core::{BoxError, Classify, Deadline, Outcome, Priority, Rejected};
use floodwall::hotkey::{AggregateConfig, AggregateLayer, Update};
use floodwall::tail::fallback::{self, Value};
use floodwall::tail::{FallbackConfig, FallbackLayer};
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service, ServiceExt};

use super::config::HandlerKind;
use super::upstream::{GrpcUpstream, HttpTransport, HttpUpstream, Upstream};
use super::{Body, GatewayResponder, json, refusal};
use crate::proto::{BatchGetRoomsRequest, EnterRoomRequest, GetRoomRequest, RoomInfo};
use floodwall::http::Respond;
use tower::util::BoxCloneSyncService;

/// Largest request body the proxy forwards.
const MAX_BODY: usize = 1 << 20;

/// The innermost service of a route.
#[derive(Clone)]
pub(super) struct RouteHandler {
    inner: Arc<Inner>,
}

struct Inner {
    kind: HandlerKind,
    primary: Upstream,
    overflow: Option<(Arc<floodwall::token_bucket::TokenBucket>, Upstream)>,
    optional: Vec<Module>,
    user_header: String,
    /// `send_gift`: the aggregated writes to the gift store.
    gifts: Option<GiftWrites>,
}

/// Gifts merged per anchor into one write to the gift store per window
/// (an `Aggregate` over the store, boxed).
type GiftWrites = BoxCloneSyncService<Update<u64, i64>, Response<Bytes>, BoxError>;
type GiftStore = BoxCloneSyncService<Update<u64, i64>, Response<Bytes>, BoxError>;

/// The aggregated gift writes of a `send_gift` route toward `h`.
fn gift_writes(
    name: &str,
    h: &HttpUpstream,
    config: AggregateConfig,
) -> Result<GiftWrites, BoxError> {
    let h = h.clone();
    let store: GiftStore =
        BoxCloneSyncService::new(tower::service_fn(move |u: Update<u64, i64>| {
            let h = h.clone();
            async move {
                let uri = h.uri(&format!("/send?anchor={}&count={}", u.key, u.delta))?;
                let mut req = Request::new(Full::new(Bytes::new()));
                *req.method_mut() = http::Method::POST;
                *req.uri_mut() = uri;
                h.transport.clone().oneshot(req).await
            }
        }));
    let layer = AggregateLayer::builder(config)
        .name(format!("gifts:{name}"))
        .build()?;
    Ok(BoxCloneSyncService::new(layer.layer(store)))
}

/// An optional module: its upstream, behind a fallback that turns any
/// failure of it (an error, a non-2xx answer, a refusal by its upstream's
/// stack, a timeout) into a marked empty answer, so the route degrades
/// instead of failing.
struct Module {
    name: String,
    upstream: HttpUpstream,
    fallback: FallbackLayer<Value<Response<Bytes>>, ModuleClassifier>,
}

/// How a module's answer is read: anything but a 2xx is a failure.
#[derive(Debug, Clone, Copy)]
struct ModuleClassifier;

impl Classify<Response<Bytes>, BoxError> for ModuleClassifier {
    fn classify(&self, result: Result<&Response<Bytes>, &BoxError>) -> Outcome {
        match result {
            Ok(res) if res.status().is_success() => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

/// Marks the answer a module's fallback gave.
#[derive(Debug, Clone, Copy)]
struct Degraded;

fn module(name: String, upstream: HttpUpstream) -> Result<Module, BoxError> {
    let mut marked = Response::new(Bytes::new());
    marked.extensions_mut().insert(Degraded);
    let fallback = FallbackLayer::builder(FallbackConfig::default(), fallback::value(marked))
        .name(format!("module:{name}"))
        .classify(ModuleClassifier)
        .build()?;
    Ok(Module {
        name,
        upstream,
        fallback,
    })
}

impl RouteHandler {
    pub(super) fn new(
        kind: HandlerKind,
        primary: Upstream,
        overflow: Option<(Arc<floodwall::token_bucket::TokenBucket>, Upstream)>,
        optional: Vec<(String, HttpUpstream)>,
        user_header: String,
        gifts: Option<(&str, AggregateConfig)>,
    ) -> Result<Self, BoxError> {
        let optional = optional
            .into_iter()
            .map(|(name, upstream)| module(name, upstream))
            .collect::<Result<_, _>>()?;
        let gifts = match (kind, gifts, &primary) {
            (HandlerKind::SendGift, Some((name, config)), Upstream::Http(h)) => {
                Some(gift_writes(name, h, config)?)
            }
            _ => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                kind,
                primary,
                overflow,
                optional,
                user_header,
                gifts,
            }),
        })
    }
}

impl Service<Request<Incoming>> for RouteHandler {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

impl RouteHandler {
    /// Answers one request. A proxy route's answer is made inline, in a
    /// future of a few hundred bytes the caller can hold in its own
    /// allocation; the other handlers' futures (gRPC calls, the aggregated
    /// page: kilobytes) are boxed here, on their routes only.
    pub(super) async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        if self.inner.kind == HandlerKind::Proxy {
            return match self.inner.pick() {
                Upstream::Http(h) => proxy(h, req).await,
                Upstream::Grpc(_) => misconfigured(),
            };
        }
        Box::pin(self.inner.handle(req)).await
    }
}

fn misconfigured() -> Response<Body> {
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "misconfigured",
        "route handler and upstream kind disagree",
    )
}

/// `POST ?anchor=N&count=C`: the gift joins its anchor's batch; answered
/// when the batch's write to the gift store lands. (Boxed: the answer
/// borrows nothing of the route.)
fn send_gift(
    gifts: GiftWrites,
    req: &Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    let ready = |res: Response<Body>| -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(std::future::ready(res))
    };
    if req.method() != http::Method::POST {
        return ready(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST a gift",
        ));
    }
    let query = req.uri().query();
    let Some(anchor) = query_param(query, "anchor").and_then(|v| v.parse::<u64>().ok()) else {
        return ready(bad_request("`anchor` must be a number"));
    };
    let count = match query_param(query, "count").map(str::parse::<i64>) {
        None => 1,
        Some(Ok(c)) if (1..=1_000).contains(&c) => c,
        Some(_) => return ready(bad_request("`count` must be 1 to 1000")),
    };
    let write = gifts.oneshot(Update {
        key: anchor,
        delta: count,
    });
    Box::pin(async move {
        match write.await {
            Ok(res) if res.status().is_success() => json(
                StatusCode::OK,
                &serde_json::json!({ "anchor": anchor, "count": count }),
            ),
            Ok(_) => refusal(StatusCode::BAD_GATEWAY, "upstream_error", "upstream error"),
            Err(e) => match Rejected::find(&*e) {
                Some(r) => GatewayResponder.respond(r),
                None => refusal(StatusCode::BAD_GATEWAY, "upstream_error", "upstream error"),
            },
        }
    })
}

/// The query parameter `name`, if present.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn fields_of(query: Option<&str>) -> Vec<String> {
    query_param(query, "fields")
        .map(|f| {
            f.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn mask(fields: &[String]) -> Option<prost_types::FieldMask> {
    (!fields.is_empty()).then(|| prost_types::FieldMask {
        paths: fields.to_vec(),
    })
}

/// A room as JSON: the requested fields, or all of them.
fn room_json(r: &RoomInfo, fields: &[String]) -> serde_json::Value {
    let all = fields.is_empty();
    let want = |f: &str| all || fields.iter().any(|x| x == f);
    let mut m = serde_json::Map::new();
    if want("room_id") {
        m.insert("room_id".into(), r.room_id.into());
    }
    if want("title") {
        m.insert("title".into(), r.title.clone().into());
    }
    if want("anchor") {
        m.insert("anchor".into(), r.anchor.clone().into());
    }
    if want("viewers") {
        m.insert("viewers".into(), r.viewers.into());
    }
    if want("live") {
        m.insert("live".into(), r.live.into());
    }
    if want("tags") {
        m.insert("tags".into(), r.tags.clone().into());
    }
    serde_json::Value::Object(m)
}

/// The response for a failed room call: a floodwall rejection made by the
/// client stack renders as one (429/503/504 with its reason); the room
/// service's own statuses map to HTTP.
fn status_response(status: &tonic::Status) -> Response<Body> {
    if let Some(r) = std::error::Error::source(status).and_then(Rejected::find) {
        return GatewayResponder.respond(r);
    }
    // The room service's own answers about the request (a bad argument, a
    // missing room) are the client's business; transport and server
    // failures are not: their text stays inside.
    let msg = status.message();
    match status.code() {
        Code::InvalidArgument => bad_request(msg),
        Code::NotFound => refusal(StatusCode::NOT_FOUND, "not_found", msg),
        Code::DeadlineExceeded => refusal(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "the upstream did not answer in time",
        ),
        Code::Unavailable | Code::ResourceExhausted => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "the upstream is unavailable",
        ),
        _ => refusal(StatusCode::BAD_GATEWAY, "upstream_error", "upstream error"),
    }
}

fn bad_request(message: &str) -> Response<Body> {
    refusal(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A room call's answer: `render` of its reply as JSON, or the response
/// for its failure.
fn answer<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    render: impl FnOnce(T) -> serde_json::Value,
) -> Response<Body> {
    match result {
        Ok(r) => json(StatusCode::OK, &render(r.into_inner())),
        Err(status) => status_response(&status),
    }
}

/// A tonic request carrying the inbound request's priority and deadline,
/// which the client stack propagates.
fn outbound<T>(
    msg: T,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(p) = priority {
        req.extensions_mut().insert(p);
    }
    if let Some(d) = deadline {
        req.extensions_mut().insert(d);
    }
    req
}

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1), and
/// `host` (the outbound request's comes from its URI).
const HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::HOST,
];

/// Drops the hop-by-hop headers of `headers` (every value of each), so
/// the map itself moves on: a scan of its names (compared, not hashed) and
/// one removal per hop-by-hop name present (usually `host` alone), no
/// second map built. The values of one name keep their order; the order
/// of different names may change (a removal moves the map's last entry
/// into the gap), which HTTP leaves free.
fn keep_end_to_end(headers: &mut HeaderMap) {
    let mut found = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found |= 1 << i;
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

impl Inner {
    /// The primary upstream, or the overflow upstream once the primary's
    /// share of the rate is used up.
    fn pick(&self) -> &Upstream {
        match &self.overflow {
            Some((bucket, secondary)) if bucket.try_acquire(Instant::now(), 1).is_err() => {
                secondary
            }
            _ => &self.primary,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let priority = req.extensions().get::<Priority>().copied();
        let deadline = Deadline::of(req.extensions());
        match (self.kind, self.pick()) {
            (HandlerKind::Proxy, Upstream::Http(h)) => proxy(h, req).await,
            (HandlerKind::GetRoom, Upstream::Grpc(g)) => {
                get_room(g, &req, priority, deadline).await
            }
            (HandlerKind::BatchRooms, Upstream::Grpc(g)) => {
                batch_rooms(g, &req, priority, deadline).await
            }
            (HandlerKind::EnterRoom, Upstream::Grpc(g)) => {
                self.enter_room(g, &req, priority, deadline).await
            }
            (HandlerKind::SendGift, Upstream::Http(_)) => match self.gifts.clone() {
                Some(gifts) => send_gift(gifts, &req).await,
                None => refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "misconfigured",
                    "send_gift route without its aggregation",
                ),
            },
            _ => misconfigured(),
        }
    }

    async fn enter_room(
        &self,
        g: &GrpcUpstream,
        req: &Request<Incoming>,
        priority: Option<Priority>,
        deadline: Option<Deadline>,
    ) -> Response<Body> {
        let query = req.uri().query();
        let Some(room_id) = query_param(query, "id").and_then(|v| v.parse::<u64>().ok()) else {
            return bad_request("`id` must be a room number");
        };
        let user_id = req
            .headers()
            .get(self.user_header.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned();
        let mut client = g.client.clone();
        let room_call = client.enter_room(outbound(
            EnterRoomRequest { room_id, user_id },
            priority,
            deadline,
        ));
        let modules: Vec<ModuleFuture> = self
            .optional
            .iter()
            .map(|m| -> ModuleFuture {
                let path = format!("/{}?room={room_id}", m.name);
                let name = m.name.clone();
                let h = m.upstream.clone();
                let svc: HttpTransport =
                    BoxCloneSyncService::new(m.fallback.layer(m.upstream.transport.clone()));
                Box::pin(async move {
                    let r = fetch(&h, svc, path, priority, deadline).await;
                    (name, r)
                })
            })
            .collect();
        let modules = join_all(modules);
        let (room, modules) = tokio::join!(room_call, modules);
        let reply = match room {
            Ok(r) => r.into_inner(),
            Err(status) => return status_response(&status),
        };
        let mut body = serde_json::Map::new();
        body.insert(
            "room".into(),
            reply
                .room
                .as_ref()
                .map_or(serde_json::Value::Null, |r| room_json(r, &[])),
        );
        body.insert("ticket".into(), reply.ticket.into());
        let mut degraded = Vec::new();
        for (name, r) in modules {
            match r {
                Ok(v) => {
                    body.insert(name, v);
                }
                Err(_) => degraded.push(serde_json::Value::from(name)),
            }
        }
        body.insert("degraded".into(), degraded.into());
        json(StatusCode::OK, &serde_json::Value::Object(body))
    }
}

type ModuleFuture =
    Pin<Box<dyn Future<Output = (String, Result<serde_json::Value, BoxError>)> + Send>>;

/// Runs futures concurrently on the current task, keeping their order.
async fn join_all<T>(mut set: Vec<Pin<Box<dyn Future<Output = T> + Send>>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// GETs a JSON document from an optional module through its fallback; an
/// answer the fallback gave (the module failed, was shed or ran out of
/// time) or bad JSON is an error.
async fn fetch(
    h: &HttpUpstream,
    svc: HttpTransport,
    path: String,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> Result<serde_json::Value, BoxError> {
    let mut req = Request::get(h.uri(&path)?).body(Full::new(Bytes::new()))?;
    if let Some(p) = priority {
        req.extensions_mut().insert(p);
    }
    if let Some(d) = deadline {
        Deadline::set(req.extensions_mut(), d);
    }
    let res = svc.oneshot(req).await?;
    if res.extensions().get::<Degraded>().is_some() {
        return Err("the module failed: its fallback answered".into());
    }
    Ok(serde_json::from_slice(res.body())?)
}

async fn get_room(
    g: &GrpcUpstream,
    req: &Request<Incoming>,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> Response<Body> {
    let query = req.uri().query();
    let Some(room_id) = query_param(query, "id").and_then(|v| v.parse::<u64>().ok()) else {
        return bad_request("`id` must be a room number");
    };
    let fields = fields_of(query);
    let mut client = g.client.clone();
    let call = client.get_room(outbound(
        GetRoomRequest {
            room_id,
            field_mask: mask(&fields),
        },
        priority,
        deadline,
    ));
    answer(call.await, |r| room_json(&r, &fields))
}

async fn batch_rooms(
    g: &GrpcUpstream,
    req: &Request<Incoming>,
    priority: Option<Priority>,
    deadline: Option<Deadline>,
) -> Response<Body> {
    let query = req.uri().query();
    let ids: Result<Vec<u64>, _> = query_param(query, "ids")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect();
    let Ok(room_ids) = ids else {
        return bad_request("`ids` must be room numbers");
    };
    let fields = fields_of(query);
    let mut client = g.client.clone();
    let call = client.batch_get_rooms(outbound(
        BatchGetRoomsRequest {
            room_ids,
            field_mask: mask(&fields),
        },
        priority,
        deadline,
    ));
    answer(call.await, |r| {
        let rooms: Vec<_> = r.rooms.iter().map(|r| room_json(r, &fields)).collect();
        serde_json::json!({ "rooms": rooms })
    })
}

/// Forwards the request to the upstream and its answer back.
async fn proxy(h: &HttpUpstream, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // The head is taken apart: what the extensions say is read now, and
    // the method, path and headers move into the outbound request.
    let http::request::Parts {
        method,
        uri,
        headers,
        extensions,
        ..
    } = parts;
    // What the extensions carried (the arrival, the deadline, the priority)
    // is in the task's scope as well, which the upstream's layers read: the
    // outbound request needs no extensions of its own.
    drop(extensions);
    let uri = match h.uri_of(uri) {
        Ok(u) => u,
        Err(e) => return bad_request(&e.to_string()),
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body above 1 MiB",
            );
        }
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    let mut headers = headers;
    keep_end_to_end(&mut headers);
    // The priority header moved on with the others (the edge's
    // `AssignPriority` wrote the request's own over the caller's), and the
    // upstream's `PriorityClient` writes it from the `Priority` extension.
    *out.headers_mut() = headers;
    match h.send(out).await {
        Ok(res) => {
            let (mut rp, rb) = res.into_parts();
            let mut back = Response::new(Full::new(rb));
            *back.status_mut() = rp.status;
            keep_end_to_end(&mut rp.headers);
            *back.headers_mut() = rp.headers;
            back
        }
        Err(e) => match Rejected::find(&*e) {
            Some(r) => GatewayResponder.respond(r),
            None => super::upstream_failure(&e),
        },
    }
}
