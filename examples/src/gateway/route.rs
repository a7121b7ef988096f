//! One route's stack, built from its configuration: the per-client-IP and
//! route token buckets, the Redis global limit, DAGOR priority assignment,
//! the route deadline and the hot-room layers, in front of its handler.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use floodwall::core::BoxError;
use floodwall::core::key::BoundedKey;
use floodwall::deadline::{ServerDeadline, ServerDeadlineConfig, ServerDeadlineLayer, Wire};
use floodwall::hotkey::{
    HotCache, HotCacheConfig, HotCacheHandle, HotCacheLayer, HotKey, HotKeyConfig, HotKeyHandle,
    HotKeyLayer, TopKConfig,
};
use floodwall::priority::{AssignPriority, AssignPriorityLayer};
use floodwall::redis::{RedisConnection, RedisRateLimit, RedisRateLimitLayer};
use floodwall::token_bucket::{
    Keyed, KeyedTokenBucket, One, RateLimit, TokenBucket, TokenBucketLayer,
};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower::util::Either;

use super::config::{self, GatewayConfig};
use super::handler::RouteHandler;
use super::runtime::{Route, RouteStack};
use super::upstream::Upstream;
use super::{Body, ClientKey};

/// A protected route's stack, outermost first: the per-client-IP and route
/// token buckets, the Redis global limit, DAGOR priority assignment, the
/// route deadline, the hot-room layers, the handler. A concrete type, not a
/// boxed service: the data plane clones it (a few reference counts) and its
/// future lives in the data plane's own allocation, with no boxed clone and
/// no boxed future per request. An optional layer is an [`Either`]: the
/// layer, or the stack below as it is. (No rejection layer: the data plane
/// answers a rejection the stack returns, as it does any error.)
pub(super) type RouteService = EdgeLimits<
    Either<
        RedisRateLimit<AssignStack<HotStack>, BoundedKey, GlobalKey, One>,
        AssignStack<HotStack>,
    >,
>;

/// [`RouteService`] for a route with neither a global limit nor hot-room
/// layers (most routes): without the two layers that would only pass the
/// request on.
pub(super) type LeanRouteService = EdgeLimits<AssignStack<RouteHandler>>;

/// The per-client-IP and route token buckets (each optional) over `S`.
type EdgeLimits<S> = Either<RateLimit<RouteLimit<S>, PerIpKey, One>, RouteLimit<S>>;
type RouteLimit<S> = Either<RateLimit<S, TokenBucket, One>, S>;
/// Priority assignment and the route deadline over `S`.
type AssignStack<S> = AssignPriority<ServerDeadline<S>>;
type HotStack =
    Either<HotKey<HotCache<RouteHandler, String, Response<Body>>, String, QueryKey>, RouteHandler>;

/// The hot-room key: the request's query.
type QueryKey = fn(&Request<Incoming>) -> Option<String>;
/// The global limit's key: the user, else the client (see [`global_key`]).
type GlobalKey = Box<dyn Fn(&Request<Incoming>) -> Option<BoundedKey> + Send + Sync>;
/// The per-client-IP bucket, keyed by [`client_ip_of`].
type PerIpKey = Keyed<KeyedTokenBucket<IpAddr>, fn(&Request<Incoming>) -> Option<IpAddr>>;

pub(super) type PerIpLayer = TokenBucketLayer<PerIpKey>;

pub(super) fn client_ip_of(req: &Request<Incoming>) -> Option<IpAddr> {
    ClientKey::of(req.extensions()).map(|c| c.0)
}

pub(super) fn build_route(
    r: &config::RouteConfig,
    config: &GatewayConfig,
    upstreams: &BTreeMap<String, (config::UpstreamConfig, Upstream)>,
    per_ip: Option<PerIpLayer>,
    assign: &AssignPriorityLayer,
    redis: Option<&RedisConnection>,
) -> Result<Route, BoxError> {
    let up = |name: &str| -> Result<Upstream, BoxError> {
        upstreams
            .get(name)
            .map(|(_, u)| u.clone())
            .ok_or_else(|| format!("unknown upstream {name:?}").into())
    };
    let protected = config.gateway.protected;
    let overflow = match &r.overflow {
        Some(o) => {
            let quota = floodwall::token_bucket::Quota::per_second(o.rate)?
                .with_burst(o.burst.unwrap_or(o.rate))?;
            Some((Arc::new(TokenBucket::new(quota)), up(&o.upstream)?))
        }
        None => None,
    };
    let optional = r
        .optional
        .iter()
        .map(|n| match up(n)? {
            Upstream::Http(h) => Ok((n.clone(), h)),
            Upstream::Grpc(_) => Err(BoxError::from(format!("{n:?} is not http"))),
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let overflow_bucket = overflow.as_ref().map(|(b, _)| b.clone());
    let handler = RouteHandler::new(
        r.handler,
        up(&r.upstream)?,
        overflow,
        optional,
        config.gateway.user_header.clone(),
        Some((
            r.path.as_deref().or(r.prefix.as_deref()).unwrap_or(""),
            r.aggregate.unwrap_or_default(),
        )),
    )?;
    let label = r.path.as_deref().or(r.prefix.as_deref()).unwrap_or("");
    let (stack, limit, global, hot) = if protected {
        let limit = match &r.limit {
            Some(c) => {
                let mut c = c.clone();
                if c.name == floodwall::token_bucket::DEFAULT_NAME {
                    c.name = format!("route:{label}");
                }
                Some(TokenBucketLayer::new(c)?)
            }
            None => None,
        };
        let handle = limit.as_ref().map(TokenBucketLayer::handle);
        let global = match (&r.global_limit, redis) {
            (Some(c), Some(client)) => {
                let mut c = c.clone();
                if c.name == floodwall::redis::DEFAULT_NAME {
                    c.name = format!("global:{label}");
                }
                Some(c.build::<BoundedKey>(client.clone())?)
            }
            _ => None,
        };
        let user_header = config.gateway.user_header.clone();
        let global_layer = global.clone().map(|limiter| {
            let key: GlobalKey =
                Box::new(move |req: &Request<Incoming>| global_key(req, &user_header));
            RedisRateLimitLayer::new(limiter, key)
        });
        let (hot_layers, hot) = match &r.hot {
            Some(h) => {
                let (layers, handles) = hot_room_layers(label, h)?;
                (Some(layers), Some(handles))
            }
            None => (None, None),
        };
        let deadline = ServerDeadlineLayer::new(ServerDeadlineConfig {
            wire: Wire::Grpc,
            trust_inbound: true,
            max: Some(r.timeout),
        })?;
        let edge = ServiceBuilder::new()
            .option_layer(per_ip)
            .option_layer(limit);
        let stack = if global_layer.is_none() && hot_layers.is_none() {
            RouteStack::Lean(edge.layer(assign.clone()).layer(deadline).service(handler))
        } else {
            RouteStack::Protected(Box::new(
                edge.option_layer(global_layer)
                    .layer(assign.clone())
                    .layer(deadline)
                    .option_layer(hot_layers)
                    .service(handler),
            ))
        };
        (stack, handle, global, hot)
    } else {
        (RouteStack::Direct(handler), None, None, None)
    };
    Ok(Route {
        config: r.clone(),
        stack,
        hot,
        limit,
        global,
        overflow: overflow_bucket,
    })
}

/// The hot-room layers of a `get_room` route: the key is the request's
/// query (the room and its field list: one cached answer per distinct
/// query), at most 256 bytes (longer ones are not counted).
type HotRoomLayers =
    tower::layer::util::Stack<HotCacheLayer<String, Response<Body>>, HotKeyLayer<String, QueryKey>>;

fn hot_room_layers(
    label: &str,
    h: &config::HotRouteConfig,
) -> Result<(HotRoomLayers, (HotKeyHandle<String>, HotCacheHandle)), BoxError> {
    fn query_key(req: &Request<Incoming>) -> Option<String> {
        req.uri()
            .query()
            .filter(|q| q.len() <= 256)
            .map(str::to_owned)
    }
    let detect = HotKeyLayer::builder(
        HotKeyConfig {
            topk: TopKConfig {
                k: h.k,
                ..TopKConfig::default()
            },
            min_count: h.min_count,
            ..HotKeyConfig::default()
        },
        query_key as QueryKey,
    )
    .name(format!("route:{label}"))
    .build()?;
    let cache: HotCacheLayer<String, Response<Body>> = HotCacheLayer::builder(HotCacheConfig {
        ttl: h.ttl,
        max_entries: h.k,
    })
    .name(format!("route:{label}"))
    .build()?;
    let handles = (detect.handle(), cache.handle());
    Ok((tower::layer::util::Stack::new(cache, detect), handles))
}

/// The user-priority hash key: `FLOODWALL_KEY_SEED` (a secret shared by
/// every instance, kept out of config files), else the config's
/// `key_seed`, else a random key per process.
pub(super) fn key_seed(configured: Option<u64>) -> Result<Option<u64>, BoxError> {
    match std::env::var("FLOODWALL_KEY_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| "FLOODWALL_KEY_SEED must be an unsigned 64-bit integer".into()),
        Err(_) => Ok(configured),
    }
}

/// The key of a route's global limit: the user, else the client's key (its
/// IP, an IPv6 client by its /64). Bounded: a user id longer than 59 bytes
/// counts under its digest, so long ids cannot grow the limiter's memory
/// or Redis's.
pub(super) fn global_key(req: &Request<Incoming>, user_header: &str) -> Option<BoundedKey> {
    if let Some(user) = req.headers().get(user_header) {
        let mut key = Vec::with_capacity(5 + user.len());
        key.extend_from_slice(b"user:");
        key.extend_from_slice(user.as_bytes());
        return Some(BoundedKey::new(key));
    }
    ClientKey::of(req.extensions()).map(|ip| BoundedKey::new(format!("ip:{}", ip.0)))
}
