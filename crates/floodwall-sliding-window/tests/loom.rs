//! Loom models of the sliding counter: concurrent admissions within one
//! window and across a window rotation, on its one atomic word.
//! Run by `scripts/loom.sh` (`RUSTFLAGS="--cfg floodwall_loom"`).
#![cfg(floodwall_loom)]

use std::time::Duration;

use floodwall_sliding_window::{SlidingWindowCounter, Window};
use loom::sync::Arc;
use loom::thread;
use tokio::time::Instant;

fn counter(limit: u32, t0: Instant) -> Arc<SlidingWindowCounter> {
    let window = Window::new(limit, Duration::from_secs(1)).unwrap();
    Arc::new(SlidingWindowCounter::with_epoch(window, t0))
}

#[test]
fn concurrent_requests_in_one_window_admit_exactly_the_limit() {
    loom::model(|| {
        let t0 = Instant::now();
        let c = counter(2, t0);
        let t = t0 + Duration::from_millis(100);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || c.try_acquire(t, 1).is_ok())
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(c.remaining(t), 0);
    });
}

#[test]
fn a_rotation_racing_an_admission_keeps_the_estimate() {
    loom::model(|| {
        let t0 = Instant::now();
        let c = counter(4, t0);
        let early = t0 + Duration::from_millis(100);
        for _ in 0..2 {
            c.try_acquire(early, 1).unwrap();
        }
        // Half-way through the next window the previous one weighs half:
        // estimate 1, room for 3 more — whichever thread rotates the window.
        let mid = t0 + Duration::from_millis(1500);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || c.try_acquire(mid, 1).is_ok())
            })
            .collect();
        for h in threads {
            assert!(h.join().unwrap());
        }
        assert_eq!(c.estimate(mid), 3.0);
        assert_eq!(c.remaining(mid), 1);
    });
}
