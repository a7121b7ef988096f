//! Client and server layers composed over loopback: a server limited by a
//! sliding window answers 429 with `Retry-After`; a client with adaptive
//! throttling and a budgeted retry layer honours it.

mod common;

use common::{Protocol, client, get};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::HttpClassifier;
use floodwall::http::HttpRejectionLayer;
use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode};
use floodwall::throttle::{
    NO_RETRY_HEADER, RetryBudget, RetryConfig, RetryHttp, RetryLayer, SplitMix, ThrottleConfig,
    ThrottleLayer,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// A server allowing `limit` requests per second (exact log), counting the
/// requests that reach its handler.
async fn limited_server(limit: u32, handled: Arc<AtomicU32>) -> SocketAddr {
    let stack = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(
            SlidingWindowLayer::builder(
                SlidingWindowConfig::from(Window::new(limit, Duration::from_secs(1)).unwrap())
                    .mode(WindowMode::Log),
            )
            .name("rooms")
            .build()
            .unwrap(),
        )
        .service(service_fn(move |_: Request<Incoming>| {
            handled.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("room"))) }
        }));
    common::serve(stack, Protocol::Http1).await
}

#[tokio::test]
async fn the_client_retries_after_the_servers_retry_after() {
    let handled = Arc::new(AtomicU32::new(0));
    let addr = limited_server(1, handled.clone()).await;
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder(RetryConfig::default())
                .budget(budget.clone())
                .policy(RetryHttp)
                .rng(SplitMix::new(1))
                .build()
                .unwrap(),
        )
        .service(client(addr));
    // The first request takes the window's only slot; the second is refused
    // with Retry-After: 1 and retried a second later, successfully.
    let first = svc.clone().oneshot(get(addr)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let second = svc.clone().oneshot(get(addr)).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After"
    );
    assert_eq!(handled.load(Ordering::Relaxed), 2);
    assert!(
        (budget.tokens() - 9.1).abs() < 1e-9,
        "full at 10, one failure (9), one success after it (9.1)"
    );
}

#[tokio::test]
async fn a_throttled_client_stops_sending_to_a_refusing_server() {
    let handled = Arc::new(AtomicU32::new(0));
    let addr = limited_server(1, handled.clone()).await;
    let throttle = ThrottleLayer::builder(ThrottleConfig::default())
        .classify(HttpClassifier)
        .rng(SplitMix::new(2))
        .build()
        .unwrap();
    let stats = throttle.handle();
    // No retries here: every 429 is a refusal the throttle sees.
    let retry = RetryLayer::builder(RetryConfig {
        max_attempts: 1,
        ..RetryConfig::default()
    })
    .policy(RetryHttp)
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(retry)
        .layer(throttle)
        .service(client(addr));
    let (mut sent_ok, mut refused, mut throttled) = (0, 0, 0);
    for _ in 0..60 {
        match svc.clone().oneshot(get(addr)).await {
            Ok(res) if res.status() == StatusCode::OK => sent_ok += 1,
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(
                    res.headers()[NO_RETRY_HEADER],
                    "1",
                    "marked for callers above"
                );
                refused += 1;
            }
            Err(_) => throttled += 1,
        }
    }
    let s = stats.stats(None);
    assert_eq!(s.requests, 60);
    assert_eq!(s.accepts, sent_ok);
    assert!(throttled > 0, "the client started dropping locally");
    assert_eq!(handled.load(Ordering::Relaxed) as u64, sent_ok);
    assert_eq!(sent_ok + refused + throttled, 60);
}
