//! Deadline propagation end to end over hyper HTTP/1 on loopback, under
//! virtual time: three real servers, each handler calling the next through
//! the client layer with the `x-request-timeout-ms` header. The SRE book's
//! 30 s → 23 s → 19 s, and a hop reached with no time left answering 504
//! without running its handler.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Protocol, client, get, serve};
use floodwall::core::BoxError;
use floodwall::deadline::{
    PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    Wire, current,
};
use floodwall::http::HttpRejectionLayer;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, sleep};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// What each hop saw: the header it got and the time left in its scope.
type Seen = Arc<Mutex<Vec<(String, Duration)>>>;

/// A server that records what it sees, works `work`, then calls `next`.
async fn hop(work: Duration, next: Option<SocketAddr>, seen: Seen) -> SocketAddr {
    let handler = service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let header = req
                .headers()
                .get("x-request-timeout-ms")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let left = current().map_or(Duration::MAX, |d| d.remaining(Instant::now()));
            seen.lock().unwrap().push((header, left));
            sleep(work).await;
            let mut status = StatusCode::OK;
            if let Some(next) = next {
                let outbound = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
                    wire: Wire::http(),
                    ..Default::default()
                })
                .unwrap()
                .layer(client(next));
                status = outbound.oneshot(get(next)).await?.status();
            }
            let mut res = Response::new(Full::<Bytes>::from("done"));
            *res.status_mut() = status;
            Ok::<_, BoxError>(res)
        }
    });
    let stack = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(
            ServerDeadlineLayer::new(ServerDeadlineConfig {
                wire: Wire::http(),
                ..Default::default()
            })
            .unwrap(),
        )
        .service(handler);
    serve(stack, Protocol::Http1).await
}

fn with_timeout(addr: SocketAddr, ms: &str) -> Request<()> {
    let mut req = get(addr);
    req.headers_mut()
        .insert("x-request-timeout-ms", ms.parse().unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn the_remaining_deadline_shrinks_at_each_hop() {
    let seen: Seen = Arc::default();
    let c = hop(Duration::ZERO, None, seen.clone()).await;
    let b = hop(Duration::from_secs(4), Some(c), seen.clone()).await;
    let a = hop(Duration::from_secs(7), Some(b), seen.clone()).await;
    let res = client(a).oneshot(with_timeout(a, "30000")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    let headers: Vec<&str> = seen.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(headers, ["30000", "23000", "19000"]);
    // Loopback I/O takes no virtual time: each hop's scope holds exactly
    // what its caller had left.
    let left: Vec<Duration> = seen.iter().map(|&(_, d)| d).collect();
    assert_eq!(
        left,
        [30, 23, 19].map(Duration::from_secs),
        "virtual time must not pass during loopback I/O"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hop_reached_with_no_time_left_answers_504_without_running() {
    let seen: Seen = Arc::default();
    let c = hop(Duration::ZERO, None, seen.clone()).await;
    // A caller that propagates nothing itself, reaching C too late.
    let res = client(c).oneshot(with_timeout(c, "0")).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(seen.lock().unwrap().is_empty(), "C's handler never ran");

    // Through the chain: B works past its whole deadline, so it is cut off
    // at the deadline (504) and never calls C.
    let b = hop(Duration::from_secs(3), Some(c), seen.clone()).await;
    let res = client(b).oneshot(with_timeout(b, "2000")).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(seen.lock().unwrap().len(), 1, "only B ran");
}
