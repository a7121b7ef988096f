//! CoDel and the bulkhead reconfigured while they serve: cutting workers
//! while all are busy drops nobody who runs, the excess drains as they
//! finish; the queue's policy and bound change for the next decisions; a
//! refused configuration changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_codel::{BulkheadConfig, BulkheadLayer, CodelConfig, CodelLayer, Policy};
use tokio::time::{Instant, sleep};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sleeps `ms` milliseconds; counts the calls running and the most that
/// ever ran at once after `watch_from` calls started.
#[derive(Clone, Default)]
struct Probe {
    running: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    peak_after_cut: Arc<AtomicUsize>,
    cut_at: Arc<AtomicUsize>,
}

fn sleeper(
    probe: Probe,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |ms_: u64| {
        let probe = probe.clone();
        async move {
            let n = probe.started.fetch_add(1, Ordering::SeqCst) + 1;
            let running = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
            if n > probe.cut_at.load(Ordering::SeqCst) {
                probe.peak_after_cut.fetch_max(running, Ordering::SeqCst);
            }
            sleep(ms(ms_)).await;
            probe.running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(ms_)
        }
    })
}

fn patient(workers: usize) -> CodelConfig {
    CodelConfig {
        policy: Policy::FailAtScale {
            target: Duration::from_secs(60),
            interval: Duration::from_secs(60),
        },
        ..CodelConfig::with_workers(workers)
    }
}

#[tokio::test(start_paused = true)]
async fn cutting_workers_while_all_are_busy_drops_nobody_running_and_the_excess_drains() {
    let probe = Probe::default();
    probe.cut_at.store(usize::MAX, Ordering::SeqCst);
    let layer = CodelLayer::builder(patient(4)).name("cut").build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(probe.clone()));
    let t0 = Instant::now();
    // Four run (100 ms each), four wait.
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(svc.clone().oneshot(100)))
        .collect();
    sleep(ms(10)).await;
    assert_eq!(handle.in_flight(), 4);
    assert_eq!(handle.queue_len(), 4);
    // Cut to one worker while all four are busy.
    probe.cut_at.store(4, Ordering::SeqCst);
    handle.reconfigure(&patient(1)).unwrap();
    assert_eq!(handle.workers(), 1);
    assert_eq!(handle.in_flight(), 4, "nobody running is cancelled");
    let mut finished = Vec::new();
    for call in calls {
        call.await
            .unwrap()
            .expect("every request served, none dropped");
        finished.push(t0.elapsed());
    }
    // The four running finish at 100 ms; the queue then runs one at a time.
    assert_eq!(probe.started.load(Ordering::SeqCst), 8);
    assert_eq!(
        probe.peak_after_cut.load(Ordering::SeqCst),
        1,
        "the excess drained first"
    );
    assert_eq!(finished[..4], [ms(100); 4]);
    assert_eq!(finished[4..], [ms(200), ms(300), ms(400), ms(500)]);
    assert_eq!(handle.config().workers, 1);
}

#[tokio::test(start_paused = true)]
async fn a_smaller_queue_bound_refuses_newcomers_and_keeps_who_waits() {
    let probe = Probe::default();
    probe.cut_at.store(usize::MAX, Ordering::SeqCst);
    let layer = CodelLayer::builder(patient(1)).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(probe.clone()));
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(50)))
        .collect();
    sleep(ms(1)).await;
    assert_eq!(handle.queue_len(), 3);
    handle
        .reconfigure(&CodelConfig {
            max_queue: 1,
            ..patient(1)
        })
        .unwrap();
    let refused = svc.clone().oneshot(50).await;
    assert!(refused.is_err(), "the queue is over its new bound");
    for call in calls {
        call.await
            .unwrap()
            .expect("those already waiting are served");
    }
}

#[tokio::test]
async fn a_refused_configuration_changes_nothing() {
    let layer = CodelLayer::new(CodelConfig::with_workers(3)).unwrap();
    let handle = layer.handle();
    let bad = CodelConfig {
        workers: 0,
        ..CodelConfig::with_workers(3)
    };
    assert!(handle.reconfigure(&bad).is_err());
    assert_eq!(handle.workers(), 3);
    assert_eq!(handle.config(), CodelConfig::with_workers(3));

    let bulkhead = BulkheadLayer::new(BulkheadConfig::default()).unwrap();
    let b = bulkhead.handle();
    let config = BulkheadConfig {
        max_concurrent: 8,
        ..BulkheadConfig::default()
    };
    b.reconfigure_bulkhead(&config).unwrap();
    assert_eq!(b.workers(), 8);
    let zero = BulkheadConfig {
        max_concurrent: 0,
        ..BulkheadConfig::default()
    };
    assert!(b.reconfigure_bulkhead(&zero).is_err());
    assert_eq!(b.workers(), 8);
}
