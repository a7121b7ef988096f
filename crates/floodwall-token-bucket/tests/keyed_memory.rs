//! The keyed limiter's memory stays under its capacity whatever the number
//! of distinct keys.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use floodwall_token_bucket::{KeyedTokenBucket, Quota};
use tokio::time::Instant;

const CAPACITY: usize = 10_000;

fn ip(i: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(u128::from(i) * 0x9E37_79B9_7F4A_7C15))
}

/// Upper bound on the heap a full map may hold: the slots themselves (never
/// more than the capacity: the slot vectors grow exactly to it) plus a hash
/// table of `u32` indices with one control byte each. Under churn hashbrown
/// may double a table whose tombstones fill it, so a table can hold up to
/// about 4 buckets per live item: 20 bytes a key. Plus a constant per shard
/// for control-group padding.
fn memory_bound<K>(capacity: usize) -> usize {
    let slot = std::mem::size_of::<(K, AtomicU64)>();
    capacity * (slot + 20) + 256 * 64
}

#[test]
fn a_million_keys_in_debt_stay_within_capacity() {
    // A slow quota: every key stays in debt for a minute, so the map is full
    // of keys it may not drop losslessly and must evict by the capacity rule.
    let t0 = Instant::now();
    let keyed = KeyedTokenBucket::with_epoch(Quota::per_minute(1).unwrap(), CAPACITY, t0);
    let mut peak_memory = 0;
    for i in 0..1_000_000u64 {
        let now = t0 + Duration::from_micros(i);
        keyed.try_acquire(&ip(i), now, 1).unwrap();
        if i % 1_000 == 0 {
            assert!(
                keyed.keys().len() <= CAPACITY,
                "{} keys after {i}",
                keyed.keys().len()
            );
            peak_memory = peak_memory.max(keyed.keys().memory_bytes());
        }
    }
    assert_eq!(keyed.keys().len(), CAPACITY, "full, and not one key more");
    let memory = keyed.keys().memory_bytes();
    assert!(memory <= memory_bound::<IpAddr>(CAPACITY), "{memory} bytes");
    assert!(
        peak_memory <= memory_bound::<IpAddr>(CAPACITY),
        "{peak_memory} bytes"
    );
    assert_eq!(
        keyed.keys().evicted_in_debt() + keyed.keys().evicted_idle(),
        1_000_000 - CAPACITY as u64
    );
    // The most recent keys are the ones remembered... mostly: eviction picks
    // the sampled key closest to refilling, which is an old one.
    let recent = (990_000..1_000_000u64)
        .filter(|&i| keyed.remaining(&ip(i), t0 + Duration::from_secs(1)) == 0)
        .count();
    assert!(recent > 5_000, "only {recent} of the last 10,000 keys kept");
}

#[test]
fn a_million_short_lived_keys_are_dropped_losslessly() {
    // A fast quota: a key refills 10 ms after its request, so keys go idle
    // quickly and the map never has to forget a key that is still in debt.
    let t0 = Instant::now();
    let keyed = KeyedTokenBucket::with_epoch(Quota::per_second(100).unwrap(), CAPACITY, t0);
    for i in 0..1_000_000u64 {
        // 100 new keys per millisecond: about 1,000 keys in debt at a time.
        let now = t0 + Duration::from_micros(i * 10);
        keyed.try_acquire(&i, now, 1).unwrap();
        if i % 1_000 == 0 {
            assert!(keyed.keys().len() <= CAPACITY);
        }
    }
    assert_eq!(
        keyed.keys().evicted_in_debt(),
        0,
        "only idle keys were dropped"
    );
    assert!(keyed.keys().memory_bytes() <= memory_bound::<u64>(CAPACITY));
    keyed.sweep(t0 + Duration::from_secs(3600));
    assert!(keyed.keys().is_empty());
    assert!(
        keyed.keys().memory_bytes() < 64 * 1024,
        "sweep released the memory: {} bytes left",
        keyed.keys().memory_bytes()
    );
}
