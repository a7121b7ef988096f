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
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::config::HandlerKind;
use super::upstream::{GrpcUpstream, HttpTransport, HttpUpstream, Upstream};
use super::{Body, GatewayResponder, json, refusal};
use crate::proto::EnterRoomRequest;
use floodwall::http::Respond;
use tower::util::BoxCloneSyncService;

mod proxy;
mod room;

use proxy::proxy;
use room::{bad_request, batch_rooms, get_room, outbound, query_param, room_json, status_response};

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
        let priority = Priority::of(req.extensions());
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
