//! A configuration built into what serves it: the routes (exact paths, then
//! prefixes longest first), the upstreams, the per-IP limit, and the client
//! address rules; replaced whole on reload, keeping the live state of what
//! a reload did not change.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use floodwall::core::BoxError;
use floodwall::core::key::BoundedKey;
use floodwall::hotkey::{HotCacheHandle, HotKeyHandle};
use floodwall::priority::{AssignConfig, AssignPriorityLayer, BusinessTable};
use floodwall::redis::{RedisConnection, RedisLimiter};
use floodwall::token_bucket::{TokenBucket, TokenBucketLayer};
use http::Request;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::config::{self, ConfigError, GatewayConfig};
use super::handler::RouteHandler;
use super::route::{
    LeanRouteService, PerIpLayer, RouteService, build_route, client_ip_of, key_seed,
};
use super::upstream::Upstream;

/// One route, built from its config.
pub(super) struct Route {
    pub(super) config: config::RouteConfig,
    /// What the data plane calls.
    pub(super) stack: RouteStack,
    /// Hot-room detection and its cache (`get_room` routes with `hot`).
    pub(super) hot: Option<(HotKeyHandle<String>, HotCacheHandle)>,
    pub(super) limit:
        Option<floodwall::token_bucket::RateLimitHandle<floodwall::token_bucket::TokenBucket>>,
    pub(super) global: Option<RedisLimiter<BoundedKey>>,
    pub(super) overflow: Option<Arc<TokenBucket>>,
}

/// What the data plane calls for a route.
#[derive(Clone)]
pub(super) enum RouteStack {
    /// The route's layers in front of its handler (boxed: the largest
    /// variant, on the routes with a global limit or hot-room layers).
    Protected(Box<RouteService>),
    /// The route's layers without the global limit and hot-room layers.
    Lean(LeanRouteService),
    /// The layers off: the handler itself, called directly.
    Direct(RouteHandler),
}

/// Everything one configuration builds. Replaced whole on reload.
pub struct Runtime {
    pub(super) config: GatewayConfig,
    pub(super) version: u64,
    pub(super) upstreams: BTreeMap<String, (config::UpstreamConfig, Upstream)>,
    pub(super) exact: HashMap<String, Arc<Route>>,
    /// Longest first.
    pub(super) prefixes: Vec<(String, Arc<Route>)>,
    pub(super) per_ip: Option<PerIpLayer>,
    /// Whether a layer reads [`ClientKey`] (the per-IP limit, a route's
    /// global limit): only then is it put in the request's extensions.
    pub(super) keys_clients: bool,
    pub(super) client_ip: floodwall::http::client_ip::ClientIp,
    /// The header naming the user: believed only from trusted proxies.
    pub(super) user_header: http::HeaderName,
    /// Limit changes found by [`build`](Self::build) on layers the
    /// previous runtime shares with this one, applied by `commit` once the
    /// whole runtime is built (a refused configuration changes nothing).
    pub(super) pending: parking_lot::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The connection routes' global limits share (kept across reloads
    /// while `gateway.redis` is unchanged).
    /// The URL it was made from, to tell whether a reload changed it.
    pub(super) redis: Option<(String, RedisConnection)>,
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
                    stack: old.stack.clone(),
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

    pub(super) fn route(&self, path: &str) -> Option<&Arc<Route>> {
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
    use http::HeaderValue;

    pub(super) fn runtime(trusted: &[&str]) -> Runtime {
        let mut c = GatewayConfig::parse(crate::deploy::REFERENCE_CONFIG).unwrap();
        c.gateway.trusted_proxies = trusted.iter().map(|t| t.parse().unwrap()).collect();
        Runtime::build(c, 1, None).unwrap()
    }

    pub(super) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(super) fn xff(values: &[&str]) -> http::HeaderMap {
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
