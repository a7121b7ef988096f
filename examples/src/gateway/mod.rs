//! The reference gateway: a hyper 1.x reverse proxy and aggregator in front
//! of the room service.
//!
//! Per request, outermost first (the data plane, behind the connection
//! handling: slowloris and idle timeouts, a cap on connections, graceful
//! shutdown):
//! 1. the route is found: exact paths in a hash map, then the longest
//!    matching prefix;
//! 2. on a route with layers, the arrival instant is stamped and the client
//!    IP resolved (the socket peer, or `X-Forwarded-For` when the peer is a
//!    trusted proxy);
//! 3. the route's stack runs: per-client-IP token bucket → the route's
//!    token bucket → DAGOR priority assignment (inbound priority headers from
//!    outside are replaced) → the route deadline (a client `grpc-timeout`
//!    may shorten it, never lengthen it) → the handler;
//! 4. the handler calls upstreams through their client stacks
//!    ([`upstream`]), sending excess above a route's overflow rate to its
//!    secondary upstream.
//!
//! Rejections become 429/503/504 responses with `Retry-After` and an
//! `x-floodwall-reason` header naming why. The admin listener ([`admin`])
//! serves live state, Prometheus metrics and config reload.

pub mod admin;
pub mod config;
mod conn;
mod data;
mod handler;
mod idle;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::key::BoundedKey;
use floodwall::core::{BoxError, Rejected};
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer, Wire};
use floodwall::hotkey::{
    HotCacheConfig, HotCacheHandle, HotCacheLayer, HotKeyConfig, HotKeyHandle, HotKeyLayer,
    TopKConfig,
};
use floodwall::http::{RejectionLayer, Respond};
use floodwall::priority::{AssignConfig, AssignPriorityLayer, BusinessTable};
use floodwall::redis::{RedisConnection, RedisLimiter, RedisRateLimitLayer};
use floodwall::token_bucket::{Keyed, KeyedTokenBucket, TokenBucket, TokenBucketLayer};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use config::{ConfigError, GatewayConfig};
use conn::{ServeLimits, bind, serve};
use data::DataPlane;
pub(crate) use data::upstream_failure;
use handler::RouteHandler;
use upstream::Upstream;

use crate::tally::{Tally, TallySnapshot};

/// The header naming why the gateway refused or could not serve a request:
/// a floodwall rejection kind (`rate_limited`, `overloaded`, `prioritized`,
/// `circuit_open`, `throttled`, `deadline_exceeded`) or an upstream failure
/// (`upstream_unavailable`, `upstream_error`).
pub const REASON_HEADER: &str = "x-floodwall-reason";

/// The key per-client limits count under, in request extensions when such a
/// limit is configured (the per-IP limit, a route's global limit): the
/// client IP, an IPv6 client by its /64 (one host cannot mint a bucket per
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey(pub IpAddr);

/// A response body the gateway produces: small, fully buffered.
pub type Body = Full<Bytes>;

type RouteService = BoxCloneSyncService<Request<Incoming>, Response<Body>, BoxError>;

type PerIpLayer =
    TokenBucketLayer<Keyed<KeyedTokenBucket<IpAddr>, fn(&Request<Incoming>) -> Option<IpAddr>>>;

fn client_ip_of(req: &Request<Incoming>) -> Option<IpAddr> {
    req.extensions().get::<ClientKey>().map(|c| c.0)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Full::from(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// An error response with a reason header.
pub fn refusal(status: StatusCode, reason: &'static str, message: &str) -> Response<Body> {
    let mut res = json(
        status,
        &serde_json::json!({ "error": message, "reason": reason }),
    );
    res.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static(reason));
    res
}

/// Renders rejections as floodwall-http does (status, `Retry-After`,
/// `RateLimit` fields), plus a JSON body and the reason header.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayResponder;

impl Respond<Body> for GatewayResponder {
    fn respond(&self, rejection: &Rejected) -> Response<Body> {
        let mut res: Response<Body> = floodwall::http::response_for(rejection);
        let kind = rejection.kind().as_str();
        *res.body_mut() = Full::from(
            serde_json::json!({ "error": rejection.to_string(), "reason": kind }).to_string(),
        );
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert(REASON_HEADER, HeaderValue::from_static(kind));
        res
    }
}

/// One route, built from its config.
struct Route {
    config: config::RouteConfig,
    service: RouteService,
    /// With the layers off, the handler itself (`service` is then the same
    /// handler, boxed): the data plane calls it without a boxed service
    /// or a second boxed future.
    direct: Option<RouteHandler>,
    /// Hot-room detection and its cache (`get_room` routes with `hot`).
    hot: Option<(HotKeyHandle<String>, HotCacheHandle)>,
    limit: Option<floodwall::token_bucket::RateLimitHandle<floodwall::token_bucket::TokenBucket>>,
    global: Option<RedisLimiter<BoundedKey>>,
    overflow: Option<Arc<TokenBucket>>,
}

/// Everything one configuration builds. Replaced whole on reload.
pub struct Runtime {
    config: GatewayConfig,
    version: u64,
    upstreams: BTreeMap<String, (config::UpstreamConfig, Upstream)>,
    exact: HashMap<String, Arc<Route>>,
    /// Longest first.
    prefixes: Vec<(String, Arc<Route>)>,
    per_ip: Option<PerIpLayer>,
    /// Whether a layer reads [`ClientKey`] (the per-IP limit, a route's
    /// global limit): only then is it put in the request's extensions.
    keys_clients: bool,
    client_ip: floodwall::http::client_ip::ClientIp,
    /// The header naming the user: believed only from trusted proxies.
    user_header: http::HeaderName,
    /// Limit changes found by [`build`](Self::build) on layers the
    /// previous runtime shares with this one, applied by `commit` once the
    /// whole runtime is built (a refused configuration changes nothing).
    pending: parking_lot::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The connection routes' global limits share (kept across reloads
    /// while `gateway.redis` is unchanged).
    /// The URL it was made from, to tell whether a reload changed it.
    redis: Option<(String, RedisConnection)>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("version", &self.version)
            .field("routes", &self.config.routes.len())
            .finish()
    }
}

impl Runtime {
    /// Builds a runtime. Upstream clients whose config is unchanged are
    /// taken over from `previous`, keeping their breaker, throttle and
    /// admission state.
    ///
    /// # Errors
    /// A layer refused its configuration (the config was validated, so
    /// this is rare).
    pub fn build(
        config: GatewayConfig,
        version: u64,
        previous: Option<&Runtime>,
    ) -> Result<Self, BoxError> {
        config.validate()?;
        let protected = config.gateway.protected;
        let mut upstreams = BTreeMap::new();
        for (name, up) in &config.upstreams {
            let kept = previous
                .filter(|p| p.config.gateway.protected == protected)
                .and_then(|p| p.upstreams.get(name))
                .filter(|(c, _)| c == up)
                .map(|(_, u)| u.clone());
            let client = match kept {
                Some(u) => u,
                None => Upstream::build(name, up, protected)?,
            };
            upstreams.insert(name.clone(), (up.clone(), client));
        }
        // Live state is kept for everything whose settings did not change,
        // and for limits whose quota alone changed: those are reconfigured
        // through their handles (buckets kept, SPECS.md "Reconfiguration")
        // once the whole runtime is built.
        let mut pending: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let previous_per_ip = previous
            .filter(|p| p.config.gateway.protected == protected)
            .and_then(|p| Some((p.config.per_ip.clone()?, p.per_ip.clone()?)));
        let mut per_ip_kept =
            config.per_ip.is_none() && previous.is_some_and(|p| p.config.per_ip.is_none());
        let per_ip = match (&config.per_ip, protected) {
            (Some(c), true)
                if previous_per_ip
                    .as_ref()
                    .is_some_and(|(was, _)| same_but_quota(was, c)) =>
            {
                let (was, layer) = previous_per_ip.clone().expect("checked");
                if was.quota != c.quota {
                    let handle = layer.handle();
                    let quota = c.quota;
                    pending.push(Box::new(move || handle.reconfigure(quota)));
                }
                per_ip_kept = true;
                Some(layer)
            }
            (Some(c), true) => {
                let mut c = c.clone();
                if c.name == floodwall::token_bucket::DEFAULT_NAME {
                    c.name = "per_ip".to_owned();
                }
                Some(
                    TokenBucketLayer::builder(c)
                        .build_keyed(client_ip_of as fn(&Request<Incoming>) -> Option<IpAddr>)?,
                )
            }
            _ => None,
        };
        let redis = match (&config.gateway.redis, protected) {
            (Some(url), true) => match previous
                .and_then(|p| p.redis.clone())
                .filter(|(was, _)| was == url)
            {
                Some(kept) => Some(kept),
                None => Some((
                    url.clone(),
                    RedisConnection::open(url).map_err(|err| {
                        ConfigError::new(format!(
                            "gateway.redis: not a usable redis URL ({:?})",
                            err.kind()
                        ))
                    })?,
                )),
            },
            _ => None,
        };
        let mut business = BusinessTable::new(config.gateway.default_priority);
        for r in &config.routes {
            let b = r.priority.unwrap_or(config.gateway.default_priority);
            business = match (&r.path, &r.prefix) {
                (Some(p), _) => business.route(p.clone(), b),
                (_, Some(p)) => business.prefix(p.clone(), b),
                _ => business,
            };
        }
        let assign = AssignPriorityLayer::new(AssignConfig {
            business,
            user_header: Some(config.gateway.user_header.clone()),
            key_seed: key_seed(config.gateway.key_seed)?,
            ..AssignConfig::default()
        })?;
        // A route is taken over (its limits, admission level and overflow
        // state with it) when nothing it is built from changed: its own
        // settings, the edge (gateway settings and per-IP limit), the
        // upstreams and the priority table every route shares.
        let priorities = |c: &GatewayConfig| -> Vec<_> {
            c.routes
                .iter()
                .map(|r| (r.path.clone(), r.prefix.clone(), r.priority))
                .collect()
        };
        let same_edge = per_ip_kept && previous.is_some_and(|p| p.config.gateway == config.gateway);
        let reusable = previous.filter(|p| {
            same_edge
                && p.config.upstreams == config.upstreams
                && priorities(&p.config) == priorities(&config)
        });
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for r in &config.routes {
            let kept = reusable.and_then(|p| {
                let old = p
                    .exact
                    .values()
                    .chain(p.prefixes.iter().map(|(_, route)| route))
                    .find(|route| route.config == *r)
                    .or_else(|| {
                        p.exact
                            .values()
                            .chain(p.prefixes.iter().map(|(_, route)| route))
                            .find(|route| route_but_quota(&route.config, r))
                    })?;
                if old.config == *r {
                    return Some(old.clone());
                }
                // Only the route limit's quota changed: the same route, its
                // bucket reconfigured.
                if let (Some(handle), Some(limit)) = (&old.limit, &r.limit) {
                    let (handle, quota) = (handle.clone(), limit.quota);
                    pending.push(Box::new(move || handle.reconfigure(quota)));
                }
                Some(Arc::new(Route {
                    config: r.clone(),
                    service: old.service.clone(),
                    direct: old.direct.clone(),
                    hot: old.hot.clone(),
                    limit: old.limit.clone(),
                    global: old.global.clone(),
                    overflow: old.overflow.clone(),
                }))
            });
            let route = match kept {
                Some(route) => route,
                None => Arc::new(build_route(
                    r,
                    &config,
                    &upstreams,
                    per_ip.clone(),
                    &assign,
                    redis.as_ref().map(|(_, conn)| conn),
                )?),
            };
            match (&r.path, &r.prefix) {
                (Some(p), _) => {
                    exact.insert(p.clone(), route);
                }
                (_, Some(p)) => prefixes.push((p.clone(), route)),
                _ => {}
            }
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let user_header = http::HeaderName::try_from(config.gateway.user_header.as_str())?;
        let keys_clients = per_ip.is_some()
            || exact
                .values()
                .chain(prefixes.iter().map(|(_, r)| r))
                .any(|r| r.global.is_some());
        Ok(Self {
            user_header,
            keys_clients,
            client_ip: floodwall::http::client_ip::ClientIp::behind(
                config.gateway.trusted_proxies.iter().copied(),
            ),
            config,
            version,
            upstreams,
            exact,
            prefixes,
            per_ip,
            pending: parking_lot::Mutex::new(pending),
            redis,
        })
    }

    /// Applies the limit changes [`build`](Self::build) found on layers
    /// shared with the previous runtime (their buckets kept). Called once
    /// the runtime is built and about to replace the previous one.
    pub fn commit(&self) {
        for change in self.pending.lock().drain(..) {
            change();
        }
    }

    fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.exact.get(path).or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| path.starts_with(p.as_str()))
                .map(|(_, r)| r)
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The configuration's version: 1 at start, +1 per applied reload.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The client of the upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.get(name).map(|(_, u)| u)
    }

    /// The client IP: the peer, unless the peer is a trusted proxy and the
    /// request carries `X-Forwarded-For`, in which case the right-most
    /// address that is not itself a trusted proxy
    /// ([`ClientIp`](floodwall::http::client_ip::ClientIp)).
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        self.client_ip.client_of(peer, headers)
    }

    /// Whether `peer` is a trusted proxy: only then are its forwarding and
    /// user headers believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.client_ip.is_trusted(peer)
    }

    /// The per-client key: the client IP, IPv6 clients by their /64.
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        self.client_ip.mask(ip)
    }

    /// The live state of every layer, as JSON.
    pub fn state(&self) -> serde_json::Value {
        let now = Instant::now();
        let routes: Vec<_> = self
            .config
            .routes
            .iter()
            .filter_map(|c| {
                let key = c.path.as_deref().or(c.prefix.as_deref())?;
                let r = self.route(key)?;
                Some(serde_json::json!({
                    "route": key,
                    "handler": format!("{:?}", r.config.handler),
                    "upstream": r.config.upstream,
                    "limit_tokens_left": r.limit.as_ref().map(|h| h.remaining()),
                    "hot": r.hot.as_ref().map(|(detect, cache)| {
                        let mut keys: Vec<_> = detect
                            .hot()
                            .iter()
                            .map(|(k, e)| serde_json::json!({"key": k, "estimate": e}))
                            .collect();
                        keys.sort_by_key(|k| std::cmp::Reverse(k["estimate"].as_u64()));
                        serde_json::json!({
                            "keys": keys,
                            "cached": cache.cached(),
                            "hits": cache.hits(),
                        })
                    }),
                    "limit": r.limit.as_ref().map(|h| quota_json(&h.limiter().quota())),
                    "global_limit": r.global.as_ref().map(|l| {
                        let s = l.stats();
                        let c = l.config();
                        serde_json::json!({
                            "limit": quota_json(&c.quota),
                            "timeout_ms": c.timeout.as_millis() as u64,
                            "lease_tokens": l.lease_size(),
                            "health": format!("{:?}", l.health()),
                            "admitted": s.admitted,
                            "rejected": s.rejected,
                            "round_trips": s.round_trips,
                            "lease_hits": s.lease_hits,
                            "fallback_decisions": s.fallback_decisions,
                            "errors": s.errors,
                        })
                    }),
                    "overflow_tokens_left": r.overflow.as_ref().map(|b| b.available(now)),
                }))
            })
            .collect();
        let upstreams: serde_json::Map<_, _> = self
            .upstreams
            .iter()
            .map(|(n, (_, u))| (n.clone(), u.state()))
            .collect();
        serde_json::json!({
            "config_version": self.version,
            "protected": self.config.gateway.protected,
            "per_ip": self.per_ip.as_ref().map(|l| {
                let h = l.handle();
                let keys = h.limiter().limiter().keys();
                serde_json::json!({
                    "keys": keys.len(),
                    "capacity": keys.capacity(),
                    "limit": quota_json(&h.limiter().limiter().params()),
                })
            }),
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}

fn build_route(
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
    let direct = (!protected).then(|| handler.clone());
    let (service, limit, global, hot) = if protected {
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
            RedisRateLimitLayer::new(limiter, move |req: &Request<Incoming>| {
                global_key(req, &user_header)
            })
        });
        let (hot_layers, hot) = match &r.hot {
            Some(h) => {
                let (layers, handles) = hot_room_layers(label, h)?;
                (Some(layers), Some(handles))
            }
            None => (None, None),
        };
        let stack = ServiceBuilder::new()
            .layer(RejectionLayer::with(GatewayResponder))
            .option_layer(per_ip)
            .option_layer(limit)
            .option_layer(global_layer)
            .layer(assign.clone())
            .layer(ServerDeadlineLayer::new(ServerDeadlineConfig {
                wire: Wire::Grpc,
                trust_inbound: true,
                max: Some(r.timeout),
            })?)
            .option_layer(hot_layers)
            .service(handler);
        (BoxCloneSyncService::new(stack), handle, global, hot)
    } else {
        (BoxCloneSyncService::new(handler), None, None, None)
    };
    Ok(Route {
        config: r.clone(),
        service,
        direct,
        hot,
        limit,
        global,
        overflow: overflow_bucket,
    })
}

/// The hot-room layers of a `get_room` route: the key is the request's
/// query (the room and its field list: one cached answer per distinct
/// query), at most 256 bytes (longer ones are not counted).
type HotRoomLayers = tower::layer::util::Stack<
    HotCacheLayer<String, Response<Body>>,
    HotKeyLayer<String, fn(&Request<Incoming>) -> Option<String>>,
>;

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
        query_key as fn(&Request<Incoming>) -> Option<String>,
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
fn key_seed(configured: Option<u64>) -> Result<Option<u64>, BoxError> {
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
fn global_key(req: &Request<Incoming>, user_header: &str) -> Option<BoundedKey> {
    if let Some(user) = req.headers().get(user_header) {
        let mut key = Vec::with_capacity(5 + user.len());
        key.extend_from_slice(b"user:");
        key.extend_from_slice(user.as_bytes());
        return Some(BoundedKey::new(key));
    }
    req.extensions()
        .get::<ClientKey>()
        .map(|ip| BoundedKey::new(format!("ip:{}", ip.0)))
}

/// The shared state behind a running gateway.
#[derive(Debug)]
pub struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    /// Serializes reloads; held while one builds, never by the data path.
    reloading: parking_lot::Mutex<()>,
    tally: Tally,
    config_path: Option<std::path::PathBuf>,
    reloads: AtomicU64,
}

impl Shared {
    /// The runtime in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.read().clone()
    }

    /// Validates `config` and, if it is good, puts it in force.
    ///
    /// # Errors
    /// The config is invalid or a layer refused it; the old one stays.
    pub fn apply(&self, config: GatewayConfig) -> Result<u64, BoxError> {
        // The new runtime is built beside the one in force: requests keep
        // reading the current one (a read lock, never blocked by the build)
        // until the swap, which takes the write lock only to replace an Arc.
        let _one_at_a_time = self.reloading.lock();
        let current = self.runtime();
        let version = current.version + 1;
        let next = Arc::new(Runtime::build(config, version, Some(&current))?);
        next.commit();
        *self.runtime.write() = next;
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(version)
    }

    /// Changes one limit without re-reading the configuration: the route
    /// limit of `route` (a path or prefix as configured), or the per-IP
    /// limit when `route` is `None`, to `quota`. The rest of the
    /// configuration in force is applied again as it is, so only that
    /// limit changes, through its handle, its buckets kept.
    ///
    /// # Errors
    /// No such route, a route or gateway without that limit, or as
    /// [`apply`](Self::apply).
    pub fn set_limit(
        &self,
        route: Option<&str>,
        quota: floodwall::token_bucket::Quota,
    ) -> Result<u64, BoxError> {
        let mut config = self.runtime().config().clone();
        let limit = match route {
            None => config
                .per_ip
                .as_mut()
                .ok_or("no per-IP limit is configured")?,
            Some(key) => config
                .routes
                .iter_mut()
                .find(|r| r.path.as_deref() == Some(key) || r.prefix.as_deref() == Some(key))
                .ok_or_else(|| format!("no route {key:?}"))?
                .limit
                .as_mut()
                .ok_or_else(|| format!("route {key:?} has no limit"))?,
        };
        limit.quota = quota;
        self.apply(config)
    }

    /// Re-reads the config file the gateway started from and applies it.
    ///
    /// # Errors
    /// No file, or as [`apply`](Self::apply).
    pub fn reload_file(&self) -> Result<u64, BoxError> {
        let path = self
            .config_path
            .as_deref()
            .ok_or("the gateway was not started from a config file")?;
        self.apply(GatewayConfig::load(path)?)
    }

    /// Responses by outcome since start.
    pub fn tally(&self) -> TallySnapshot {
        self.tally.snapshot()
    }
}

/// A running gateway. Dropping it stops both listeners (connections finish
/// their in-flight requests); [`shutdown`](Self::shutdown) also waits for
/// them.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    conns: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
}

impl Gateway {
    /// Starts the data and admin listeners of `config`. `config_path` is
    /// what `POST /reload` re-reads.
    ///
    /// # Errors
    /// An invalid config, or a port that cannot be bound.
    pub async fn start(
        config: GatewayConfig,
        config_path: Option<std::path::PathBuf>,
    ) -> Result<Self, BoxError> {
        let listen = config.gateway.listen;
        let admin_listen = config.gateway.admin;
        let settings = config.gateway.clone();
        let admin_token = admin::token(settings.admin_token.as_deref())?;
        if admin_token.is_none() && !admin_listen.ip().is_loopback() {
            return Err(format!(
                "the admin port {admin_listen} is not on loopback: set gateway.admin_token \
                 (or FLOODWALL_ADMIN_TOKEN) to require a bearer token, or bind it to loopback"
            )
            .into());
        }
        let runtime = Runtime::build(config, 1, None)?;
        let shared = Arc::new(Shared {
            runtime: RwLock::new(Arc::new(runtime)),
            tally: Tally::default(),
            config_path,
            reloading: parking_lot::Mutex::new(()),
            reloads: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(());
        let data = bind(listen)?;
        let addr = data.local_addr()?;
        let admin = TcpListener::bind(admin_listen).await?;
        let admin_addr = admin.local_addr()?;
        let limits = ServeLimits {
            max_connections: settings.max_connections,
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
        };
        let conns = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        tokio::spawn(serve(
            data,
            DataPlane::new(shared.clone()),
            stopped.clone(),
            limits,
            conns.clone(),
        ));
        let admin_limits = ServeLimits {
            max_connections: 64,
            ..limits
        };
        let admin_conns = Arc::new(tokio::sync::Semaphore::new(admin_limits.max_connections));
        tokio::spawn(serve(
            admin,
            admin::Admin::new(shared.clone(), admin_token),
            stopped,
            admin_limits,
            admin_conns,
        ));
        Ok(Self {
            addr,
            admin_addr,
            shared,
            stop,
            conns,
            max_connections: limits.max_connections,
        })
    }

    /// Stops accepting, lets every open connection finish the requests it
    /// has in flight (each gets its response; nothing new is read), and
    /// waits for them up to `drain`. Returns whether all finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        let _ = self.stop.send(());
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(drain, self.conns.acquire_many(all))
            .await
            .is_ok_and(|p| p.is_ok())
    }

    /// Connections open on the data port now.
    pub fn connections(&self) -> usize {
        self.max_connections - self.conns.available_permits()
    }

    /// The data port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state (runtime, reload, tally).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Two token-bucket configurations that differ at most in their quota
/// (which a handle can change live).
fn same_but_quota(
    a: &floodwall::token_bucket::TokenBucketConfig,
    b: &floodwall::token_bucket::TokenBucketConfig,
) -> bool {
    a.name == b.name && a.max_wait == b.max_wait && a.capacity == b.capacity
}

/// Two route configurations that differ at most in their limit's quota.
fn route_but_quota(a: &config::RouteConfig, b: &config::RouteConfig) -> bool {
    match (&a.limit, &b.limit) {
        (Some(la), Some(lb)) if same_but_quota(la, lb) => {
            let mut a = a.clone();
            a.limit = b.limit.clone();
            a == *b
        }
        _ => false,
    }
}

/// A quota as `/state` shows it: tokens per period and the burst.
fn quota_json(q: &floodwall::token_bucket::Quota) -> serde_json::Value {
    serde_json::json!({
        "tokens": q.tokens(),
        "period_ms": q.period().as_millis() as u64,
        "burst": q.burst(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(trusted: &[&str]) -> Runtime {
        let mut c = GatewayConfig::parse(crate::deploy::REFERENCE_CONFIG).unwrap();
        c.gateway.trusted_proxies = trusted.iter().map(|t| t.parse().unwrap()).collect();
        Runtime::build(c, 1, None).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test]
    async fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let rt = runtime(&["10.0.0.1", "10.0.0.2"]);
        let chain = xff(&["203.0.113.9, 198.51.100.4"]);
        // An untrusted peer: the header is ignored.
        assert_eq!(rt.client_ip(ip("192.0.2.1"), &chain), ip("192.0.2.1"));
        // A trusted peer: the right-most hop that is not a trusted proxy.
        assert_eq!(rt.client_ip(ip("10.0.0.1"), &chain), ip("198.51.100.4"));
        let through_two = xff(&["203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            rt.client_ip(ip("10.0.0.1"), &through_two),
            ip("203.0.113.9")
        );
        // Only proxies in the chain: the left-most (an internal client);
        // no header: the peer.
        assert_eq!(
            rt.client_ip(ip("10.0.0.1"), &xff(&["10.0.0.2"])),
            ip("10.0.0.2")
        );
        assert_eq!(rt.client_ip(ip("10.0.0.1"), &xff(&[])), ip("10.0.0.1"));
        // A malformed hop: nothing left of it is believed.
        let forged = xff(&["203.0.113.9, garbage, 198.51.100.4"]);
        assert_eq!(rt.client_ip(ip("10.0.0.1"), &forged), ip("198.51.100.4"));
        let forged = xff(&["203.0.113.9, 198.51.100.4, garbage"]);
        assert_eq!(rt.client_ip(ip("10.0.0.1"), &forged), ip("10.0.0.1"));
        // IPv6 works the same way.
        assert_eq!(
            rt.client_ip(ip("10.0.0.1"), &xff(&["2001:db8::7"])),
            ip("2001:db8::7")
        );
    }

    #[tokio::test]
    async fn exact_routes_win_over_prefixes_and_the_longest_prefix_wins() {
        let mut c = GatewayConfig::parse(crate::deploy::REFERENCE_CONFIG).unwrap();
        let mut extra = c.routes[3].clone();
        extra.prefix = Some("/static/big/".into());
        c.routes.push(extra);
        let rt = Runtime::build(c, 1, None).unwrap();
        let key = |p: &str| {
            rt.route(p)
                .map(|r| r.config.path.clone().or(r.config.prefix.clone()).unwrap())
        };
        assert_eq!(key("/api/room").as_deref(), Some("/api/room"));
        assert_eq!(key("/api/room/enter").as_deref(), Some("/api/room/enter"));
        assert_eq!(key("/static/a.png").as_deref(), Some("/static/"));
        assert_eq!(key("/static/big/b.mp4").as_deref(), Some("/static/big/"));
        assert_eq!(key("/api/rooms/x"), None);
        assert_eq!(key("/"), None);
    }
}
