//! Loom models of the GCRA core: every interleaving of concurrent
//! acquisitions, reservations and cancellations on one atomic TAT.
//! Run by `scripts/loom.sh` (`RUSTFLAGS="--cfg floodwall_loom"`).
#![cfg(floodwall_loom)]

use std::time::Duration;

use floodwall_token_bucket::{Quota, TokenBucket};
use loom::sync::Arc;
use loom::thread;
use tokio::time::Instant;

fn bucket(burst: u32, t0: Instant) -> Arc<TokenBucket> {
    let quota = Quota::per_second(1).unwrap().with_burst(burst).unwrap();
    Arc::new(TokenBucket::with_epoch(quota, t0))
}

#[test]
fn concurrent_acquires_take_exactly_the_burst() {
    loom::model(|| {
        let t0 = Instant::now();
        let b = bucket(2, t0);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.try_acquire(t0, 1).is_ok())
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(b.available(t0), 0);
    });
}

#[test]
fn a_weighted_acquire_and_a_single_one_never_overdraw() {
    loom::model(|| {
        let t0 = Instant::now();
        let b = bucket(3, t0);
        let heavy = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire(t0, 2).is_ok())
        };
        let light = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire(t0, 2).is_ok())
        };
        let taken = 2 * (u32::from(heavy.join().unwrap()) + u32::from(light.join().unwrap()));
        assert_eq!(taken, 2, "3 tokens: one request of 2 fits, not two");
        assert_eq!(b.available(t0), 1);
    });
}

#[test]
fn cancelling_the_newest_reservation_races_a_new_one_consistently() {
    loom::model(|| {
        let t0 = Instant::now();
        let b = bucket(1, t0);
        b.try_acquire(t0, 1).unwrap();
        let wait = Duration::from_secs(10);
        let canceller = {
            let b = b.clone();
            thread::spawn(move || {
                let r = b.reserve(t0, 1, wait).unwrap();
                b.cancel(r, t0)
            })
        };
        let other = {
            let b = b.clone();
            thread::spawn(move || b.reserve(t0, 1, wait).unwrap().wait())
        };
        let cancelled = canceller.join().unwrap();
        let other_wait = other.join().unwrap();
        // A cancellation succeeds only while its reservation is the newest,
        // so the other request got the first slot; otherwise the second.
        let expected = if cancelled { 1 } else { 2 };
        assert_eq!(other_wait, Duration::from_secs(expected));
        // The bucket is exactly as if only the surviving reservations ran.
        assert_eq!(b.time_to_full(t0), Duration::from_secs(expected + 1));
    });
}
