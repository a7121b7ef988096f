//! Loom models of the circuit breaker's state word, counters and slow-path
//! lock: concurrent outcomes trip it exactly once, half-open hands out
//! exactly its probes, and a caller that sees the breaker closed also sees
//! the ramp that closing started.
//! Run by `scripts/loom.sh` (`RUSTFLAGS="--cfg floodwall_loom"`).
#![cfg(floodwall_loom)]

use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, State};
use loom::sync::Arc;
use loom::thread;
use tokio::time::Instant;

fn breaker(config: BreakerConfig, t0: Instant) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::with_epoch(config, t0).unwrap())
}

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig {
        detect_slow_calls: false,
        open_duration: Duration::from_secs(1),
        half_open_calls: 1,
        ..BreakerConfig::consecutive(n)
    }
}

#[test]
fn concurrent_failures_trip_the_breaker_exactly_once() {
    loom::model(|| {
        let t0 = Instant::now();
        let b = breaker(consecutive(2), t0);
        let permits = [b.try_acquire(t0).unwrap(), b.try_acquire(t0).unwrap()];
        let threads: Vec<_> = permits
            .into_iter()
            .map(|p| {
                let b = b.clone();
                thread::spawn(move || b.on_failure(p, t0))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.generation(), 1, "one transition, not two");
    });
}

#[test]
fn half_open_lets_exactly_its_probes_through() {
    loom::model(|| {
        let t0 = Instant::now();
        let b = breaker(consecutive(1), t0);
        b.on_failure(b.try_acquire(t0).unwrap(), t0);
        let t1 = t0 + Duration::from_secs(1);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.try_acquire(t1).map(|p| p.is_probe()))
            })
            .collect();
        let probes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            probes.iter().filter(|p| matches!(p, Ok(true))).count(),
            1,
            "{probes:?}"
        );
        assert!(probes.iter().all(|p| matches!(p, Ok(true) | Err(_))));
    });
}

#[test]
fn a_caller_that_sees_the_breaker_closed_sees_its_ramp() {
    loom::model(|| {
        let t0 = Instant::now();
        // The ramp starts at 0 %: right after closing, nothing is admitted.
        let config = BreakerConfig {
            ramp: Some(Duration::from_secs(10)),
            ramp_start: 0.0,
            ..consecutive(1)
        };
        let b = breaker(config, t0);
        b.on_failure(b.try_acquire(t0).unwrap(), t0);
        let t1 = t0 + Duration::from_secs(1);
        let probe = b.try_acquire(t1).unwrap();
        let closer = {
            let b = b.clone();
            thread::spawn(move || b.on_success(probe, t1))
        };
        let caller = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire(t1).is_ok())
        };
        closer.join().unwrap();
        // Before the close it meets a half-open breaker with its one probe
        // taken; after it, the ramp at 0 %. Either way: refused.
        assert!(!caller.join().unwrap(), "admitted past a 0 % ramp");
        assert_eq!(b.state(), State::Closed);
    });
}
