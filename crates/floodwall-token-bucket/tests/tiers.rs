//! Per-key tiers: one keyed token bucket, a quota per tier (free, paid,
//! internal), bounded memory whatever the key count, each tier's keys
//! limited at their own quota, and a tier's quota changed live.

use std::collections::HashMap;
use std::time::Duration;

use floodwall_token_bucket::{Quota, TieredTokenBucket, TokenBucketLayer};
use tokio::time::Instant;

fn q(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

fn tier_of(key: &u64) -> &'static str {
    match key % 3 {
        0 => "free",
        1 => "paid",
        _ => "internal",
    }
}

fn plans(capacity: usize, t0: Instant) -> TieredTokenBucket<u64> {
    TieredTokenBucket::builder()
        .tier("free", q(1, 2))
        .tier("paid", q(1, 5))
        .tier("internal", q(1, 9))
        .classify(|key: &u64| tier_of(key))
        .capacity(capacity)
        .epoch(t0)
        .build()
        .unwrap()
}

#[test]
fn a_million_keys_across_three_tiers_stay_within_capacity_and_each_tier_gets_its_quota() {
    let t0 = Instant::now();
    let capacity = 50_000;
    let limiter = plans(capacity, t0);
    for key in 0..1_000_000u64 {
        limiter.try_acquire(&key, t0, 1).unwrap();
        if key % 100_000 == 0 {
            assert!(limiter.keys().len() <= capacity);
        }
    }
    assert!(limiter.keys().len() <= capacity, "{}", limiter.keys().len());
    // Fresh keys of each tier, hammered at one instant: exactly the burst.
    let t = t0 + Duration::from_millis(1);
    for (tier, burst) in [("free", 2), ("paid", 5), ("internal", 9)] {
        let keys = (2_000_000u64..).filter(|k| tier_of(k) == tier).take(100);
        for key in keys {
            let admitted = (0..20)
                .filter(|_| limiter.try_acquire(&key, t, 1).is_ok())
                .count();
            assert_eq!(admitted, burst, "key {key} ({tier})");
        }
    }
    assert!(limiter.keys().len() <= capacity);
    assert!(limiter.keys().evicted_idle() + limiter.keys().evicted_in_debt() > 900_000);
}

#[test]
fn changing_one_tier_live_carries_its_keys_and_leaves_the_others() {
    let t0 = Instant::now();
    let limiter = plans(1_000, t0);
    let (free, paid) = (3u64, 4u64);
    limiter.try_acquire(&free, t0, 2).unwrap(); // free: 0 left of 2
    limiter.try_acquire(&paid, t0, 1).unwrap(); // paid: 4 left of 5
    limiter.set_tier("paid", q(100, 3), t0).unwrap();
    assert_eq!(limiter.remaining(&paid, t0), 3, "capped at the new burst");
    assert_eq!(limiter.remaining(&free, t0), 0, "free untouched");
    assert_eq!(
        limiter.remaining(&40, t0),
        3,
        "a new paid key: the new burst"
    );
    let t = t0 + Duration::from_millis(10);
    assert_eq!(limiter.remaining(&free, t), 0, "free still refills at 1/s");
    assert_eq!(limiter.tiers().quota("paid"), Some(q(100, 3)));
    assert!(limiter.set_tier("gold", q(1, 1), t0).is_err());
}

#[test]
fn a_table_with_a_default_assigns_tiers_and_bad_tables_are_refused() {
    let t0 = Instant::now();
    let table = HashMap::from([("acme".to_owned(), "paid".to_owned())]);
    let limiter = TieredTokenBucket::builder()
        .tier("free", q(1, 1))
        .tier("paid", q(1, 4))
        .table(table, "free")
        .epoch(t0)
        .build()
        .unwrap();
    assert_eq!(limiter.tier_of(&"acme".to_owned()), "paid");
    assert_eq!(limiter.tier_of(&"nobody".to_owned()), "free");
    assert_eq!(limiter.remaining(&"acme".to_owned(), t0), 4);
    let bad = TieredTokenBucket::<String>::builder()
        .tier("free", q(1, 1))
        .table(HashMap::from([("x".to_owned(), "gold".to_owned())]), "free")
        .build()
        .unwrap_err();
    assert_eq!(bad.field(), "tiers.table");
    let none = TieredTokenBucket::<String>::builder()
        .tier("free", q(1, 1))
        .build()
        .unwrap_err();
    assert_eq!(none.field(), "tiers.classify");
    let twice = TieredTokenBucket::<String>::builder()
        .tier("free", q(1, 1))
        .tier("free", q(1, 2))
        .classify(|_: &String| "free")
        .build()
        .unwrap_err();
    assert_eq!(twice.field(), "tiers");
}

#[tokio::test]
async fn a_keyed_layer_over_tiers_limits_each_key_at_its_tier() {
    use tower::{Layer, ServiceExt, service_fn};
    let tiers = plans(1_000, Instant::now());
    let layer = TokenBucketLayer::builder(q(1, 2))
        .name("plans")
        .build_keyed_with(tiers, |key: &u64| Some(*key))
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: u64| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    let mut admitted = HashMap::new();
    for key in [3u64, 4, 5] {
        for _ in 0..12 {
            if svc.clone().oneshot(key).await.is_ok() {
                *admitted.entry(key).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(admitted, HashMap::from([(3, 2), (4, 5), (5, 9)]));
    // The tiers stay reachable through the handle, and change live.
    handle
        .limiter()
        .limiter()
        .set_tier("free", q(1, 4), Instant::now())
        .unwrap();
    assert_eq!(handle.limiter().limiter().remaining(&6, Instant::now()), 4);
}
