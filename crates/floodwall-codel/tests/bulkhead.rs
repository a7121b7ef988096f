//! The bulkhead under virtual time: permits, a bounded FIFO wait, and
//! nothing kept by requests that went away.

use std::sync::Arc;
use std::time::Duration;

use floodwall_codel::{BulkheadConfig, BulkheadLayer, DropReason, Shed};
use floodwall_core::{RejectKind, Rejected};
use parking_lot::Mutex;
use tokio::time::{Instant, sleep};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A service that records when each request (its number) started, and takes
/// `work` of virtual time.
type Log = Arc<Mutex<Vec<(u32, Duration)>>>;

fn recorder(
    work: Duration,
) -> (
    impl Service<u32, Response = (), Error = BoxError, Future: Send> + Clone + Send,
    Log,
) {
    let t0 = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let svc = service_fn(move |n: u32| {
        seen.lock().push((n, t0.elapsed()));
        async move {
            sleep(work).await;
            Ok::<_, BoxError>(())
        }
    });
    (svc, log)
}

fn shed_reason(err: &BoxError) -> DropReason {
    let r = Rejected::find(&**err).expect("a rejection");
    assert_eq!(r.kind(), RejectKind::Overloaded);
    r.get::<Shed>().expect("a Shed").reason()
}

#[tokio::test(start_paused = true)]
async fn without_a_wait_it_refuses_at_once_when_full() {
    let layer = BulkheadLayer::new(BulkheadConfig {
        max_concurrent: 2,
        ..BulkheadConfig::default()
    })
    .unwrap();
    let (inner, log) = recorder(ms(50));
    let svc = layer.layer(inner);
    let a = tokio::spawn(svc.clone().oneshot(1));
    let b = tokio::spawn(svc.clone().oneshot(2));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(3).await.unwrap_err();
    assert_eq!(shed_reason(&err), DropReason::Full);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(log.lock().len(), 2, "the refused request never ran");
    svc.clone().oneshot(4).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_oldest_first_up_to_their_wait() {
    let layer = BulkheadLayer::new(BulkheadConfig {
        max_concurrent: 1,
        max_queue: 2,
        max_wait: ms(100),
    })
    .unwrap();
    let (inner, log) = recorder(ms(30));
    let svc = layer.layer(inner);
    let mut calls = Vec::new();
    for n in 1..=3 {
        calls.push(tokio::spawn(svc.clone().oneshot(n)));
        tokio::task::yield_now().await;
    }
    // The queue holds two: a fourth is refused at once.
    let err = svc.clone().oneshot(4).await.unwrap_err();
    assert_eq!(shed_reason(&err), DropReason::Full);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(*log.lock(), [(1, ms(0)), (2, ms(30)), (3, ms(60))]);

    // A waiter whose wait runs out is refused and never runs.
    let (inner, log) = recorder(ms(500));
    let svc = layer.layer(inner);
    let running = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let started = Instant::now();
    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert_eq!(shed_reason(&err), DropReason::Timeout);
    // Refused once its wait is over: past 100 ms, on the timer's next
    // millisecond.
    let waited = started.elapsed();
    assert!(waited > ms(100) && waited <= ms(101), "{waited:?}");
    running.await.unwrap().unwrap();
    assert_eq!(log.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_at_once_and_takes_no_permit() {
    let layer = BulkheadLayer::new(BulkheadConfig {
        max_concurrent: 1,
        max_queue: 4,
        max_wait: ms(1_000),
    })
    .unwrap();
    let handle = layer.handle();
    let (inner, log) = recorder(ms(50));
    let mut svc = layer.layer(inner);
    let running = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let mut waiting = Box::pin(svc.ready().await.unwrap().call(2));
    assert!(futures_pending(&mut waiting), "no permit free: it waits");
    assert_eq!(handle.waiters(), 1);
    drop(waiting);
    assert_eq!(handle.waiters(), 0, "left the queue at once");
    running.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0, "its permit was not taken");
    svc.clone().oneshot(3).await.unwrap();
    let started: Vec<u32> = log.lock().iter().map(|(n, _)| *n).collect();
    assert_eq!(started, [1, 3], "the dropped request never ran");
}

#[tokio::test(start_paused = true)]
async fn more_permits_go_to_the_waiters_at_once() {
    let layer = BulkheadLayer::new(BulkheadConfig {
        max_concurrent: 1,
        max_queue: 4,
        max_wait: ms(1_000),
    })
    .unwrap();
    let handle = layer.handle();
    let (inner, log) = recorder(ms(100));
    let svc = layer.layer(inner);
    let calls: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    sleep(ms(10)).await;
    handle.set_workers(3);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(*log.lock(), [(1, ms(0)), (2, ms(10)), (3, ms(10))]);
}

#[test]
fn bad_configs_are_refused() {
    let err = BulkheadLayer::new(BulkheadConfig {
        max_concurrent: 0,
        ..BulkheadConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
    let err = BulkheadLayer::new(BulkheadConfig {
        max_wait: Duration::from_secs(86_401),
        ..BulkheadConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "max_wait");
}

fn futures_pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(f).poll(&mut cx).is_pending()
}
