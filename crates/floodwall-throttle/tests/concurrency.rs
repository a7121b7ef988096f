//! Lock-free recording under threads, a model check of the trailing window,
//! and cancellation of the throttle and retry futures.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use floodwall_core::BoxError;
use floodwall_throttle::{
    AdaptiveThrottle, Backoff, RetryBudget, RetryConfig, RetryLayer, SplitMix, ThrottleConfig,
    ThrottleLayer,
};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

#[test]
fn concurrent_records_and_expiry_never_lose_or_corrupt_counts() {
    // A 10 s window in 1 s buckets; four threads record 40 requests (20
    // accepted) per bucket through 200 buckets, meeting at a barrier after
    // each bucket. Buckets expire while the others record, yet after every
    // barrier the totals are exact.
    let config = ThrottleConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        ..Default::default()
    };
    let epoch = Instant::now();
    let th = Arc::new(AdaptiveThrottle::with_rng(config, SplitMix::new(1), epoch).unwrap());
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4u64)
        .map(|id| {
            let (th, barrier) = (th.clone(), barrier.clone());
            thread::spawn(move || {
                for bucket in 0..200u64 {
                    for i in 0..40u64 {
                        let now = epoch + Duration::from_millis(bucket * 1000 + id * 10 + i);
                        th.record_request(now, None);
                        if i.is_multiple_of(2) {
                            th.record_accept(now, None);
                        }
                    }
                    barrier.wait();
                    if id == 0 {
                        let live = (bucket + 1).min(10);
                        let s = th.stats(epoch + Duration::from_millis(bucket * 1000 + 999), None);
                        assert_eq!(
                            (s.requests, s.accepts),
                            (live * 160, live * 80),
                            "after bucket {bucket}"
                        );
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = th.stats(epoch + Duration::from_secs(600), None);
    assert_eq!(
        (s.requests, s.accepts),
        (0, 0),
        "everything leaves with the window"
    );
}

#[test]
fn the_window_holds_exactly_the_last_buckets() {
    // A model check: the totals equal a brute-force sum over the records
    // whose bucket lies in the last `buckets` buckets, on a random trace.
    let config = ThrottleConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        ..Default::default()
    };
    let epoch = Instant::now();
    let th = AdaptiveThrottle::with_rng(config, SplitMix::new(3), epoch).unwrap();
    let rng = SplitMix::new(99);
    let mut records: Vec<(u64, bool)> = Vec::new();
    let mut t = 0u64;
    for _ in 0..5_000 {
        t += rng.next_u64() % 300_000_000; // up to 0.3 s
        let now = epoch + Duration::from_nanos(t);
        let accept = rng.next_u64().is_multiple_of(3);
        th.record_request(now, None);
        if accept {
            th.record_accept(now, None);
        }
        records.push((t / 1_000_000_000, accept));
        let bucket = t / 1_000_000_000;
        let live = records.iter().filter(|(b, _)| b + 10 > bucket);
        let requests = live.clone().count() as u64;
        let accepts = live.filter(|(_, a)| *a).count() as u64;
        let s = th.stats(now, None);
        assert_eq!((s.requests, s.accepts), (requests, accepts), "at {t} ns");
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_throttle_future_is_taken_back_it_says_nothing() {
    let layer = ThrottleLayer::new(ThrottleConfig::default()).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(())
    }));
    let fut = svc.clone().oneshot(());
    let task = tokio::spawn(fut);
    advance(Duration::from_millis(1)).await;
    task.abort();
    let _ = task.await;
    // The outcome rule: a caller's cancellation says nothing about the
    // backend, so the attempt counts neither as a request nor an accept
    // (counted as a rejection, any client could raise everyone's
    // rejection probability by hanging up).
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_retry_dropped_during_backoff_leaks_nothing() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let token = Arc::new(());
    let held = token.clone();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let svc = RetryLayer::builder(RetryConfig {
        backoff: Backoff {
            initial: Duration::from_secs(1),
            ..Default::default()
        },
        ..RetryConfig::default()
    })
    .budget(budget.clone())
    .rng(|| 0.9)
    .build()
    .unwrap()
    .layer(service_fn(move |_: ()| {
        let _held = &held;
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Err::<(), BoxError>("reset".into()) }
    }));
    let baseline = Arc::strong_count(&token);
    let task = tokio::spawn(svc.clone().oneshot(()));
    advance(Duration::from_millis(100)).await; // first attempt failed; backing off
    task.abort();
    let _ = task.await;
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "no retry after the drop"
    );
    assert_eq!(budget.tokens(), 9.0, "one failure recorded, nothing else");
    assert_eq!(
        Arc::strong_count(&token),
        baseline,
        "the service clone was released"
    );
}
