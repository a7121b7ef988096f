//! Lock-free recording under threads, a model check of the trailing window,
//! and cancellation of the throttle and retry futures.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use floodwall_core::BoxError;
use floodwall_throttle::{
    AdaptiveThrottle, Backoff, RetryBudget, RetryLayer, SplitMix, ThrottleConfig, ThrottleLayer,
};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

#[test]
fn concurrent_records_all_count_across_bucket_changes() {
    // 1 ms buckets, 1 s window: the threads cross hundreds of buckets.
    let config = ThrottleConfig {
        window: Duration::from_secs(1000),
        buckets: 1000,
        ..Default::default()
    };
    let epoch = Instant::now();
    let th = Arc::new(AdaptiveThrottle::with_rng(config, SplitMix::new(1), epoch).unwrap());
    let handles: Vec<_> = (0..4u64)
        .map(|id| {
            let th = th.clone();
            thread::spawn(move || {
                for i in 0..20_000u64 {
                    // Each thread walks its own path through 500 buckets.
                    let now = epoch + Duration::from_millis((i * 500 / 20_000) * 1000 + id);
                    th.record_request(now, None);
                    if i.is_multiple_of(2) {
                        th.record_accept(now, None);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Nothing has left the 1000 s window: every record is still counted.
    let s = th.stats(epoch + Duration::from_secs(500), None);
    assert_eq!((s.requests, s.accepts), (80_000, 40_000));
    // And everything leaves once the window has passed.
    let s = th.stats(epoch + Duration::from_secs(2000), None);
    assert_eq!((s.requests, s.accepts), (0, 0));
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
async fn a_dropped_throttle_future_counts_the_attempt_and_no_accept() {
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
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_retry_dropped_during_backoff_leaks_nothing() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let token = Arc::new(());
    let held = token.clone();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let svc = RetryLayer::builder()
        .budget(budget.clone())
        .backoff(Backoff {
            initial: Duration::from_secs(1),
            ..Default::default()
        })
        .rng(|| 0.9)
        .build()
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
