//! Sliding windows reconfigured while they serve (SPECS.md,
//! "Reconfiguration"): counts are kept and a new limit applies to the
//! current estimate; a new window length restarts the alignment at the
//! change with the estimate carried as the previous window's count; a log
//! keeps its newest admissions.

use std::time::Duration;

use floodwall_sliding_window::{
    KeyedSlidingWindowCounter, SlidingLog, SlidingWindowConfig, SlidingWindowCounter,
    SlidingWindowLayer, Window,
};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn w(limit: u32, length_ms: u64) -> Window {
    Window::new(limit, ms(length_ms)).unwrap()
}

#[test]
fn a_new_limit_applies_to_the_counts_kept() {
    let t0 = Instant::now();
    let c = SlidingWindowCounter::with_epoch(w(10, 1000), t0);
    c.try_acquire(t0, 6).unwrap();
    c.reconfigure(w(20, 1000), t0);
    assert_eq!(c.remaining(t0), 14);
    c.reconfigure(w(4, 1000), t0);
    assert_eq!(c.remaining(t0), 0);
    assert!(c.try_acquire(t0, 1).is_err());
    assert_eq!(c.window(), w(4, 1000));
}

#[test]
fn a_new_length_restarts_the_alignment_with_the_estimate_carried() {
    let t0 = Instant::now();
    let c = SlidingWindowCounter::with_epoch(w(10, 1000), t0);
    let t = t0 + ms(500);
    c.try_acquire(t, 8).unwrap();
    assert_eq!(c.estimate(t), 8.0);
    c.reconfigure(w(10, 2000), t);
    assert_eq!(c.estimate(t), 8.0, "no jump at the change");
    assert_eq!(c.remaining(t), 2);
    // Halfway through the new window, the carried count weighs half.
    assert_eq!(c.estimate(t + ms(1000)), 4.0);
    assert_eq!(c.remaining(t + ms(1000)), 6);
    // Two new windows later, nothing is left of it.
    assert_eq!(c.estimate(t + ms(4000)), 0.0);
}

#[test]
fn a_fixed_window_stays_fixed() {
    let t0 = Instant::now();
    let c = SlidingWindowCounter::fixed_with_epoch(w(5, 1000), t0);
    c.try_acquire(t0, 5).unwrap();
    c.reconfigure(w(6, 1000), t0);
    assert!(c.is_fixed());
    assert_eq!(c.remaining(t0), 1);
    assert_eq!(
        c.remaining(t0 + ms(1000)),
        6,
        "a fixed window forgets at its end"
    );
}

#[test]
fn a_log_keeps_its_newest_admissions_up_to_a_new_limit() {
    let t0 = Instant::now();
    let log = SlidingLog::with_epoch(w(5, 1000), t0);
    for i in 0..5 {
        log.try_acquire(t0 + ms(i * 100), 1).unwrap();
    }
    log.reconfigure(w(3, 1000), t0 + ms(450));
    assert_eq!(log.count(t0 + ms(450)), 3, "the newest 3 kept");
    assert!(log.try_acquire(t0 + ms(450), 1).is_err());
    // The oldest kept (at 200 ms) expires at 1,200 ms.
    assert!(log.try_acquire(t0 + ms(1200), 1).is_ok());
    log.reconfigure(w(10, 1000), t0 + ms(1200));
    assert_eq!(log.count(t0 + ms(1200)), 3);
}

#[test]
fn every_key_of_a_keyed_counter_changes_at_once() {
    let t0 = Instant::now();
    let keys = KeyedSlidingWindowCounter::with_epoch(w(10, 1000), 100, t0);
    keys.try_acquire(&"a", t0, 7).unwrap();
    keys.reconfigure(w(8, 1000), t0);
    assert_eq!(keys.remaining(&"a", t0), 1);
    assert_eq!(keys.remaining(&"new", t0), 8);
}

#[tokio::test]
async fn the_layer_handle_reconfigures_the_window() {
    use tower::{Layer, ServiceExt, service_fn};
    let layer = SlidingWindowLayer::builder(SlidingWindowConfig::from(w(2, 60_000)))
        .name("live_window")
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert!(svc.clone().oneshot(()).await.is_err());
    handle.reconfigure(w(3, 60_000));
    svc.clone().oneshot(()).await.unwrap();
    assert!(svc.clone().oneshot(()).await.is_err());
    assert_eq!(handle.policy().quota(), 3);
}
