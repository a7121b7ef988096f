//! Write aggregation against SPECS.md ("Write aggregation"), under virtual
//! time: exact sums, one downstream write per key per window, every caller
//! answered, the pending bound refusing (never losing) updates, writes
//! that outlive their callers, flush, size bound and shared errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_hotkey::{AggregateConfig, AggregateError, AggregateLayer, Update};
use parking_lot::Mutex;
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Every write the store took: when, which key, what delta.
type Log = Arc<Mutex<Vec<(Instant, u32, i64)>>>;

fn store(
    log: Log,
    fail: bool,
) -> impl Service<Update<u32, i64>, Response = u64, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |u: Update<u32, i64>| {
        let log = log.clone();
        async move {
            sleep(Duration::from_millis(2)).await;
            if fail {
                return Err(BoxError::from("store down"));
            }
            let mut log = log.lock();
            log.push((Instant::now(), u.key, u.delta));
            Ok(log.len() as u64)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_increments_from_a_thousand_tasks_sum_exactly() {
    let log: Log = Arc::default();
    let layer = AggregateLayer::new(AggregateConfig::default()).unwrap();
    let svc = layer.layer(store(log.clone(), false));
    let tasks: Vec<_> = (0..1_000u32)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut sent: HashMap<u32, i64> = HashMap::new();
                for i in 0..100u32 {
                    let key = (t + i) % 10;
                    let delta = if (t * 7 + i) % 5 == 0 {
                        -1
                    } else {
                        i64::from(i % 3) + 1
                    };
                    svc.clone()
                        .oneshot(Update { key, delta })
                        .await
                        .expect("written");
                    *sent.entry(key).or_default() += delta;
                    // Spread the tasks over time.
                    sleep(Duration::from_micros(u64::from((t * 37 + i) % 500))).await;
                }
                sent
            })
        })
        .collect();
    let mut expected: HashMap<u32, i64> = HashMap::new();
    for task in tasks {
        for (k, v) in task.await.expect("every caller answered") {
            *expected.entry(k).or_default() += v;
        }
    }
    let log = log.lock();
    let mut written: HashMap<u32, i64> = HashMap::new();
    let mut last: HashMap<u32, Instant> = HashMap::new();
    for &(at, key, delta) in log.iter() {
        *written.entry(key).or_default() += delta;
        if let Some(prev) = last.insert(key, at) {
            assert!(
                at - prev >= Duration::from_millis(20),
                "key {key}: two writes within a window"
            );
        }
    }
    assert_eq!(written, expected, "exact sums");
    assert_eq!(expected.len(), 10);
    eprintln!("{} writes for 100,000 updates", log.len());
    assert!(log.len() < 100_000 / 10, "{} writes", log.len());
}

#[tokio::test(start_paused = true)]
async fn over_the_pending_bound_an_update_is_refused_not_lost() {
    let log: Log = Arc::default();
    let layer = AggregateLayer::new(AggregateConfig {
        max_keys: 2,
        ..AggregateConfig::default()
    })
    .unwrap();
    let svc = layer.layer(store(log.clone(), false));
    let a = tokio::spawn(svc.clone().oneshot(Update { key: 1, delta: 5 }));
    let b = tokio::spawn(svc.clone().oneshot(Update { key: 2, delta: 6 }));
    tokio::task::yield_now().await;
    let err = svc
        .clone()
        .oneshot(Update { key: 3, delta: 7 })
        .await
        .unwrap_err();
    assert_eq!(
        Rejected::find(&*err).map(|r| r.kind()),
        Some(RejectKind::Overloaded)
    );
    // A key already gathering still takes updates.
    let c = tokio::spawn(svc.clone().oneshot(Update { key: 1, delta: 1 }));
    for call in [a, b, c] {
        call.await.unwrap().unwrap();
    }
    let mut writes: Vec<(u32, i64)> = log.lock().iter().map(|&(_, k, d)| (k, d)).collect();
    writes.sort_unstable();
    assert_eq!(writes, [(1, 6), (2, 6)]);
}

#[tokio::test(start_paused = true)]
async fn an_accepted_update_is_written_even_if_its_caller_goes_away() {
    let log: Log = Arc::default();
    let layer = AggregateLayer::new(AggregateConfig::default()).unwrap();
    let mut svc = layer.layer(store(log.clone(), false));
    // Accepted in `call`; the future dropped at once.
    drop(svc.ready().await.unwrap().call(Update { key: 4, delta: 9 }));
    sleep(Duration::from_millis(50)).await;
    let writes: Vec<(u32, i64)> = log.lock().iter().map(|&(_, k, d)| (k, d)).collect();
    assert_eq!(writes, [(4, 9)]);
}

#[tokio::test(start_paused = true)]
async fn flush_writes_every_batch_now_and_waits_for_the_writes() {
    let log: Log = Arc::default();
    let layer = AggregateLayer::new(AggregateConfig {
        window: Duration::from_secs(60),
        ..AggregateConfig::default()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(store(log.clone(), false));
    let calls: Vec<_> = (0..3u32)
        .map(|k| tokio::spawn(svc.clone().oneshot(Update { key: k, delta: 1 })))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(handle.pending(), 3);
    let start = Instant::now();
    handle.flush().await;
    assert!(
        start.elapsed() < Duration::from_millis(10),
        "not after the 60 s window"
    );
    assert_eq!(handle.pending(), 0);
    assert_eq!(log.lock().len(), 3, "written before flush returned");
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_written_before_its_window_ends() {
    let log: Log = Arc::default();
    let layer = AggregateLayer::new(AggregateConfig {
        window: Duration::from_secs(60),
        max_batch: 4,
        ..AggregateConfig::default()
    })
    .unwrap();
    let svc = layer.layer(store(log.clone(), false));
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(Update { key: 1, delta: 2 })))
        .collect();
    let start = Instant::now();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    let writes: Vec<(u32, i64)> = log.lock().iter().map(|&(_, k, d)| (k, d)).collect();
    assert_eq!(writes, [(1, 8)]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_fails_every_caller_in_its_batch() {
    let layer = AggregateLayer::new(AggregateConfig::default()).unwrap();
    let svc = layer.layer(store(Arc::default(), true));
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(Update { key: 1, delta: 1 })))
        .collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        let shared = err
            .downcast_ref::<AggregateError>()
            .expect("the batch's error");
        assert_eq!(shared.inner().to_string(), "store down");
    }
}

#[test]
fn configs_are_validated() {
    for (config, field) in [
        (
            AggregateConfig {
                window: Duration::ZERO,
                ..AggregateConfig::default()
            },
            "window",
        ),
        (
            AggregateConfig {
                max_batch: 0,
                ..AggregateConfig::default()
            },
            "max_batch",
        ),
        (
            AggregateConfig {
                max_keys: 0,
                ..AggregateConfig::default()
            },
            "max_keys",
        ),
    ] {
        let err = AggregateLayer::<u32, i64, ()>::new(config).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}
