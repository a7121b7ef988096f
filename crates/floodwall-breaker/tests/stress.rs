//! Threads racing on one breaker: no lost updates, and never more than the
//! permitted half-open probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, State, WindowKind};
use floodwall_core::random::SplitMix;
use tokio::time::Instant;

#[test]
fn counts_add_up_under_threads() {
    // A time window that holds everything, and thresholds that never trip.
    let config = BreakerConfig {
        window: WindowKind::Time(3600),
        minimum_calls: u32::MAX,
        ..Default::default()
    };
    let epoch = Instant::now();
    let b = Arc::new(CircuitBreaker::with_epoch(config, epoch).unwrap());
    let failures = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = (0..4u64)
        .map(|id| {
            let (b, failures) = (b.clone(), failures.clone());
            thread::spawn(move || {
                let rng = SplitMix::new(id);
                for i in 0..25_000u64 {
                    let now = epoch + Duration::from_millis(i / 10);
                    let permit = b.try_acquire(now).unwrap();
                    if rng.next_u64().is_multiple_of(3) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        b.on_failure(permit, now);
                    } else {
                        b.on_success(permit, now);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let c = b.counts(epoch + Duration::from_secs(3));
    assert_eq!(c.calls, 100_000);
    assert_eq!(c.failures, failures.load(Ordering::Relaxed));
    assert_eq!(b.state(), State::Closed);

    // The count window: the last 1,000 calls, whatever the interleaving.
    let config = BreakerConfig {
        window: WindowKind::Count(1_000),
        minimum_calls: u32::MAX,
        ..Default::default()
    };
    let b = Arc::new(CircuitBreaker::with_epoch(config, epoch).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            thread::spawn(move || {
                for i in 0..25_000u32 {
                    let permit = b.try_acquire(epoch).unwrap();
                    // The last 250 calls of each thread fail.
                    if i >= 24_750 {
                        b.on_failure(permit, epoch);
                    } else {
                        b.on_success(permit, epoch);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let c = b.counts(epoch);
    assert_eq!(c.calls, 1_000);
    assert!(c.failures <= 1_000, "{c:?}");
    assert!(c.failures > 0);
}

#[test]
fn half_open_never_lets_more_than_its_probes_through() {
    let config = BreakerConfig {
        window: WindowKind::Count(1),
        minimum_calls: 1,
        half_open_calls: 5,
        open_duration: Duration::from_millis(1),
        ..Default::default()
    };
    let epoch = Instant::now();
    let b = Arc::new(CircuitBreaker::with_epoch(config, epoch).unwrap());
    let permit = b.try_acquire(epoch).unwrap();
    b.on_failure(permit, epoch);
    assert_eq!(b.state(), State::Open);
    let later = epoch + Duration::from_secs(1);
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (b, in_flight, peak) = (b.clone(), in_flight.clone(), peak.clone());
            thread::spawn(move || {
                for _ in 0..2_000 {
                    if let Ok(probe) = b.try_acquire(later) {
                        let now = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                        peak.fetch_max(now, Ordering::AcqRel);
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        // Give the slot back: nothing is decided.
                        b.on_cancel(probe);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(peak.load(Ordering::Acquire) <= 5);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "cancelled probes decided nothing"
    );
}
