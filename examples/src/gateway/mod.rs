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
mod route;
mod runtime;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::{BoxError, Rejected};
use floodwall::http::Respond;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, GatewayConfig};
use conn::{ServeLimits, bind, serve};
use data::DataPlane;
pub(crate) use data::upstream_failure;
pub use runtime::Runtime;

use crate::tally::{Tally, TallySnapshot};

/// The header naming why the gateway refused or could not serve a request:
/// a floodwall rejection kind (`rate_limited`, `overloaded`, `prioritized`,
/// `circuit_open`, `throttled`, `deadline_exceeded`) or an upstream failure
/// (`upstream_unavailable`, `upstream_error`).
pub const REASON_HEADER: &str = "x-floodwall-reason";

/// The key per-client limits count under, on a request when such a limit is
/// configured (the per-IP limit, a route's global limit): the client IP, an
/// IPv6 client by its /64 (one host cannot mint a bucket per address). Read
/// it with [`ClientKey::of`]: it rides in the extension that carries the
/// connection's peer, not in one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKey(pub IpAddr);

impl ClientKey {
    /// The client key the gateway put on a request, if a layer keys by it.
    pub fn of(extensions: &http::Extensions) -> Option<ClientKey> {
        extensions.get::<conn::Peer>().and_then(|p| p.key)
    }
}

/// A response body the gateway produces: small, fully buffered.
pub type Body = Full<Bytes>;

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

/// `svc` made ready and called with `req`, its answer awaited: what
/// `ServiceExt::oneshot` does, inside the caller's own future. A `Oneshot`
/// holds the service and the request in a state of its own and moves them
/// out again on its first poll; here they stay where the caller's future
/// put them, and the service is dropped as soon as it has been called.
pub(crate) async fn call_once<S, R>(mut svc: S, req: R) -> Result<S::Response, S::Error>
where
    S: tower::Service<R>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    let answer = svc.call(req);
    drop(svc);
    answer.await
}
