//! The SPECS.md token-bucket semantics, under paused (virtual) time.

use std::time::Duration;

use floodwall_token_bucket::{Denied, KeyedTokenBucket, Quota, Reservation, Tat, TokenBucket};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

fn limited<T>(d: Duration) -> Result<T, Denied> {
    Err(Denied::RateLimited { retry_after: d })
}

#[tokio::test(start_paused = true)]
async fn spec_example_25_calls_admit_exactly_10() {
    let bucket = TokenBucket::new(quota(100, 10));
    let now = Instant::now();
    let admitted = (0..25)
        .filter(|_| bucket.try_acquire(now, 1).is_ok())
        .count();
    assert_eq!(admitted, 10);
}

#[tokio::test(start_paused = true)]
async fn starts_full_and_refills_one_token_per_interval() {
    let bucket = TokenBucket::new(quota(100, 10));
    assert_eq!(bucket.available(Instant::now()), 10);
    for _ in 0..10 {
        bucket.try_acquire(Instant::now(), 1).unwrap();
    }
    assert_eq!(bucket.available(Instant::now()), 0);
    advance(9 * MS).await;
    assert_eq!(bucket.available(Instant::now()), 0, "not yet a whole token");
    advance(MS).await;
    assert_eq!(bucket.available(Instant::now()), 1);
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(bucket.try_acquire(Instant::now(), 1), limited(10 * MS));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exact() {
    let bucket = TokenBucket::new(quota(100, 10));
    let t0 = Instant::now();
    for _ in 0..10 {
        bucket.try_acquire(t0, 1).unwrap();
    }
    // tat' = 10I + I = 110 ms; retry = tat' − b·I − t = 10 ms.
    assert_eq!(bucket.try_acquire(t0, 1), limited(10 * MS));
    advance(Duration::from_nanos(9_999_999)).await;
    assert_eq!(
        bucket.try_acquire(Instant::now(), 1),
        limited(Duration::from_nanos(1)),
        "one nanosecond early is still early"
    );
    advance(Duration::from_nanos(1)).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
    // Following the advice exactly always succeeds.
    for _ in 0..100 {
        match bucket.try_acquire(Instant::now(), 1) {
            Ok(()) => {}
            Err(Denied::RateLimited { retry_after }) => {
                advance(retry_after).await;
                assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rejection_changes_nothing() {
    let bucket = TokenBucket::new(quota(10, 2));
    let t0 = Instant::now();
    bucket.try_acquire(t0, 2).unwrap();
    for _ in 0..1000 {
        assert_eq!(bucket.try_acquire(t0, 1), limited(100 * MS));
    }
    advance(100 * MS).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn burst_caps_after_long_idleness() {
    let bucket = TokenBucket::new(quota(100, 10));
    let t0 = Instant::now();
    bucket.try_acquire(t0, 10).unwrap();
    advance(Duration::from_secs(3600)).await;
    let now = Instant::now();
    assert_eq!(bucket.available(now), 10);
    let admitted = (0..1000)
        .filter(|_| bucket.try_acquire(now, 1).is_ok())
        .count();
    assert_eq!(
        admitted, 10,
        "an hour of idleness still holds only b tokens"
    );
}

#[tokio::test(start_paused = true)]
async fn weighted_acquire() {
    let bucket = TokenBucket::new(quota(100, 10));
    let t0 = Instant::now();
    assert_eq!(bucket.try_acquire(t0, 4), Ok(()));
    assert_eq!(bucket.try_acquire(t0, 4), Ok(()));
    // 2 tokens left; 4 more arrive after 2 more intervals.
    assert_eq!(bucket.try_acquire(t0, 4), limited(20 * MS));
    assert_eq!(bucket.available(t0), 2);
    assert_eq!(bucket.try_acquire(t0, 2), Ok(()));
    advance(20 * MS).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 3), limited(10 * MS));
    assert_eq!(bucket.try_acquire(Instant::now(), 2), Ok(()));
    // The whole burst at once is fine on a full bucket.
    advance(Duration::from_secs(1)).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 10), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn exceeding_the_burst_is_its_own_error_and_not_a_wait() {
    let bucket = TokenBucket::new(quota(100, 10));
    let now = Instant::now();
    let err = bucket.try_acquire(now, 11).unwrap_err();
    assert_eq!(
        err,
        Denied::ExceedsBurst {
            requested: 11,
            burst: 10
        }
    );
    assert_eq!(err.retry_after(), None);
    assert_eq!(bucket.available(now), 10, "nothing was taken");
    assert!(
        bucket.reserve(now, 11, Duration::from_secs(3600)).is_err(),
        "no wait makes it conform"
    );
}

/// Without wait-mode reservations the TAT never runs more than one burst
/// ahead, so a request of weight 0 always conforms.
#[tokio::test(start_paused = true)]
async fn weight_zero_conforms_without_reservations() {
    let bucket = TokenBucket::new(quota(1, 1));
    let now = Instant::now();
    bucket.try_acquire(now, 1).unwrap();
    assert_eq!(bucket.try_acquire(now, 0), Ok(()));
    assert_eq!(bucket.try_acquire(now, 1), limited(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn fractional_rate_half_per_second() {
    let bucket = TokenBucket::new(Quota::per_second_f64(0.5).unwrap());
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(
        bucket.try_acquire(Instant::now(), 1),
        limited(Duration::from_secs(2))
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        bucket.try_acquire(Instant::now(), 1),
        limited(Duration::from_secs(1))
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
}

fn wait_of(r: Result<Reservation, Denied>) -> Result<Duration, Denied> {
    r.map(|r| r.wait())
}

#[tokio::test(start_paused = true)]
async fn reservations_queue_one_interval_apart() {
    let bucket = TokenBucket::new(quota(10, 1));
    let t0 = Instant::now();
    let max = Duration::from_millis(250);
    assert_eq!(wait_of(bucket.reserve(t0, 1, max)), Ok(Duration::ZERO));
    assert_eq!(wait_of(bucket.reserve(t0, 1, max)), Ok(100 * MS));
    assert_eq!(wait_of(bucket.reserve(t0, 1, max)), Ok(200 * MS));
    assert_eq!(
        wait_of(bucket.reserve(t0, 1, max)),
        limited(300 * MS),
        "a wait above the bound is refused, with the wait it would have needed"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_newest_reservation_gives_its_slot_back() {
    let bucket = TokenBucket::new(quota(10, 1));
    let t0 = Instant::now();
    let max = Duration::from_millis(250);
    let _first = bucket.reserve(t0, 1, max).unwrap();
    let second = bucket.reserve(t0, 1, max).unwrap();
    let third = bucket.reserve(t0, 1, max).unwrap();
    assert!(bucket.cancel(third, t0));
    assert!(
        !bucket.cancel(third, t0),
        "a reservation is given back once"
    );
    // The next request takes the cancelled slot, exactly.
    let again = bucket.reserve(t0, 1, max).unwrap();
    assert_eq!(again.wait(), 200 * MS);
    assert!(bucket.cancel(again, t0));
    assert!(bucket.cancel(second, t0));
    // Back to the state after the first request alone.
    assert_eq!(bucket.try_acquire(t0, 1), limited(100 * MS));
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_earlier_reservation_never_doubles_a_slot() {
    let bucket = TokenBucket::new(quota(10, 1));
    let t0 = Instant::now();
    let max = Duration::from_secs(1);
    bucket.try_acquire(t0, 1).unwrap();
    let w1 = bucket.reserve(t0, 1, max).unwrap(); // starts at +100 ms
    let w2 = bucket.reserve(t0, 1, max).unwrap(); // starts at +200 ms
    assert_eq!((w1.wait(), w2.wait()), (100 * MS, 200 * MS));
    advance(10 * MS).await;
    // w1 gives up, but w2 keeps its start: the slot at +100 ms goes unused
    // rather than being handed to a newcomer who would start with w2.
    assert!(!bucket.cancel(w1, Instant::now()));
    let newcomer = bucket.reserve(Instant::now(), 1, max).unwrap();
    assert_eq!(newcomer.wait(), 290 * MS, "starts at +300 ms, after w2");
    // Once the unused slot's time has passed, the bucket is whole again.
    advance(Duration::from_secs(1)).await;
    assert_eq!(bucket.available(Instant::now()), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_after_the_start_time_changes_nothing() {
    let bucket = TokenBucket::new(quota(10, 2));
    let t0 = Instant::now();
    let r = bucket.reserve(t0, 2, Duration::ZERO).unwrap();
    advance(300 * MS).await;
    assert!(!bucket.cancel(r, Instant::now()), "already refilled");
    assert_eq!(bucket.available(Instant::now()), 2);
    let admitted = (0..10)
        .filter(|_| bucket.try_acquire(Instant::now(), 1).is_ok())
        .count();
    assert_eq!(admitted, 2, "never more than the burst");
}

#[tokio::test(start_paused = true)]
async fn huge_wait_bounds_are_capped_not_overflowed() {
    // The slowest quota a config accepts (one token per 365 days): each
    // reservation waits a year longer, up to the cap on any wait.
    let slow = Quota::every(Duration::from_secs(86_400 * 365)).unwrap();
    let bucket = TokenBucket::new(slow);
    let t0 = Instant::now();
    let mut waits = Vec::new();
    let mut refused = false;
    for _ in 0..100 {
        match bucket.reserve(t0, 1, Duration::MAX) {
            Ok(r) => waits.push(r.wait()),
            Err(Denied::RateLimited { .. }) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "the capped wait bound ends the reservations");
    assert!(
        waits.len() >= 30,
        "decades of yearly tokens: {}",
        waits.len()
    );
    assert!(waits.windows(2).all(|w| w[0] < w[1]));
    assert!(*waits.last().unwrap() <= floodwall_token_bucket::MAX_WAIT);
    assert!(bucket.try_acquire(t0, 1).is_err());
}

#[tokio::test(start_paused = true)]
async fn instants_before_the_epoch_count_as_the_epoch() {
    let early = Instant::now();
    advance(Duration::from_secs(5)).await;
    let bucket = TokenBucket::new(quota(1, 1));
    assert_eq!(bucket.try_acquire(early, 1), Ok(()));
    assert_eq!(
        bucket.try_acquire(early, 1),
        limited(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_buckets_follow_the_same_rules_per_key() {
    let keyed = KeyedTokenBucket::new(quota(100, 10), 1000);
    let now = Instant::now();
    for key in ["a", "b"] {
        let admitted = (0..25)
            .filter(|_| keyed.try_acquire(&key, now, 1).is_ok())
            .count();
        assert_eq!(admitted, 10, "key {key}");
    }
    assert_eq!(keyed.try_acquire(&"a", now, 1), limited(10 * MS));
    assert_eq!(
        keyed.try_acquire(&"c", now, 11),
        Err(Denied::ExceedsBurst {
            requested: 11,
            burst: 10
        })
    );
    assert_eq!(keyed.keys().len(), 2, "a refused new key is not remembered");
    assert_eq!(keyed.remaining(&"zzz", now), 10);
    advance(10 * MS).await;
    assert_eq!(keyed.try_acquire(&"a", Instant::now(), 1), Ok(()));
    assert_eq!(keyed.try_acquire(&"a", Instant::now(), 0), Ok(()));
    // Reserve and cancel per key.
    let max = Duration::from_millis(100);
    let (first, _) = keyed.reserve(&"b", Instant::now(), 1, max).unwrap();
    assert_eq!(first, Duration::ZERO);
    let (wait, r) = keyed.reserve(&"b", Instant::now(), 1, max).unwrap();
    assert_eq!(wait, 10 * MS);
    let a_before = keyed.inspect(&"a", Instant::now(), Tat::time_to_full);
    keyed.refund(&"a", r, Instant::now());
    assert_eq!(
        keyed.inspect(&"a", Instant::now(), Tat::time_to_full),
        a_before,
        "another key's bucket is untouched"
    );
    keyed.refund(&"b", r, Instant::now());
    assert_eq!(
        keyed
            .reserve(&"b", Instant::now(), 1, max)
            .map(|(wait, _)| wait),
        Ok(10 * MS),
        "b's cancelled token is back"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_sweep_drops_only_refilled_keys() {
    let keyed = KeyedTokenBucket::new(quota(10, 1), 1000);
    let t0 = Instant::now();
    for k in 0..100u32 {
        keyed.try_acquire(&k, t0, 1).unwrap();
    }
    advance(50 * MS).await;
    keyed.try_acquire(&1000, Instant::now(), 1).unwrap();
    advance(50 * MS).await;
    keyed.sweep(Instant::now());
    assert_eq!(keyed.keys().len(), 1, "only the key still in debt stays");
    assert_eq!(keyed.keys().evicted_idle(), 100);
    assert_eq!(
        keyed.try_acquire(&1000, Instant::now(), 1),
        limited(50 * MS),
        "the survivor kept its state through the rebuild"
    );
    for k in 0..100u32 {
        assert_eq!(keyed.try_acquire(&k, Instant::now(), 1), Ok(()));
    }
}
