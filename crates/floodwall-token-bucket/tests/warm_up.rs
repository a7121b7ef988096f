//! Warm-up against Guava's `SmoothWarmingUp` (SPECS.md, "Warm-up"): a
//! cold 2/s limiter warming up over 4 s (S = 500 ms, C = 1.5 s,
//! threshold 4 permits, max 8, slope 250 ms per permit) spaces requests
//! 1,375, 1,125, 875 and 625 ms apart, then 500 ms; idleness cools it one
//! permit per W / max = 500 ms.

use std::time::Duration;

use floodwall_token_bucket::{Quota, WarmCurve, WarmUp, WarmingBucket};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn guava() -> (Quota, WarmUp) {
    (
        Quota::per_second(2).unwrap(),
        WarmUp::new(Duration::from_secs(4)),
    )
}

/// Drives the bucket as fast as it admits from `start`, `count` times;
/// returns the gaps between admissions.
fn gaps(bucket: &WarmingBucket, start: Instant, count: usize) -> Vec<Duration> {
    let mut at = start;
    let mut out = Vec::new();
    for _ in 0..count {
        match bucket.try_acquire(at, 1) {
            Ok(()) => {}
            Err(denied) => {
                let wait = denied.retry_after().unwrap();
                at += wait;
                out.push(wait);
                bucket.try_acquire(at, 1).unwrap();
            }
        }
    }
    out
}

#[test]
fn the_curve_has_the_specification_numbers() {
    let (quota, warm) = guava();
    let curve = WarmCurve::new(&quota, warm).unwrap();
    assert_eq!(curve.threshold(), 4.0);
    assert_eq!(curve.max_permits(), 8.0);
    assert_eq!(curve.interval_at(8.0), ms(1500), "cold: C = 3 · S");
    assert_eq!(curve.interval_at(6.0), ms(1000));
    assert_eq!(curve.interval_at(4.0), ms(500), "warm: S");
    assert_eq!(curve.interval_at(0.0), ms(500));
}

#[test]
fn a_cold_limiter_ramps_up_exactly_as_smooth_warming_up() {
    let (quota, warm) = guava();
    let t0 = Instant::now();
    let bucket = WarmingBucket::with_epoch(quota, warm, t0).unwrap();
    bucket.try_acquire(t0, 1).unwrap();
    // Guava's `testWarmUp`: R0.00, R1.38, R1.13, R0.88, R0.63, R0.50, R0.50, R0.50.
    assert_eq!(
        gaps(&bucket, t0, 8),
        [
            ms(1375),
            ms(1125),
            ms(875),
            ms(625),
            ms(500),
            ms(500),
            ms(500),
            ms(500)
        ]
    );
}

#[test]
fn idleness_cools_it_one_permit_per_cool_down_interval() {
    let (quota, warm) = guava();
    let t0 = Instant::now();
    let bucket = WarmingBucket::with_epoch(quota, warm, t0).unwrap();
    bucket.try_acquire(t0, 1).unwrap();
    // Ten admissions: the first eight spend the 8 stored permits, the last
    // two are fresh (500 ms each); `free` is when the next may start.
    let warmed = t0 + gaps(&bucket, t0, 9).iter().sum::<Duration>();
    let free = warmed + ms(500);
    assert!(bucket.stored(free) < 1e-9, "{}", bucket.stored(free));
    // 1 s idle after the next start: two permits back (W / max = 500 ms).
    assert!((bucket.stored(free + ms(1000)) - 2.0).abs() < 1e-9);
    // 2 s idle: 4 permits, the threshold: still the stable interval.
    let at = free + ms(2000);
    bucket.try_acquire(at, 1).unwrap();
    assert_eq!(
        bucket.try_acquire(at, 1).unwrap_err().retry_after(),
        Some(ms(500))
    );
    // Long idle: cold again, the first gap is 1,375 ms once more.
    let cold = at + Duration::from_secs(60);
    bucket.try_acquire(cold, 1).unwrap();
    assert_eq!(
        bucket.try_acquire(cold, 1).unwrap_err().retry_after(),
        Some(ms(1375))
    );
}

#[test]
fn admissions_per_second_from_cold_follow_the_curve() {
    // 100/s warming up over 1 s: S = 10 ms, C = 30 ms, threshold 50,
    // max 100, slope 0.4 ms per permit. Hammered from cold, count the
    // admissions per 250 ms window against the curve's integral.
    let quota = Quota::per_second(100).unwrap();
    let warm = WarmUp::new(Duration::from_secs(1));
    let t0 = Instant::now();
    let bucket = WarmingBucket::with_epoch(quota, warm, t0).unwrap();
    bucket.try_acquire(t0, 1).unwrap();
    let all = gaps(&bucket, t0, 400);
    let mut at = Duration::ZERO;
    let mut per_window = [0u32; 8];
    for gap in all {
        at += gap;
        let w = (at.as_millis() / 250) as usize;
        if w < per_window.len() {
            per_window[w] += 1;
        }
    }
    // The same counts from the formula, in nanoseconds: a permit taken
    // with s stored costs the trapezoid under S + slope · x between s and
    // s − 1 above the threshold, S below it.
    let mut expected = [0u32; 8];
    let mut t: u64 = 0;
    let mut stored: u64 = 100;
    loop {
        let cost = if stored > 50 {
            10_000_000 + 400_000 * (stored - 50) - 200_000
        } else {
            10_000_000
        };
        stored = stored.saturating_sub(1);
        t += cost;
        let w = (t / 250_000_000) as usize;
        if w >= expected.len() {
            break;
        }
        expected[w] += 1;
    }
    eprintln!("admitted per 250 ms from cold: {per_window:?} (formula {expected:?})");
    assert_eq!(per_window, expected);
    assert!(per_window[0] < per_window[7], "it speeds up");
    assert_eq!(per_window[7], 25, "stable: 100/s");
}

#[tokio::test(start_paused = true)]
async fn the_layer_sheds_what_a_cold_limiter_cannot_take_and_each_key_warms_on_its_own() {
    use floodwall_token_bucket::{WarmUpConfig, WarmUpLayer};
    use tower::{Layer, ServiceExt, service_fn};

    let (quota, warm) = guava();
    let layer = WarmUpLayer::builder(WarmUpConfig::new(quota, warm))
        .name("warm")
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: u8| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(1).await.unwrap();
    let refused = svc.clone().oneshot(1).await.unwrap_err();
    let rejection = floodwall_core::Rejected::find(refused.as_ref()).expect("a rejection");
    assert_eq!(rejection.retry_after(), Some(ms(1375)));
    tokio::time::advance(ms(1375)).await;
    svc.clone().oneshot(1).await.unwrap();

    let keyed = WarmUpLayer::builder(WarmUpConfig::new(quota, warm))
        .name("warm_keyed")
        .build_keyed(|key: &u8| Some(*key))
        .unwrap();
    let svc = keyed.layer(service_fn(|_: u8| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(1).await.unwrap();
    assert!(svc.clone().oneshot(1).await.is_err(), "key 1 is cold");
    svc.clone().oneshot(2).await.unwrap();
    assert!(svc.clone().oneshot(2).await.is_err(), "key 2 is cold too");
}
