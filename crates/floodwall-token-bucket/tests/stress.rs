//! Several OS threads hammer one limiter; it never admits more than
//! `burst + rate × elapsed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use floodwall_token_bucket::{KeyedTokenBucket, Quota, TokenBucket};
use tokio::time::Instant;

const THREADS: usize = 4;

/// Upper bound of admissions over `elapsed` for `quota`: b + elapsed / I.
fn bound(quota: &Quota, elapsed: Duration) -> u64 {
    u64::from(quota.burst()) + (elapsed.as_nanos() / quota.interval().as_nanos()) as u64
}

#[test]
fn real_time_threads_never_exceed_burst_plus_rate() {
    let quota = Quota::per_second(20_000).unwrap().with_burst(50).unwrap();
    let start = Instant::now();
    let bucket = Arc::new(TokenBucket::with_epoch(quota, start));
    let span = Duration::from_millis(300);
    let admitted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let bucket = bucket.clone();
            let admitted = admitted.clone();
            thread::spawn(move || {
                let mut tries = 0u64;
                loop {
                    let now = Instant::now();
                    if now.duration_since(start) >= span {
                        return tries;
                    }
                    tries += 1;
                    if bucket.try_acquire(now, 1).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let tries: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    let max = bound(&quota, elapsed);
    assert!(admitted <= max, "admitted {admitted} > bound {max}");
    assert!(tries > admitted, "the limiter was actually contended");
    // The bucket starts full and the threads certainly tried that often.
    assert!(
        admitted >= u64::from(quota.burst()),
        "admitted only {admitted}"
    );
}

#[test]
fn virtual_clock_threads_admit_exactly_the_bound() {
    // A shared fake clock that one thread advances while the others race:
    // the instants are exact, so the admitted count is exactly determined.
    let quota = Quota::per_second(1000).unwrap().with_burst(10).unwrap();
    let epoch = Instant::now();
    let bucket = Arc::new(TokenBucket::with_epoch(quota, epoch));
    let clock = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let steps = 1000u64; // 1 second in 1 ms steps
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (bucket, clock, done, admitted) = (
                bucket.clone(),
                clock.clone(),
                done.clone(),
                admitted.clone(),
            );
            thread::spawn(move || {
                while done.load(Ordering::Acquire) == 0 {
                    let now = epoch + Duration::from_nanos(clock.load(Ordering::Acquire));
                    if bucket.try_acquire(now, 1).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for step in 1..=steps {
        // Let the workers drain each instant before moving on.
        while bucket.available(epoch + Duration::from_nanos(clock.load(Ordering::Relaxed))) > 0 {
            thread::yield_now();
        }
        clock.store(step * 1_000_000, Ordering::Release);
    }
    while bucket.available(epoch + Duration::from_nanos(clock.load(Ordering::Relaxed))) > 0 {
        thread::yield_now();
    }
    done.store(1, Ordering::Release);
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = Duration::from_nanos(steps * 1_000_000);
    assert_eq!(admitted.load(Ordering::Relaxed), bound(&quota, elapsed));
}

#[test]
fn keyed_threads_never_exceed_the_bound_per_key() {
    let quota = Quota::per_second(5_000).unwrap().with_burst(20).unwrap();
    let start = Instant::now();
    let keyed = Arc::new(KeyedTokenBucket::with_epoch(quota, 64, start));
    let span = Duration::from_millis(200);
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (keyed, counts) = (keyed.clone(), counts.clone());
            thread::spawn(move || {
                let mut k = i as u64;
                loop {
                    let now = Instant::now();
                    if now.duration_since(start) >= span {
                        return;
                    }
                    k = (k + 1) % 8;
                    if keyed.try_acquire(&k, now, 1).is_ok() {
                        counts[k as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let max = bound(&quota, start.elapsed());
    for (k, c) in counts.iter().enumerate() {
        let c = c.load(Ordering::Relaxed);
        assert!(c <= max, "key {k}: admitted {c} > bound {max}");
        assert!(c >= u64::from(quota.burst()), "key {k} was exercised");
    }
}

#[test]
fn keyed_churn_with_concurrent_readers_keeps_every_bound() {
    // Hot keys hammered by three threads while a fourth floods the map with
    // new keys, so insertions, idle drops, shard sweeps and evictions run
    // alongside decisions on the hot keys.
    let quota = Quota::per_second(5_000).unwrap().with_burst(20).unwrap();
    let start = Instant::now();
    let capacity = 256;
    let keyed = Arc::new(KeyedTokenBucket::with_epoch(quota, capacity, start));
    let span = Duration::from_millis(300);
    let hot: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let mut handles: Vec<_> = (0..3)
        .map(|i| {
            let (keyed, hot) = (keyed.clone(), hot.clone());
            thread::spawn(move || {
                let mut k = i as u64;
                while start.elapsed() < span {
                    k = (k + 1) % 8;
                    if keyed.try_acquire(&k, Instant::now(), 1).is_ok() {
                        hot[k as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let flood = {
        let keyed = keyed.clone();
        thread::spawn(move || {
            let mut cold = 1_000u64;
            let mut max_len = 0;
            while start.elapsed() < span {
                keyed.try_acquire(&cold, Instant::now(), 1).unwrap();
                cold += 1;
                if cold.is_multiple_of(64) {
                    max_len = max_len.max(keyed.keys().len());
                }
            }
            (cold - 1_000, max_len)
        })
    };
    for h in handles.drain(..) {
        h.join().unwrap();
    }
    let (cold_keys, max_len) = flood.join().unwrap();
    assert!(cold_keys > capacity as u64, "the map was churned");
    assert!(max_len <= capacity && keyed.keys().len() <= capacity);
    // A key forgotten in debt may be forgiven at most one burst; every
    // other admission is within the GCRA bound.
    let forgiven = keyed.keys().evicted_in_debt() * u64::from(quota.burst());
    let max = bound(&quota, start.elapsed()) + forgiven;
    for (k, c) in hot.iter().enumerate() {
        let c = c.load(Ordering::Relaxed);
        assert!(c <= max, "hot key {k}: admitted {c} > {max}");
        assert!(c >= u64::from(quota.burst()));
    }
}
