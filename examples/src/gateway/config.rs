//! The gateway's configuration: a TOML file, validated as a whole before
//! anything uses it.
//!
//! ```toml
//! [gateway]
//! trusted_proxies = ["127.0.0.1"]     # peers (addresses or CIDRs) whose X-Forwarded-For is believed
//!
//! [per_ip]                            # one token bucket per client IP
//! quota = { rate = 20, burst = 40 }
//!
//! [upstreams.room]
//! kind = "grpc"
//! url = "http://127.0.0.1:50051"
//! timeout = "400ms"
//! breaker = { window = { count = 20 }, minimum_calls = 10, open_duration = "1s" }
//!
//! [[routes]]
//! path = "/api/room/enter"            # exact path (hash map); or `prefix = "/static/"`
//! handler = "enter_room"
//! upstream = "room"
//! timeout = "500ms"
//! priority = 2                        # DAGOR business priority, lower = more important
//! limit = { quota = { rate = 300, burst = 60 } }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use floodwall::breaker::BreakerConfig;
use floodwall::redis::RedisLimiterConfig;
use floodwall::throttle::ThrottleConfig;
use floodwall::token_bucket::TokenBucketConfig;
use serde::Deserialize;

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listeners and edge settings.
    #[serde(default)]
    pub gateway: Settings,
    /// The per-client-IP token bucket; none means no per-IP limit.
    #[serde(default)]
    pub per_ip: Option<TokenBucketConfig>,
    /// Upstreams by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The route table.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Listeners and edge settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The data port. Default `127.0.0.1:8080`. Read at start only.
    pub listen: SocketAddr,
    /// The admin port (state, metrics, reload). Default `127.0.0.1:9090`,
    /// loopback only. Read at start only.
    pub admin: SocketAddr,
    /// Peers whose `X-Forwarded-For` names the client. Default none: the
    /// client is always the socket peer.
    pub trusted_proxies: Vec<floodwall::http::client_ip::Cidr>,
    /// The header naming the user, hashed into the DAGOR user priority.
    /// Default `x-user-id`.
    pub user_header: String,
    /// The business priority of requests no route names. Default 10.
    pub default_priority: u8,
    /// The user-priority hash key seed, the same on every gateway and
    /// secret: prefer `FLOODWALL_KEY_SEED` in the environment, which
    /// overrides this. Default: a random key per process.
    pub key_seed: Option<u64>,
    /// Every floodwall layer in place (default). `false` routes and proxies
    /// with no protection at all, for comparison.
    pub protected: bool,
    /// The Redis that routes' `global_limit`s share with every other
    /// gateway instance, as a redis-rs URL
    /// (`redis://[user:password@]host[:port][/db]`, `rediss://` for TLS).
    /// Default none.
    pub redis: Option<String>,
    /// The bearer token the admin port requires (`Authorization: Bearer
    /// TOKEN`), or the name of a file holding it when it starts with `@`
    /// (`"@/run/secrets/admin"`); `FLOODWALL_ADMIN_TOKEN` in the
    /// environment overrides it. Without a token the admin port must be on
    /// loopback. Default none. Read at start only.
    pub admin_token: Option<String>,
    /// The most data-port connections open at once; past it the gateway
    /// stops accepting until one closes. Default 10,000. Read at start only.
    pub max_connections: usize,
    /// How long a client may take to send a request head; slower clients
    /// are disconnected (slowloris). Default 10 s. Read at start only.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may stay without a byte moving either way (a
    /// keep-alive connection parked between requests); must exceed every
    /// route's timeout, so that no answer in the making is cut. Default
    /// 60 s. Read at start only.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            trusted_proxies: Vec::new(),
            user_header: "x-user-id".to_owned(),
            default_priority: 10,
            key_seed: None,
            protected: true,
            redis: None,
            admin_token: None,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// The room service's gRPC API.
    Grpc,
    /// Plain HTTP/1.1.
    Http,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `grpc` (a room service) or `http`.
    pub kind: UpstreamKind,
    /// Base URL, `http://host:port`.
    pub url: String,
    /// Longest time one call may take (it also caps the propagated
    /// deadline). Default 1 s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub timeout: Duration,
    /// A circuit breaker in front of the upstream.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// SRE adaptive throttling toward the upstream.
    #[serde(default)]
    pub throttle: Option<ThrottleConfig>,
    /// Drop locally what the upstream's advertised admission level would
    /// refuse (DAGOR collaborative admission). Default true.
    #[serde(default = "yes")]
    pub collaborative: bool,
}

/// What a route does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// `GET ?id=N&fields=a,b` → `Room/GetRoom` with a field mask.
    GetRoom,
    /// `POST ?id=N` → `Room/EnterRoom`, plus the route's optional modules
    /// called concurrently; a failed optional module is left out.
    EnterRoom,
    /// `GET ?ids=1,2,3&fields=a,b` → `Room/BatchGetRooms`.
    BatchRooms,
    /// Forwards the request to an HTTP upstream as it is.
    Proxy,
    /// `POST ?anchor=N&count=C` (count 1 to 1,000, default 1): gifts to one
    /// anchor within the route's aggregation window are merged into one
    /// `POST /send?anchor=N&count=SUM` to the HTTP upstream, and every
    /// sender is answered when that write lands.
    SendGift,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// An exact path, matched in a hash map.
    #[serde(default)]
    pub path: Option<String>,
    /// A path prefix; the longest matching prefix wins. Exact paths win
    /// over prefixes.
    #[serde(default)]
    pub prefix: Option<String>,
    /// What the route does.
    pub handler: HandlerKind,
    /// The upstream's name.
    pub upstream: String,
    /// The route's deadline: a client's `grpc-timeout` may shorten it, never
    /// lengthen it. Default 1 s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub timeout: Duration,
    /// DAGOR business priority (lower = more important). Default: the
    /// gateway's `default_priority`.
    #[serde(default)]
    pub priority: Option<u8>,
    /// A token bucket for the whole route.
    #[serde(default)]
    pub limit: Option<TokenBucketConfig>,
    /// A per-user limit shared by every gateway instance through
    /// `gateway.redis` (keyed by the user header, else the client IP).
    #[serde(default)]
    pub global_limit: Option<RedisLimiterConfig>,
    /// Requests above this rate go to a secondary upstream instead.
    #[serde(default)]
    pub overflow: Option<OverflowConfig>,
    /// For `enter_room`: HTTP upstreams called alongside, left out of the
    /// answer when they fail or are shed.
    #[serde(default)]
    pub optional: Vec<String>,
    /// For `send_gift`: how gifts are aggregated (`window`, `max_batch`,
    /// `max_keys`). Default: 20 ms windows.
    #[serde(default)]
    pub aggregate: Option<floodwall::hotkey::AggregateConfig>,
    /// For `get_room`: find the hot rooms (HeavyKeeper) and answer them
    /// from a local cache, a hot room reaching the room service at most
    /// once per `ttl`.
    #[serde(default)]
    pub hot: Option<HotRouteConfig>,
}

/// Hot-room detection and caching on a `get_room` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotRouteConfig {
    /// A room (with its field list) is hot at this many requests in about
    /// the last second (the sketch halves its counts every 500 ms).
    /// Default 50.
    #[serde(default = "fifty")]
    pub min_count: u32,
    /// How long a hot room's answer is served from the cache. Default 1 s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub ttl: Duration,
    /// Hot rooms tracked at once. Default 20.
    #[serde(default = "twenty")]
    pub k: usize,
}

fn fifty() -> u32 {
    50
}

fn twenty() -> usize {
    20
}

/// Overflow routing: the primary upstream takes `rate` per second (in
/// bursts of `burst`), the rest goes to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverflowConfig {
    /// Requests per second the primary upstream gets.
    pub rate: u32,
    /// Burst the primary absorbs. Default: `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// The secondary ("elastic pool") upstream.
    pub upstream: String,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn yes() -> bool {
    true
}

/// Why a configuration was refused. The message names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid gateway config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl GatewayConfig {
    /// Parses and validates a TOML document.
    ///
    /// # Errors
    /// A TOML syntax or type error, or the first rule the config breaks.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: GatewayConfig =
            toml::from_str(text).map_err(|e| ConfigError::new(e.to_string().trim_end()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    ///
    /// # Errors
    /// As [`parse`](Self::parse), or the file cannot be read.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Checks every rule: routes name one path or prefix, no route is
    /// defined twice, upstreams exist and speak what their routes need,
    /// limits, breakers and throttles are valid.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = self
            .routes
            .iter()
            .find(|r| r.timeout >= self.gateway.idle_timeout)
        {
            return Err(ConfigError::new(format!(
                "gateway: idle_timeout ({:?}) must exceed every route timeout ({:?} on {})",
                self.gateway.idle_timeout,
                r.timeout,
                r.path
                    .as_deref()
                    .or(r.prefix.as_deref())
                    .unwrap_or("a route")
            )));
        }
        if floodwall::core::config::check_duration("", self.gateway.idle_timeout).is_err() {
            return Err(ConfigError::new(
                "gateway: idle_timeout must be at most 365 days",
            ));
        }
        if self.gateway.max_connections == 0 {
            return Err(ConfigError::new(
                "gateway: max_connections must be at least 1",
            ));
        }
        if self.gateway.header_read_timeout.is_zero()
            || floodwall::core::config::check_duration("", self.gateway.header_read_timeout)
                .is_err()
        {
            return Err(ConfigError::new(
                "gateway: header_read_timeout must be above zero and at most 365 days",
            ));
        }
        if self
            .per_ip
            .as_ref()
            .is_some_and(|per_ip| per_ip.capacity == 0)
        {
            return Err(ConfigError::new("per_ip: capacity must be at least 1"));
        }
        for (name, up) in &self.upstreams {
            let at = |e: &dyn fmt::Display| ConfigError::new(format!("upstreams.{name}: {e}"));
            let uri: http::Uri = up.url.parse().map_err(|e| at(&e))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(at(&format!("url {:?} must be http://host:port", up.url)));
            }
            if up.timeout.is_zero() {
                return Err(at(&"timeout must be above zero"));
            }
            if let Some(b) = &up.breaker {
                b.validate().map_err(|e| at(&format!("breaker: {e}")))?;
            }
            if let Some(t) = &up.throttle {
                t.validate().map_err(|e| at(&format!("throttle: {e}")))?;
            }
        }
        let mut paths = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let label = route
                .path
                .as_deref()
                .or(route.prefix.as_deref())
                .unwrap_or("?");
            let at = |e: &dyn fmt::Display| ConfigError::new(format!("routes[{i}] ({label}): {e}"));
            if let Some(global) = &route.global_limit {
                match &self.gateway.redis {
                    None => return Err(at(&"global_limit needs gateway.redis")),
                    Some(url) => {
                        if let Err(err) = floodwall::redis::RedisConnection::open(url) {
                            // The URL may hold a password: name the problem only.
                            let kind = err.kind();
                            return Err(ConfigError::new(format!(
                                "gateway.redis: not a usable redis URL ({kind:?})"
                            )));
                        }
                    }
                }
                if global.timeout.is_zero() {
                    return Err(at(&"global_limit: timeout must be above zero"));
                }
            }
            match (&route.path, &route.prefix) {
                (Some(p), None) => {
                    if !p.starts_with('/') {
                        return Err(at(&"path must start with '/'"));
                    }
                    if !paths.insert(p.as_str()) {
                        return Err(at(&"path defined twice"));
                    }
                }
                (None, Some(p)) => {
                    if !p.starts_with('/') {
                        return Err(at(&"prefix must start with '/'"));
                    }
                    if !prefixes.insert(p.as_str()) {
                        return Err(at(&"prefix defined twice"));
                    }
                }
                _ => return Err(at(&"give exactly one of `path` and `prefix`")),
            }
            if route.timeout.is_zero() {
                return Err(at(&"timeout must be above zero"));
            }
            if let Some(b) = route.priority
                && b > 127
            {
                return Err(at(&format!("priority {b} is above 127")));
            }
            let wanted = match route.handler {
                HandlerKind::Proxy | HandlerKind::SendGift => UpstreamKind::Http,
                _ => UpstreamKind::Grpc,
            };
            let kind_of = |name: &str| -> Result<UpstreamKind, ConfigError> {
                self.upstreams
                    .get(name)
                    .map(|u| u.kind)
                    .ok_or_else(|| at(&format!("unknown upstream {name:?}")))
            };
            if kind_of(&route.upstream)? != wanted {
                return Err(at(&format!(
                    "handler {:?} needs a {wanted:?} upstream, {:?} is not",
                    route.handler, route.upstream
                )));
            }
            if let Some(o) = &route.overflow {
                if o.rate == 0 || o.burst == Some(0) {
                    return Err(at(&"overflow rate and burst must be above zero"));
                }
                if kind_of(&o.upstream)? != wanted {
                    return Err(at(&format!(
                        "overflow upstream {:?} must be {wanted:?} like the primary",
                        o.upstream
                    )));
                }
            }
            if let Some(a) = &route.aggregate {
                if route.handler != HandlerKind::SendGift {
                    return Err(at(&"only send_gift routes aggregate"));
                }
                a.validate().map_err(|e| at(&format!("aggregate: {e}")))?;
            }
            if let Some(hot) = &route.hot {
                if route.handler != HandlerKind::GetRoom {
                    return Err(at(&"only get_room routes cache hot rooms"));
                }
                if hot.min_count == 0 || hot.k == 0 || hot.ttl.is_zero() {
                    return Err(at(&"hot: min_count, k and ttl must be above zero"));
                }
            }
            if !route.optional.is_empty() && route.handler != HandlerKind::EnterRoom {
                return Err(at(&"only enter_room routes have optional modules"));
            }
            for m in &route.optional {
                if kind_of(m)? != UpstreamKind::Http {
                    return Err(at(&format!(
                        "optional module {m:?} must be an http upstream"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[upstreams.room]
kind = "grpc"
url = "http://127.0.0.1:1"

[upstreams.cdn]
kind = "http"
url = "http://127.0.0.1:2"
"#;

    fn error_of(routes: &str) -> String {
        GatewayConfig::parse(&format!("{BASE}{routes}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_reference_config_is_valid() {
        let c = GatewayConfig::parse(crate::deploy::REFERENCE_CONFIG).unwrap();
        assert_eq!(c.routes.len(), 5);
        assert_eq!(c.upstreams["room"].timeout, Duration::from_millis(400));
    }

    #[test]
    fn bad_routes_are_refused_naming_the_route() {
        let cases = [
            (
                "[[routes]]\nhandler = \"get_room\"\nupstream = \"room\"\n",
                "routes[0] (?): give exactly one of `path` and `prefix`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nprefix = \"/b\"\nhandler = \"get_room\"\nupstream = \"room\"\n",
                "give exactly one",
            ),
            (
                "[[routes]]\npath = \"a\"\nhandler = \"get_room\"\nupstream = \"room\"\n",
                "must start with '/'",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\n[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\n",
                "routes[1] (/a): path defined twice",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"proxy\"\nupstream = \"room\"\n",
                "needs a Http upstream",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"nope\"\n",
                "unknown upstream \"nope\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\ntimeout = \"0s\"\n",
                "timeout must be above zero",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\npriority = 200\n",
                "priority 200 is above 127",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\noptional = [\"cdn\"]\n",
                "only enter_room routes have optional modules",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"enter_room\"\nupstream = \"room\"\nhot = {}\n",
                "only get_room routes cache hot rooms",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\nhot = { min_count = 0 }\n",
                "hot: min_count, k and ttl must be above zero",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\noverflow = { rate = 5, upstream = \"cdn\" }\n",
                "must be Grpc like the primary",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\nlimit = { quota = { rate = 0 } }\n",
                "rate must be positive",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"teleport\"\nupstream = \"room\"\n",
                "unknown variant `teleport`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhandler = \"get_room\"\nupstream = \"room\"\nglobal_limit = { quota = { rate = 5 } }\n",
                "routes[0] (/a): global_limit needs gateway.redis",
            ),
        ];
        for (routes, expect) in cases {
            let e = error_of(routes);
            assert!(e.contains(expect), "{routes}\n→ {e}\n(expected {expect:?})");
        }
    }

    #[test]
    fn bad_upstreams_are_refused() {
        let e = GatewayConfig::parse("[upstreams.x]\nkind = \"http\"\nurl = \"ftp://h:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams.x: url \"ftp://h:1\" must be http://host:port"),
            "{e}"
        );
        let e = GatewayConfig::parse(
            "[upstreams.x]\nkind = \"grpc\"\nurl = \"http://h:1\"\nbreaker = { failure_rate_threshold = 150.0 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstreams.x: breaker:"), "{e}");
        let e = GatewayConfig::parse("[gateway]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
