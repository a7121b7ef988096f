//! The admission queue's rejections as HTTP responses: shed requests are
//! 503, requests whose deadline cannot be met are 504, and neither reaches
//! the handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall::codel::{CodelConfig, CodelLayer, TimingFromExtensions};
use floodwall::core::{BoxError, Deadline};
use floodwall::http::HttpRejectionLayer;
use http::{Request, Response, StatusCode};
use tokio::time::{Instant, sleep};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn shed_is_503_and_a_missed_deadline_is_504() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let queue = CodelLayer::builder(CodelConfig {
        workers: 1,
        max_queue: 1,
        ..Default::default()
    })
    .timing(TimingFromExtensions)
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(queue)
        .service(service_fn(move |_: Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                sleep(Duration::from_millis(50)).await;
                Ok::<_, BoxError>(Response::new(String::from("ok")))
            }
        }));

    let running = tokio::spawn(svc.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    // Waits (the queue holds one), then misses its 10 ms deadline.
    let mut late = Request::new(());
    late.extensions_mut()
        .insert(Deadline::after(Instant::now(), Duration::from_millis(10)));
    let late = tokio::spawn(svc.clone().oneshot(late));
    tokio::task::yield_now().await;
    // The queue is full: 503 at once.
    let full = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);

    assert_eq!(
        late.await.unwrap().unwrap().status(),
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(running.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}
