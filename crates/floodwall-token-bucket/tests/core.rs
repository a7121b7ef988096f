//! The SPECS.md token-bucket semantics, under paused (virtual) time.

use std::time::Duration;

use floodwall_token_bucket::{Denied, KeyedTokenBucket, Quota, TokenBucket};
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

#[tokio::test(start_paused = true)]
async fn weight_zero_always_conforms() {
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

#[tokio::test(start_paused = true)]
async fn reservations_queue_one_interval_apart_and_refunds_return_tokens() {
    let bucket = TokenBucket::new(quota(10, 1));
    let t0 = Instant::now();
    let max = Duration::from_millis(250);
    assert_eq!(bucket.reserve(t0, 1, max), Ok(Duration::ZERO));
    assert_eq!(bucket.reserve(t0, 1, max), Ok(100 * MS));
    assert_eq!(bucket.reserve(t0, 1, max), Ok(200 * MS));
    assert_eq!(
        bucket.reserve(t0, 1, max),
        limited(300 * MS),
        "a wait above the bound is refused, with the wait it would have needed"
    );
    // The last waiter gives up: the next reservation takes its place.
    bucket.refund(t0, 1);
    assert_eq!(bucket.reserve(t0, 1, max), Ok(200 * MS));
    // Both waiters give up: the bucket is as if only the first had come.
    bucket.refund(t0, 1);
    bucket.refund(t0, 1);
    assert_eq!(bucket.try_acquire(t0, 1), limited(100 * MS));
    advance(100 * MS).await;
    assert_eq!(bucket.try_acquire(Instant::now(), 1), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn refund_never_raises_the_bucket_above_its_burst() {
    let bucket = TokenBucket::new(quota(10, 3));
    let now = Instant::now();
    bucket.refund(now, 5);
    assert_eq!(bucket.available(now), 3);
    let admitted = (0..10)
        .filter(|_| bucket.try_acquire(now, 1).is_ok())
        .count();
    assert_eq!(admitted, 3);
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
    assert_eq!(keyed.len(), 2, "a refused new key is not remembered");
    assert_eq!(keyed.available(&"zzz", now), 10);
    advance(10 * MS).await;
    assert_eq!(keyed.try_acquire(&"a", Instant::now(), 1), Ok(()));
    assert_eq!(keyed.try_acquire(&"a", Instant::now(), 0), Ok(()));
    // Reserve and refund per key.
    let max = Duration::from_millis(100);
    assert_eq!(
        keyed.reserve(&"b", Instant::now(), 1, max),
        Ok(Duration::ZERO)
    );
    assert_eq!(keyed.reserve(&"b", Instant::now(), 1, max), Ok(10 * MS));
    keyed.refund(&"b", Instant::now(), 1);
    assert_eq!(keyed.reserve(&"b", Instant::now(), 1, max), Ok(10 * MS));
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
    assert_eq!(keyed.len(), 1, "only the key still in debt stays");
    assert_eq!(keyed.evicted_idle(), 100);
    assert_eq!(
        keyed.try_acquire(&1000, Instant::now(), 1),
        limited(50 * MS),
        "the survivor kept its state through the rebuild"
    );
    for k in 0..100u32 {
        assert_eq!(keyed.try_acquire(&k, Instant::now(), 1), Ok(()));
    }
}
