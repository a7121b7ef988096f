//! The Tower layer: refusals, classification, cancellation, sharing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_breaker::{BreakerConfig, BreakerLayer, CircuitOpen, State, WindowKind};
use floodwall_core::{BoxError, DeadlineExceeded, HttpClassifier, Phase, RejectKind, Rejected};
use tokio::time::advance;
use tower::{Layer, ServiceExt, service_fn};

fn small() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count(4),
        minimum_calls: 4,
        half_open_calls: 1,
        open_duration: Duration::from_secs(5),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn refused_calls_never_reach_the_service_and_never_count() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let layer = BreakerLayer::builder(small())
        .name("rooms")
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |_: ()| {
        c.fetch_add(1, Ordering::Relaxed);
        async { Err::<(), BoxError>("down".into()) }
    }));
    for _ in 0..4 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
    for _ in 0..100 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        let r = Rejected::find(&*err).unwrap();
        assert_eq!(r.kind(), RejectKind::CircuitOpen);
        assert_eq!(r.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(r.get::<CircuitOpen>().unwrap().state(), State::Open);
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "nothing was sent while open"
    );
    assert_eq!(
        handle.counts().failures,
        4,
        "its own refusals are not failures"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_succeeds_closes_the_breaker() {
    let fail = Arc::new(AtomicU32::new(1));
    let f = fail.clone();
    let layer = BreakerLayer::new(small()).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |_: ()| {
        let failing = f.load(Ordering::Relaxed) == 1;
        async move {
            if failing {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }
    }));
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(handle.state(), State::Open);
    fail.store(0, Ordering::Relaxed);
    advance(Duration::from_secs(5)).await;
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_and_decides_nothing() {
    let layer = BreakerLayer::new(small()).unwrap();
    let handle = layer.handle();
    let slow = Arc::new(AtomicU32::new(0));
    let s = slow.clone();
    let svc = layer.layer(service_fn(move |_: ()| {
        let slow = s.load(Ordering::Relaxed) == 1;
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            } else {
                Err::<(), BoxError>("down".into())
            }
        }
    }));
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    advance(Duration::from_secs(5)).await;
    slow.store(1, Ordering::Relaxed);
    let probe = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(
        svc.clone().oneshot(()).await.is_err(),
        "the only probe slot is taken"
    );
    probe.abort();
    let _ = probe.await;
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "the dropped probe decided nothing"
    );
    slow.store(0, Ordering::Relaxed);
    // The slot is free again: this probe fails and reopens the breaker.
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(
        Rejected::find(&*err).is_none(),
        "it was sent: the service's own error"
    );
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn http_5xx_counts_4xx_does_not() {
    let layer = BreakerLayer::builder(small())
        .classify(HttpClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|status: u16| async move {
        Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
    }));
    for status in [404, 400, 200, 404, 500] {
        svc.clone().oneshot(status).await.unwrap();
    }
    assert_eq!(handle.counts().failures, 1);
    assert_eq!(handle.state(), State::Closed);
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(
        handle.state(),
        State::Open,
        "500 and 503 are 2 of the last 4: 50 %"
    );
}

#[tokio::test(start_paused = true)]
async fn handles_control_every_clone() {
    let layer = BreakerLayer::new(BreakerConfig::default()).unwrap();
    let handle = layer.handle();
    let a = layer.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    let b = layer
        .clone()
        .layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    let mut rx = handle.subscribe();
    handle.force_open();
    assert!(a.clone().oneshot(()).await.is_err());
    assert!(b.clone().oneshot(()).await.is_err());
    assert_eq!(*rx.borrow_and_update(), State::ForcedOpen);
    handle.reset();
    a.clone().oneshot(()).await.unwrap();
    b.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.counts().calls, 2);
}

#[cfg(feature = "serde")]
#[test]
fn config_as_data() {
    let config: BreakerConfig = serde_json::from_str(
        r#"{ "window": { "count": 20 }, "minimum_calls": 10, "open_duration": "30s",
             "growth": { "multiplier": 2.0, "max": "5m", "jitter": 0.1 }, "ramp": "10s" }"#,
    )
    .unwrap();
    assert_eq!(config.window, WindowKind::Count(20));
    assert_eq!(config.open_duration, Duration::from_secs(30));
    assert!(config.validate().is_ok());
    assert!(serde_json::from_str::<BreakerConfig>(r#"{ "windw": { "count": 1 } }"#).is_err());
}

/// With slow-call timing off the layer reads no clock on the closed path;
/// a trip must still time the open state from the moment it happens.
#[tokio::test(start_paused = true)]
async fn without_slow_call_timing_the_open_state_still_lasts_its_duration() {
    let layer = BreakerLayer::new(BreakerConfig {
        detect_slow_calls: false,
        ..small()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>("down".into())
    }));
    advance(Duration::from_secs(3600)).await; // long after the breaker was built
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(handle.state(), State::Open);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().retry_after(),
        Some(Duration::from_secs(5)),
        "open for its full duration from the trip"
    );
}

/// A floodwall refusal made below the breaker (a throttle, say).
#[derive(Debug)]
struct Refusal(RejectKind);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused below: {}", self.0.as_str())
    }
}

impl std::error::Error for Refusal {}

impl floodwall_core::Rejection for Refusal {
    fn kind(&self) -> RejectKind {
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_from_below_and_caller_deadlines_are_not_failures_but_full_budget_timeouts_are() {
    let layer = BreakerLayer::builder(small()).build().unwrap();
    let handle = layer.handle();
    for kind in [
        RejectKind::Throttled,
        RejectKind::Overloaded,
        RejectKind::Prioritized,
        RejectKind::RateLimited,
        RejectKind::CircuitOpen,
    ] {
        let svc = layer.layer(service_fn(move |_: ()| async move {
            Err::<(), BoxError>(Rejected::boxed(Refusal(kind)))
        }));
        for _ in 0..10 {
            let err = svc.clone().oneshot(()).await.unwrap_err();
            // The refusal passes through unchanged.
            assert_eq!(Rejected::find(&*err).unwrap().kind(), kind);
        }
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "50 refusals from below opened it"
    );
    assert_eq!(
        handle.counts().calls,
        0,
        "refusals from below were recorded"
    );
    // A deadline refusal that never reached the dependency (a queue
    // refusing a request it could not serve in time) says nothing either.
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>(Rejected::boxed(Refusal(RejectKind::DeadlineExceeded)))
    }));
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    // Nor does an outbound call that ran out of a deadline its caller
    // imposed, shorter than the call's own budget.
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>(Rejected::boxed(DeadlineExceeded::new(
            Phase::AwaitingResponse,
            true,
        )))
    }));
    for _ in 0..10 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.counts().calls, 0);
    // A call that had its full budget and timed out: the dependency's
    // failure.
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>(Rejected::boxed(DeadlineExceeded::new(
            Phase::AwaitingResponse,
            false,
        )))
    }));
    for _ in 0..4 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
}

/// Advances virtual time by `d` and lets spawned tasks run.
async fn settle(d: Duration) {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    advance(d).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_automatic_transition_moves_to_half_open_without_traffic() {
    let layer = BreakerLayer::new(BreakerConfig {
        automatic_half_open: true,
        ..small()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>("down".into())
    }));
    for _ in 0..4 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
    settle(Duration::from_millis(4_999)).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "not before the open time is up"
    );
    settle(Duration::from_millis(2)).await;
    assert_eq!(handle.state(), State::HalfOpen, "no call was made");
    // The probe still decides: one failure opens it again, and the timer
    // moves it back after another open duration.
    svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    settle(Duration::from_millis(5_001)).await;
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn without_the_automatic_transition_an_idle_breaker_stays_open() {
    let layer = BreakerLayer::new(small()).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>("down".into())
    }));
    for _ in 0..4 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    advance(Duration::from_secs(60)).await;
    assert_eq!(handle.state(), State::Open);
}

#[test]
fn the_automatic_transition_needs_a_runtime() {
    let err = BreakerLayer::new(BreakerConfig {
        automatic_half_open: true,
        ..small()
    })
    .unwrap_err();
    assert_eq!(err.field(), "automatic_half_open");
}
