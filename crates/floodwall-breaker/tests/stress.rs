//! Threads racing on one breaker: no lost updates, and never more than the
//! permitted half-open probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        rates: false,
        ..Default::default()
    };
    let epoch = Instant::now();
    let b = Arc::new(CircuitBreaker::with_epoch(config, epoch).unwrap());
    let failures = Arc::new(AtomicU64::new(0));
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
        rates: false,
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
    // Eight threads each try to take two probes and hold them until all
    // have tried: exactly five succeed in all.
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (b, barrier) = (b.clone(), barrier.clone());
            thread::spawn(move || {
                let held: Vec<_> = (0..2).filter_map(|_| b.try_acquire(later).ok()).collect();
                let got = held.len() as u32;
                barrier.wait();
                for p in held {
                    b.on_cancel(p);
                }
                got
            })
        })
        .collect();
    let total: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 5);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "cancelled probes decided nothing"
    );
}

#[test]
fn resets_racing_reports_never_corrupt_the_window() {
    let config = BreakerConfig {
        window: WindowKind::Count(2),
        // Never trip: the test is about the window, not the state machine.
        rates: false,
        ..Default::default()
    };
    let epoch = Instant::now();
    let b = Arc::new(CircuitBreaker::with_epoch(config, epoch).unwrap());
    let workers: Vec<_> = (0..3u64)
        .map(|id| {
            let b = b.clone();
            thread::spawn(move || {
                let rng = SplitMix::new(id);
                for _ in 0..20_000 {
                    let permit = b.try_acquire(epoch).unwrap();
                    if rng.next_u64().is_multiple_of(2) {
                        b.on_failure(permit, epoch);
                    } else {
                        b.on_success(permit, epoch);
                    }
                    let c = b.counts(epoch);
                    assert!(
                        c.calls <= 2 && c.failures <= c.calls && c.slow <= c.calls,
                        "{c:?}"
                    );
                }
            })
        })
        .collect();
    for _ in 0..2_000 {
        b.reset();
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(b.state(), State::Closed);
}
