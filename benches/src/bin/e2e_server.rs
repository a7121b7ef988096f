//! A minimal HTTP server for `benches/e2e/run.sh`: hyper or axum, bare or
//! behind a protection stack, answering `GET /` with a short body. The
//! script pins it to one core and drives it with `wrk` and `h2load` from
//! another, reading its CPU time from `/proc`.
//!
//! ```text
//! e2e_server <hyper|axum> <bare|floodwall|peer> [port]
//! e2e_server proxy <bare|layers-off|gateway>
//! ```
//!
//! - `floodwall`: the recommended server stack (docs/choosing.md): the
//!   HTTP mapping, the server deadline, a per-client-IP token bucket and
//!   the CoDel admission queue.
//! - `peer`: what a user would otherwise pick: tower_governor per IP,
//!   tower's `Timeout`, `LoadShed` + `ConcurrencyLimit`.
//!
//! - `proxy`: a reverse proxy toward an upstream in the same process (the
//!   examples' `Downstream`, answering at once): the bare hyper proxy, the
//!   reference gateway with its layers off, or with every layer on
//!   (`floodwall_benches::proxy`).
//!
//! Limits are set far above what the benchmark offers: the cost measured
//! is the layers' own, nothing is refused. One worker thread (the script
//! pins the process to one core). Prints `listening on ADDR`, then serves
//! until killed.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::core::BoxError;
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall::http::answer::AnswerLayer;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use floodwall_benches::proxy;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// axum's body for every stack: tower_governor answers its refusals in it.
type Body = axum::body::Body;

const BODY: &str = "hello from e2e\n";
/// Far above any offered load: nothing is refused.
const OPEN_RATE: u32 = 100_000_000;
/// Concurrent requests the queues and limits allow.
const WORKERS: usize = 1_024;

async fn hello<B>(_req: Request<B>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from(BODY)))
}

/// The client's IP, from the peer address the accept loop (hyper) or
/// axum's `ConnectInfo` put in the request.
fn client_ip<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<SocketAddr>()
        .or_else(|| {
            req.extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| &c.0)
        })
        .map(SocketAddr::ip)
}

/// tower_governor's key: the same peer address.
#[derive(Clone, Copy, Debug)]
struct PeerIp;

impl tower_governor::key_extractor::KeyExtractor for PeerIp {
    type Key = std::net::IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        req.extensions()
            .get::<SocketAddr>()
            .or_else(|| {
                req.extensions()
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|c| &c.0)
            })
            .map(SocketAddr::ip)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The recommended stack over `hello`, before its errors are answered.
fn floodwall_layers<B: Send + 'static>() -> Result<
    impl tower::Service<Request<B>, Response = Response<Body>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
    BoxError,
> {
    let quota = Quota::per_second(OPEN_RATE)?.with_burst(OPEN_RATE)?;
    Ok(ServiceBuilder::new()
        .layer(ServerDeadlineLayer::new(ServerDeadlineConfig {
            max: Some(Duration::from_secs(2)),
            ..ServerDeadlineConfig::default()
        })?)
        .layer(
            TokenBucketLayer::builder(quota)
                .name("per_ip")
                .capacity(100_000)
                .build_keyed(client_ip::<B>)?,
        )
        .layer(CodelLayer::new(CodelConfig::with_workers(WORKERS))?)
        .service(service_fn(hello::<B>)))
}

/// The peer stack over `hello`, before its errors are answered.
fn peer_layers<B: Send + 'static>() -> Result<
    impl tower::Service<Request<B>, Response = Response<Body>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
    BoxError,
> {
    let governor = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(PeerIp)
        .finish()
        .ok_or("a governor config")?;
    Ok(ServiceBuilder::new()
        .layer(tower_governor::GovernorLayer::<_, _, Body>::new(governor))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::ConcurrencyLimitLayer::new(WORKERS))
        .service(service_fn(hello::<B>)))
}

/// The service for `stack`, infallible as both servers take it: floodwall
/// answers every error itself (`AnswerLayer`); the peers go through axum's
/// `HandleErrorLayer`, as their users write it.
fn stack<B: Send + 'static>(
    stack: &str,
) -> Result<BoxCloneSyncService<Request<B>, Response<Body>, Infallible>, BoxError> {
    Ok(match stack {
        "bare" => BoxCloneSyncService::new(service_fn(hello::<B>)),
        "floodwall" => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(AnswerLayer::new())
                .service(floodwall_layers::<B>()?),
        ),
        "peer" => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: BoxError| async { (http::StatusCode::SERVICE_UNAVAILABLE, "unavailable") },
                ))
                .service(peer_layers::<B>()?),
        ),
        other => return Err(format!("stack {other:?}: bare, floodwall or peer").into()),
    })
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_default();
    let which = args.next().unwrap_or_default();
    let port: u16 = args.next().map_or(Ok(0), |p| p.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        match server.as_str() {
            "hyper" => {
                let svc = stack::<Incoming>(&which)?;
                println!("listening on {}", listener.local_addr()?);
                serve_hyper(listener, svc).await
            }
            "axum" => {
                let svc = stack::<axum::body::Body>(&which)?;
                println!("listening on {}", listener.local_addr()?);
                // Routed, as an axum app is written (and the examples apply
                // floodwall): axum stamps the matched path, the original URI,
                // the path parameters and the peer's address before the
                // stack runs. (A fallback-only router stamps no matched path:
                // there the stack's own extension is the fourth, and pays for
                // growing the request's extension table, docs/performance.md.)
                let app = axum::Router::new().route_service("/", svc);
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await?;
                Ok(())
            }
            "proxy" => {
                drop(listener);
                let upstream =
                    floodwall_examples::downstream::Downstream::start("upstream", Duration::ZERO)
                        .await?;
                let url = upstream.url();
                let addr = match which.as_str() {
                    "bare" => proxy::bare_proxy(url.trim_start_matches("http://").parse()?).await?,
                    "layers-off" | "gateway" => {
                        let config = proxy::gateway_config(&url, which == "gateway")?;
                        let gateway =
                            floodwall_examples::gateway::Gateway::start(config, None).await?;
                        let addr = gateway.addr();
                        // Serves until the process is killed.
                        std::mem::forget(gateway);
                        addr
                    }
                    other => {
                        return Err(format!("proxy {other:?}: bare, layers-off or gateway").into());
                    }
                };
                println!("listening on {addr}");
                std::future::pending::<()>().await;
                drop(upstream);
                Ok(())
            }
            other => Err(format!("server {other:?}: hyper, axum or proxy").into()),
        }
    })
}

/// hyper: HTTP/1.1 and HTTP/2 (prior knowledge) on one port; the peer
/// address in each request's extensions.
async fn serve_hyper(
    listener: TcpListener,
    svc: BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>,
) -> Result<(), BoxError> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let svc = svc.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer);
            req
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
}
