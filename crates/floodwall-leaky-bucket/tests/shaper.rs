//! The shaper: start slots, queue-full refusal, spacing.

use std::time::Duration;

use floodwall_leaky_bucket::{Denied, KeyedLeakyBucket, LeakyParams, LeakyShaper, Level};
use floodwall_ratelimit::Quota;
use proptest::prelude::*;
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn requests_get_start_slots_one_interval_apart() {
    // I = 100 ms, queue of 3.
    let shaper = LeakyShaper::new(Quota::per_second(10).unwrap(), 3);
    let t0 = Instant::now();
    let waits: Vec<_> = (0..4).map(|_| shaper.admit(t0).unwrap()).collect();
    assert_eq!(waits, [Duration::ZERO, 100 * MS, 200 * MS, 300 * MS]);
    assert_eq!(shaper.queued(t0), 3);
    assert_eq!(shaper.delay(t0), 400 * MS);
    // Full: s − t = 400 ms > q·I = 300 ms. Room comes when the first waiter
    // starts, at 100 ms.
    assert_eq!(
        shaper.admit(t0),
        Err(Denied::RateLimited {
            retry_after: 100 * MS
        })
    );
    advance(100 * MS).await;
    assert_eq!(
        shaper.admit(Instant::now()),
        Ok(300 * MS),
        "starts at 400 ms"
    );
    assert!(shaper.admit(Instant::now()).is_err(), "full again");
}

#[tokio::test(start_paused = true)]
async fn a_late_arrival_starts_at_once_and_the_queue_drains() {
    let shaper = LeakyShaper::new(Quota::per_second(10).unwrap(), 2);
    let t0 = Instant::now();
    assert_eq!(shaper.admit(t0), Ok(Duration::ZERO));
    advance(150 * MS).await;
    assert_eq!(shaper.admit(Instant::now()), Ok(Duration::ZERO));
    assert_eq!(shaper.admit(Instant::now()), Ok(100 * MS));
    advance(Duration::from_secs(10)).await;
    assert_eq!(shaper.queued(Instant::now()), 0);
    assert_eq!(shaper.delay(Instant::now()), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_queue_of_zero_allows_only_free_slots() {
    let shaper = LeakyShaper::new(Quota::per_second(10).unwrap(), 0);
    let t0 = Instant::now();
    assert_eq!(shaper.admit(t0), Ok(Duration::ZERO));
    assert_eq!(
        shaper.admit(t0),
        Err(Denied::RateLimited {
            retry_after: 100 * MS
        })
    );
    advance(100 * MS).await;
    assert_eq!(shaper.admit(Instant::now()), Ok(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn the_rate_burst_is_ignored_starts_stay_spaced() {
    let shaper = LeakyShaper::new(Quota::per_second(10).unwrap().with_burst(50).unwrap(), 5);
    let t0 = Instant::now();
    assert_eq!(shaper.admit(t0), Ok(Duration::ZERO));
    assert_eq!(shaper.admit(t0), Ok(100 * MS));
}

#[tokio::test(start_paused = true)]
async fn keyed_shapers_queue_per_key() {
    let shapers =
        KeyedLeakyBucket::new(LeakyParams::shaper(Quota::per_second(10).unwrap(), 1), 100);
    let t0 = Instant::now();
    let admit = |key: &u8| {
        shapers
            .reserve(key, t0, 1, Duration::MAX)
            .map(|(wait, ())| wait)
    };
    for key in [1u8, 2] {
        assert_eq!(admit(&key), Ok(Duration::ZERO));
        assert_eq!(admit(&key), Ok(100 * MS));
        assert_eq!(
            admit(&key),
            Err(Denied::RateLimited {
                retry_after: 100 * MS
            }),
            "full: room again when the first waiter starts"
        );
        assert_eq!(shapers.inspect(&key, t0, Level::queued), Some(1));
    }
    assert_eq!(shapers.inspect(&3, t0, Level::queued), None);
    assert_eq!(shapers.keys().len(), 2);
}

proptest! {
    /// On random arrivals, admitted requests start one interval apart or
    /// more, never wait longer than the queue allows, and are refused only
    /// when the queue is really full.
    #[test]
    fn starts_are_spaced_and_waits_bounded(
        rate in 1u32..=100,
        queue in 0u32..=10,
        arrivals in prop::collection::vec(0u64..200_000_000, 1..300),
    ) {
        let quota = Quota::per_second(rate).unwrap();
        let interval = quota.interval().as_nanos() as u64;
        let epoch = Instant::now();
        let shaper = LeakyShaper::with_epoch(quota, queue, epoch);
        let mut t = 0u64;
        let mut last_start: Option<u64> = None;
        for dt in arrivals {
            t += dt;
            let now = epoch + Duration::from_nanos(t);
            let expected_slot = last_start.map_or(t, |s| (s + interval).max(t));
            match shaper.admit(now) {
                Ok(wait) => {
                    let start = t + wait.as_nanos() as u64;
                    prop_assert_eq!(start, expected_slot);
                    prop_assert!(wait.as_nanos() as u64 <= u64::from(queue) * interval);
                    if let Some(prev) = last_start {
                        prop_assert!(start - prev >= interval);
                    }
                    last_start = Some(start);
                }
                Err(Denied::RateLimited { retry_after }) => {
                    let room_at = expected_slot - u64::from(queue) * interval;
                    prop_assert!(expected_slot - t > u64::from(queue) * interval);
                    prop_assert_eq!(retry_after.as_nanos() as u64, room_at - t);
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}
