//! Live reconfiguration of token buckets (SPECS.md, "Reconfiguration"):
//! the tokens available at the change carry over, capped at the new burst,
//! and refill at the new rate; queued reservations keep their start times;
//! every key of a keyed bucket changes at once; and, with threads deciding
//! while another flips the quota at random instants, no interval ever
//! admits more than the larger quota allows over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use floodwall_token_bucket::{KeyedTokenBucket, Quota, TokenBucket, TokenBucketLayer};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn q(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

#[test]
fn raising_a_quota_mid_burst_grants_nothing_at_once_and_refills_at_the_new_rate() {
    let t0 = Instant::now();
    let bucket = TokenBucket::with_epoch(q(10, 10), t0);
    bucket.try_acquire(t0, 4).unwrap();
    bucket.reconfigure(q(100, 20), t0);
    assert_eq!(bucket.available(t0), 6, "carried over, not refilled");
    // 100/s: one token per 10 ms, up to the new burst of 20.
    assert_eq!(bucket.available(t0 + ms(50)), 11);
    assert_eq!(bucket.available(t0 + ms(140)), 20);
    assert_eq!(bucket.available(t0 + ms(1000)), 20);
    // Exactly 6 now, then refused with the new interval's wait.
    for _ in 0..6 {
        bucket.try_acquire(t0, 1).unwrap();
    }
    let refused = bucket.try_acquire(t0, 1).unwrap_err();
    assert_eq!(refused.retry_after(), Some(ms(10)));
}

#[test]
fn lowering_a_quota_mid_burst_takes_away_what_exceeds_the_new_burst() {
    let t0 = Instant::now();
    let bucket = TokenBucket::with_epoch(q(100, 20), t0);
    bucket.try_acquire(t0, 5).unwrap(); // 15 left
    bucket.reconfigure(q(10, 4), t0);
    assert_eq!(bucket.available(t0), 4, "capped at the new burst");
    for _ in 0..4 {
        bucket.try_acquire(t0, 1).unwrap();
    }
    let refused = bucket.try_acquire(t0, 1).unwrap_err();
    assert_eq!(refused.retry_after(), Some(ms(100)), "10/s now");
    // Below the new burst, what is available carries over whole.
    let other = TokenBucket::with_epoch(q(100, 20), t0);
    other.try_acquire(t0, 18).unwrap(); // 2 left
    other.reconfigure(q(10, 4), t0);
    assert_eq!(other.available(t0), 2);
    assert_eq!(other.available(t0 + ms(200)), 4);
}

#[test]
fn fractions_of_a_token_carry_over() {
    let t0 = Instant::now();
    let bucket = TokenBucket::with_epoch(q(10, 10), t0);
    bucket.try_acquire(t0, 1).unwrap();
    // 50 ms later: 9.5 tokens. At 100/s the half token is 5 ms from whole.
    let t = t0 + ms(50);
    bucket.reconfigure(q(100, 10), t);
    assert_eq!(bucket.available(t), 9);
    assert_eq!(bucket.available(t + ms(5)), 10);
}

#[test]
fn queued_reservations_keep_their_starts_and_later_ones_queue_at_the_new_interval() {
    let t0 = Instant::now();
    // One start per 100 ms; three reservations: now, +100, +200 ms.
    let bucket = TokenBucket::with_epoch(q(10, 1), t0);
    let waits: Vec<Duration> = (0..3)
        .map(|_| bucket.reserve(t0, 1, ms(1000)).unwrap().wait())
        .collect();
    assert_eq!(waits, [ms(0), ms(100), ms(200)]);
    // Twice as fast: the next start is 50 ms after the last one given.
    bucket.reconfigure(q(20, 1), t0);
    assert_eq!(bucket.reserve(t0, 1, ms(1000)).unwrap().wait(), ms(250));
    assert_eq!(bucket.reserve(t0, 1, ms(1000)).unwrap().wait(), ms(300));
}

#[test]
fn a_keyed_bucket_reconfigures_every_key_at_once_and_new_keys_start_under_the_new_quota() {
    let t0 = Instant::now();
    let keys = KeyedTokenBucket::with_epoch(q(10, 10), 1_000, t0);
    keys.try_acquire(&"drained", t0, 10).unwrap();
    keys.try_acquire(&"half", t0, 5).unwrap();
    keys.reconfigure(q(100, 8), t0);
    assert_eq!(keys.params(), q(100, 8));
    assert_eq!(keys.remaining(&"drained", t0), 0, "still drained");
    assert_eq!(keys.remaining(&"half", t0), 5);
    assert_eq!(keys.remaining(&"new", t0), 8, "a fresh key: the new burst");
    assert_eq!(keys.remaining(&"drained", t0 + ms(30)), 3, "100/s now");
    assert_eq!(keys.remaining(&"half", t0 + ms(100)), 8);
}

#[tokio::test]
async fn the_layer_handle_reconfigures_the_limit_the_policy_and_the_keyed_layer() {
    use tower::{Layer, ServiceExt, service_fn};
    let layer = TokenBucketLayer::builder(q(2, 2))
        .name("live")
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert!(svc.clone().oneshot(()).await.is_err(), "burst of 2 spent");
    handle.reconfigure(q(1000, 5));
    assert_eq!(handle.policy().quota(), 1000);
    assert_eq!(handle.name(), "live");
    // Still empty at the change; refills at 1000/s.
    tokio::time::sleep(ms(20)).await;
    for _ in 0..5 {
        svc.clone().oneshot(()).await.unwrap();
    }

    let keyed = TokenBucketLayer::builder(q(1, 1))
        .name("live_keyed")
        .build_keyed(|key: &u8| Some(*key))
        .unwrap();
    let keyed_handle = keyed.handle();
    let svc = keyed.layer(service_fn(|_: u8| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(1).await.unwrap();
    assert!(svc.clone().oneshot(1).await.is_err());
    keyed_handle.reconfigure(q(1000, 3));
    tokio::time::sleep(ms(20)).await;
    for _ in 0..3 {
        svc.clone().oneshot(1).await.unwrap();
    }
    assert_eq!(keyed_handle.policy().quota(), 1000);
}

/// Threads decide on one bucket while another thread switches it between
/// two quotas at random instants. Over every interval between two
/// admissions, the admitted count stays within what the larger quota
/// allows: `b_max + r_max·d` (plus the one admission that opens the
/// interval).
#[test]
fn under_random_reconfigurations_no_interval_admits_more_than_the_larger_quota_allows() {
    let small = q(2_000, 10);
    let large = q(5_000, 40);
    let t0 = Instant::now();
    let bucket = Arc::new(TokenBucket::with_epoch(small, t0));
    let stop = Arc::new(AtomicBool::new(false));
    let deciders: Vec<_> = (0..3)
        .map(|_| {
            let (bucket, stop) = (bucket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut admitted = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if bucket.try_acquire(now, 1).is_ok() {
                        admitted.push(now.duration_since(t0).as_nanos() as u64);
                    }
                }
                admitted
            })
        })
        .collect();
    let flipper = {
        let (bucket, stop) = (bucket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let mut flips = 0;
            while !stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_micros(200 + seed % 3_000));
                let quota = if flips % 2 == 0 { large } else { small };
                bucket.reconfigure(quota, Instant::now());
                flips += 1;
            }
            flips
        })
    };
    std::thread::sleep(ms(1_500));
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    let mut times: Vec<u64> = deciders
        .into_iter()
        .flat_map(|d| d.join().unwrap())
        .collect();
    times.sort_unstable();
    let (b_max, interval_min) = (40u64, 200_000u64); // 5,000/s: 200 µs
    let mut worst = 0i64;
    let mut j = 0;
    // For every first admission i, the furthest j within each length:
    // count(i..=j) ≤ b_max + ⌊(t_j − t_i)/I_min⌋.
    for i in 0..times.len() {
        if j < i {
            j = i;
        }
        while j + 1 < times.len() && times[j + 1] - times[i] < 50_000_000 {
            j += 1;
        }
        for k in (i..=j).step_by(1.max((j - i) / 64)) {
            let count = (k - i + 1) as i64;
            let allowed = (b_max + (times[k] - times[i]) / interval_min) as i64;
            worst = worst.max(count - allowed);
        }
    }
    eprintln!(
        "{} admitted over 1.5 s with {flips} reconfigurations; worst excess {worst}",
        times.len()
    );
    assert!(flips >= 100, "the quota flipped {flips} times");
    assert!(times.len() > 2_000, "{} admitted", times.len());
    assert!(
        worst <= 0,
        "an interval admitted {worst} more than the larger quota allows"
    );
}
