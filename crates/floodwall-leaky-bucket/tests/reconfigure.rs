//! Leaky buckets reconfigured while they serve (SPECS.md,
//! "Reconfiguration"): a meter keeps its room, capped at the new
//! capacity; a shaper's slots already given are kept and new ones follow
//! the new interval from the last one given; keyed buckets change every
//! key at once; the layer's handle changes its bucket.

use std::time::Duration;

use floodwall_leaky_bucket::{
    KeyedLeakyBucket, LeakyBucketConfig, LeakyBucketLayer, LeakyMeter, LeakyParams, LeakyShaper,
    Quota,
};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_shapers_given_slots_are_kept_and_new_ones_follow_the_new_interval() {
    let t0 = Instant::now();
    let shaper = LeakyShaper::with_epoch(Quota::per_second(10).unwrap(), 3, t0);
    let waits: Vec<Duration> = (0..3).map(|_| shaper.admit(t0).unwrap()).collect();
    assert_eq!(waits, [ms(0), ms(100), ms(200)]);
    shaper.reconfigure(Quota::per_second(20).unwrap(), 5, t0);
    assert_eq!(shaper.queue(), 5);
    assert_eq!(
        shaper.admit(t0).unwrap(),
        ms(250),
        "50 ms after the last slot given"
    );
    // The new horizon, 5 × 50 ms from now, is reached: the next slot (300 ms)
    // waits for room.
    assert_eq!(shaper.horizon(), ms(250));
    assert_eq!(shaper.admit(t0).unwrap_err().retry_after(), Some(ms(50)));
}

#[test]
fn a_meter_keeps_its_room_capped_at_the_new_capacity() {
    let t0 = Instant::now();
    let meter = LeakyMeter::with_epoch(Quota::per_second(10).unwrap().with_burst(5).unwrap(), t0);
    meter.try_acquire(t0, 4).unwrap(); // level 4 of 5: room for 1
    meter.reconfigure(Quota::per_second(10).unwrap().with_burst(3).unwrap(), t0);
    assert_eq!(
        meter.level(t0),
        2,
        "the room (1) carried over: level 2 of 3"
    );
    meter.try_acquire(t0, 1).unwrap();
    assert!(
        meter.try_acquire(t0, 1).is_err(),
        "full at the new capacity of 3"
    );
    // Lowered below the room it has: the room is capped at the capacity.
    let empty = LeakyMeter::with_epoch(Quota::per_second(10).unwrap().with_burst(5).unwrap(), t0);
    empty.reconfigure(Quota::per_second(10).unwrap().with_burst(2).unwrap(), t0);
    assert_eq!(empty.level(t0), 0);
}

#[test]
fn every_key_of_a_keyed_meter_changes_at_once() {
    let t0 = Instant::now();
    let keys = KeyedLeakyBucket::with_epoch(
        LeakyParams::meter(Quota::per_second(1).unwrap().with_burst(4).unwrap()),
        100,
        t0,
    );
    keys.try_acquire(&"a", t0, 3).unwrap();
    keys.reconfigure(
        LeakyParams::meter(Quota::per_second(1).unwrap().with_burst(6).unwrap()),
        t0,
    );
    assert_eq!(keys.remaining(&"a", t0), 1, "one unit of room, as before");
    assert_eq!(keys.remaining(&"b", t0), 6);
}

#[tokio::test]
async fn the_layer_handle_reconfigures_its_bucket() {
    use tower::{Layer, ServiceExt, service_fn};
    let quota = Quota::per_minute(2).unwrap();
    let layer = LeakyBucketLayer::builder(LeakyBucketConfig::from(quota))
        .name("live_leaky")
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Ok::<_, floodwall_core::BoxError>(())
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert!(svc.clone().oneshot(()).await.is_err());
    // A full meter stays full when its capacity is raised: the room it
    // had (none) carries over.
    handle.reconfigure(LeakyParams::meter(Quota::per_minute(3).unwrap()));
    assert!(svc.clone().oneshot(()).await.is_err());
    assert_eq!(handle.policy().quota(), 3);
    assert_eq!(handle.limiter().quota(), Quota::per_minute(3).unwrap());
}
