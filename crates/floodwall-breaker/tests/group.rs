//! Breakers per key: one bad host is refused while the others serve; the
//! group stays within its bound, evicting idle closed breakers and keeping
//! open ones until they close.

use std::time::Duration;

use floodwall_breaker::{
    BreakerConfig, BreakerGroup, BreakerGroupConfig, BreakerGroupLayer, State,
};
use floodwall_core::{BoxError, Rejected};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

fn config(max_keys: usize) -> BreakerGroupConfig {
    BreakerGroupConfig {
        breaker: BreakerConfig {
            open_duration: Duration::from_secs(5),
            half_open_calls: 1,
            ..BreakerConfig::consecutive(3)
        },
        max_keys,
    }
}

/// Fails every call to host "bad"; answers the host otherwise.
fn hosts()
-> impl tower::Service<(&'static str, u32), Response = &'static str, Error = BoxError, Future: Send>
+ Clone {
    service_fn(|(host, _): (&'static str, u32)| async move {
        if host == "bad" {
            Err(BoxError::from("connection refused"))
        } else {
            Ok(host)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn one_bad_host_is_refused_while_the_others_serve() {
    let layer =
        BreakerGroupLayer::new(config(16), |(host, _): &(&'static str, u32)| Some(*host)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(hosts());
    for i in 0..3 {
        assert!(svc.clone().oneshot(("bad", i)).await.is_err());
    }
    assert_eq!(handle.state(&"bad"), Some(State::Open));
    let err = svc.clone().oneshot(("bad", 9)).await.unwrap_err();
    let open = Rejected::find(&*err).expect("a rejection");
    assert_eq!(open.kind(), floodwall_core::RejectKind::CircuitOpen);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
    // Every other host serves, each with its own closed breaker.
    for host in ["a", "b", "c"] {
        for i in 0..10 {
            assert_eq!(svc.clone().oneshot((host, i)).await.unwrap(), host);
        }
        assert_eq!(handle.state(&host), Some(State::Closed));
    }
    assert_eq!(handle.not_closed(), [("bad", State::Open)]);
    assert_eq!(handle.open_remaining(&"bad"), Some(Duration::from_secs(5)));
    // After the open duration, "bad" gets a probe; it fails and opens again.
    advance(Duration::from_secs(5)).await;
    let err = svc.clone().oneshot(("bad", 10)).await.unwrap_err();
    assert!(
        Rejected::find(&*err).is_none(),
        "the probe reached the host: {err}"
    );
    assert_eq!(handle.state(&"bad"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn a_million_keys_stay_within_the_bound_and_open_breakers_are_kept() {
    let group = BreakerGroup::new(config(1_000)).unwrap();
    let t0 = Instant::now();
    // Three hosts fail and open.
    for host in 0..3u32 {
        let b = group.breaker(&host, t0);
        for _ in 0..3 {
            let p = b.try_acquire(t0).unwrap();
            b.on_failure(p, t0);
        }
        assert_eq!(group.state(&host), Some(State::Open));
    }
    // A million other keys pass through, each once, later in time.
    for key in 3..1_000_000u32 {
        let now = t0 + Duration::from_micros(u64::from(key));
        let b = group.breaker(&key, now);
        let p = b.try_acquire(now).unwrap();
        b.on_success(p, now);
        assert!(group.len() <= 1_000);
    }
    assert_eq!(group.len(), 1_000);
    for host in 0..3u32 {
        assert_eq!(
            group.state(&host),
            Some(State::Open),
            "host {host} evicted while open"
        );
    }
    // The most recent keys are the ones kept.
    assert_eq!(group.state(&999_999), Some(State::Closed));
    assert_eq!(group.state(&500_000), None);
}

#[tokio::test(start_paused = true)]
async fn with_every_slot_open_new_keys_share_the_overflow_breaker() {
    let group = BreakerGroup::new(config(2)).unwrap();
    let t0 = Instant::now();
    for host in ["x", "y"] {
        let b = group.breaker(&host, t0);
        for _ in 0..3 {
            let p = b.try_acquire(t0).unwrap();
            b.on_failure(p, t0);
        }
    }
    let z = group.breaker(&"z", t0);
    assert!(std::sync::Arc::ptr_eq(&z, group.overflow()));
    assert_eq!(group.state(&"z"), None, "no slot of its own");
    assert_eq!(group.len(), 2);
    // Once "x" half-opens and closes, it is evictable again and "z" gets a
    // slot of its own.
    let later = t0 + Duration::from_secs(5);
    let x = group.breaker(&"x", later);
    let p = x.try_acquire(later).unwrap();
    x.on_success(p, later);
    assert_eq!(group.state(&"x"), Some(State::Closed));
    let z = group.breaker(&"z", later);
    assert!(!std::sync::Arc::ptr_eq(&z, group.overflow()));
    assert_eq!(group.state(&"z"), Some(State::Closed));
    assert_eq!(group.state(&"x"), None, "the closed one was evicted");
    assert_eq!(group.state(&"y"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_pass_without_a_breaker() {
    let layer = BreakerGroupLayer::new(config(4), |(host, _): &(&'static str, u32)| {
        (*host != "bad").then_some(*host)
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(hosts());
    for i in 0..10 {
        let err = svc.clone().oneshot(("bad", i)).await.unwrap_err();
        assert!(Rejected::find(&*err).is_none(), "never refused: {err}");
    }
    assert_eq!(handle.keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_the_group_changes_every_breaker_and_keeps_states() {
    let layer =
        BreakerGroupLayer::new(config(4), |(host, _): &(&'static str, u32)| Some(*host)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(hosts());
    for i in 0..3 {
        let _ = svc.clone().oneshot(("bad", i)).await;
    }
    let _ = svc.clone().oneshot(("good", 0)).await;
    let mut shorter = config(4);
    shorter.breaker.open_duration = Duration::from_secs(1);
    handle.reconfigure(shorter.clone()).unwrap();
    assert_eq!(handle.state(&"bad"), Some(State::Open), "state kept");
    assert_eq!(
        handle.open_remaining(&"bad"),
        Some(Duration::from_secs(1)),
        "a shorter opening ends sooner"
    );
    assert_eq!(
        handle.breaker(&"good").config().open_duration,
        Duration::from_secs(1)
    );
    let mut bad = shorter;
    bad.max_keys = 0;
    assert!(handle.reconfigure(bad).is_err());
    let mut auto = config(4);
    auto.breaker.automatic_half_open = true;
    assert!(
        BreakerGroup::<u32>::new(auto).is_err(),
        "half-open is per call"
    );
}
