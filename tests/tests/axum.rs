//! floodwall in an axum router, served on a real loopback socket, with no
//! `HandleErrorLayer`: `AnswerLayer` makes the stack infallible. A client
//! above its per-IP quota gets 429 with `Retry-After` and the RateLimit
//! fields while another client gets 200, and a hanging handler gets 504 at
//! its deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall::http::answer::AnswerLayer;
use floodwall::http::client_ip::ClientIp;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

async fn serve() -> SocketAddr {
    let per_ip = TokenBucketLayer::builder(Quota::per_hour(1).unwrap().with_burst(2).unwrap())
        .name("per_ip")
        .build_keyed(ClientIp::peer().extractor::<axum::body::Body>())
        .unwrap();
    let deadline = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(AnswerLayer::new())
                .layer(deadline)
                .layer(per_ip),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn get_from(local: [u8; 4], url: String) -> http::Response<Bytes> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local.into()));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let res = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .expect("answered within 5 s")
        .expect("a response");
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_answers_rejections_without_handle_error_layer() {
    let addr = serve().await;
    let hello = format!("http://{addr}/hello");
    for _ in 0..2 {
        let res = get_from([127, 0, 0, 1], hello.clone()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), "hi");
    }
    let limited = get_from([127, 0, 0, 1], hello.clone()).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = limited.headers();
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(h.contains_key("ratelimit-policy"), "{h:?}");
    assert!(h.contains_key("ratelimit"), "{h:?}");
    // Another client (its own address) has its own quota.
    assert_eq!(
        get_from([127, 0, 0, 2], hello).await.status(),
        StatusCode::OK
    );
    // A hanging handler is answered 504 at its 300 ms deadline.
    let t0 = Instant::now();
    let hang = get_from([127, 0, 0, 3], format!("http://{addr}/hang")).await;
    assert_eq!(hang.status(), StatusCode::GATEWAY_TIMEOUT);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}
