//! floodwall in an axum application, served on 127.0.0.1 and exercised by
//! a few clients in the same program, then exits:
//!
//! - `AnswerLayer` outermost: the stack is infallible, no `HandleErrorLayer`;
//! - a per-client-IP token bucket keyed from axum's `ConnectInfo`;
//! - a limit shared by the `/api` routes (`route_layer` clones one layer
//!   value into each route: one state);
//! - a server deadline (504 when a handler overruns it) and a CoDel queue;
//! - a circuit breaker on the outbound client `/api/upstream` uses.
//!
//! Run: `cargo run -p floodwall-examples --bin axum_app`

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall::breaker::{BreakerConfig, BreakerLayer, WindowKind};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::core::BoxError;
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall::http::answer::AnswerLayer;
use floodwall::http::client_ip::ClientIp;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// The outbound dependency, behind a breaker: here a stand-in that always
/// fails, so the breaker opens and answers for it.
type Upstream = BoxCloneSyncService<(), &'static str, BoxError>;

async fn call_upstream(
    State(upstream): State<Upstream>,
) -> Result<&'static str, (StatusCode, String)> {
    upstream.oneshot(()).await.map_err(|e| {
        let status = match floodwall::core::Rejected::find(&*e) {
            Some(_) => StatusCode::SERVICE_UNAVAILABLE, // the breaker answered
            None => StatusCode::BAD_GATEWAY,            // the dependency failed
        };
        (status, status.canonical_reason().unwrap_or("").to_owned())
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream: Upstream = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(BreakerLayer::new(BreakerConfig {
                window: WindowKind::Count(4),
                minimum_calls: 4,
                failure_rate_threshold: 50.0,
                open_duration: Duration::from_secs(30),
                ..BreakerConfig::default()
            })?)
            .service(service_fn(|()| async {
                Err::<&'static str, BoxError>("connection refused".into())
            })),
    );
    // One layer value, cloned into each /api route by route_layer: one limit.
    let api_limit = TokenBucketLayer::builder(Quota::per_second(5)?.with_burst(5)?)
        .name("api")
        .build()?;
    let api = Router::new()
        .route("/api/hello", get(|| async { "hello" }))
        .route("/api/upstream", get(call_upstream))
        // route_layer wants infallible services too: answer the limit's
        // refusals right there.
        .route_layer(
            ServiceBuilder::new()
                .layer(AnswerLayer::new())
                .layer(api_limit),
        )
        .with_state(upstream);
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .route("/", get(|| async { "home" }))
        .merge(api)
        .layer(
            ServiceBuilder::new()
                .layer(AnswerLayer::new())
                .layer(ServerDeadlineLayer::new(ServerDeadlineConfig {
                    max: Some(Duration::from_millis(200)),
                    ..Default::default()
                })?)
                .layer(
                    TokenBucketLayer::builder(Quota::per_second(50)?.with_burst(20)?)
                        .name("per_ip")
                        .build_keyed(ClientIp::peer().extractor::<axum::body::Body>())?,
                )
                .layer(CodelLayer::new(CodelConfig::with_workers(64))?),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    println!("axum app on http://{addr}");

    let get = |path: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        Ok::<_, BoxError>(sender.send_request(req).await?.status())
    };
    let mut api = Vec::new();
    for _ in 0..8 {
        api.push(get("/api/hello").await?.as_u16());
    }
    println!("/api/hello ×8 (shared /api limit, burst 5): {api:?}");
    println!("/ (not under the /api limit): {}", get("/").await?);
    println!("/slow (200 ms deadline): {}", get("/slow").await?);
    tokio::time::sleep(Duration::from_secs(1)).await; // the /api bucket refills
    let mut upstream = Vec::new();
    for _ in 0..5 {
        upstream.push(get("/api/upstream").await?.as_u16());
    }
    println!("/api/upstream ×5 (failing dependency, breaker opens after 4): {upstream:?}");
    Ok(())
}
