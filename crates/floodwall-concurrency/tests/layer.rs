//! The Tower layer: shedding in `call`, how finished calls are read,
//! cancellation, partitions, and a CoDel queue following the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_codel::{CodelConfig, CodelLayer};
use floodwall_concurrency::{
    AdaptiveLimitHandle, AdaptiveLimitLayer, Aimd, AimdConfig, ByCriticality, LimitExceeded,
    OnCancel, Partitions,
};
use floodwall_core::{
    BoxError, Criticality, DeadlineExceeded, HttpClassifier, Phase, RejectKind, Rejected, Rejection,
};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt, service_fn};

fn aimd(initial: u32) -> Aimd {
    Aimd::new(AimdConfig {
        initial_limit: initial,
        ..AimdConfig::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_fails_at_once_as_overloaded_without_calling_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let layer = AdaptiveLimitLayer::new(aimd(1)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |rx: oneshot::Receiver<()>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = rx.await;
            Ok::<_, BoxError>(())
        }
    }));
    let (tx, rx) = oneshot::channel();
    let first = tokio::spawn(svc.clone().oneshot(rx));
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);
    let (_tx2, rx2) = oneshot::channel();
    let err = svc.clone().oneshot(rx2).await.unwrap_err();
    let rejected = Rejected::find(&*err).expect("a floodwall rejection");
    assert_eq!(rejected.kind(), RejectKind::Overloaded);
    let refusal = rejected.get::<LimitExceeded>().expect("LimitExceeded");
    assert_eq!((refusal.limit(), refusal.in_flight()), (1, 1));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the refused call never ran"
    );
    tx.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 2, "a fast success at full use: AIMD + 1");
}

#[tokio::test(start_paused = true)]
async fn overloaded_answers_are_drops_and_failures_are_ignored() {
    let layer = AdaptiveLimitLayer::builder(aimd(10))
        .classify(HttpClassifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|status: u16| async move {
        if status == 0 {
            return Err::<http::Response<()>, BoxError>("connection reset".into());
        }
        let mut res = http::Response::new(());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(res)
    }));
    // 10 % × 10 = 9: a 503 is a drop.
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(handle.limit(), 9);
    // A 500 and a transport error say nothing about load.
    svc.clone().oneshot(500).await.unwrap();
    svc.clone().oneshot(0).await.unwrap_err();
    assert_eq!(handle.limit(), 9);
    // A success with fewer than half the limit in use: app-limited, no change.
    svc.clone().oneshot(200).await.unwrap();
    assert_eq!(handle.limit(), 9);
    assert_eq!(handle.in_flight(), 0);
}

/// A rejection of any kind, as another floodwall layer below would return.
#[derive(Debug)]
struct Below(RejectKind);

impl std::fmt::Display for Below {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused below: {}", self.0)
    }
}

impl std::error::Error for Below {}

impl Rejection for Below {
    fn kind(&self) -> RejectKind {
        self.0
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_below_say_nothing_a_full_budget_timeout_is_a_drop() {
    let layer = AdaptiveLimitLayer::new(aimd(10)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|kind: RejectKind| async move {
        Err::<(), BoxError>(Rejected::boxed(Below(kind)))
    }));
    // The outcome rule: a refusal by a floodwall layer below never reached
    // the service, so it says nothing about its load.
    for kind in [
        RejectKind::Overloaded,
        RejectKind::DeadlineExceeded,
        RejectKind::RateLimited,
        RejectKind::CircuitOpen,
        RejectKind::Throttled,
        RejectKind::Prioritized,
    ] {
        svc.clone().oneshot(kind).await.unwrap_err();
    }
    assert_eq!(handle.limit(), 10, "refusals from below say nothing");
    let timed_out = |caller_limited: bool| {
        service_fn(move |()| async move {
            Err::<(), BoxError>(Rejected::boxed(DeadlineExceeded::new(
                Phase::AwaitingResponse,
                caller_limited,
            )))
        })
    };
    // A deadline the caller imposed, shorter than the call's budget: nothing.
    layer.layer(timed_out(true)).oneshot(()).await.unwrap_err();
    assert_eq!(handle.limit(), 10, "a caller's short deadline says nothing");
    // A call that had its whole budget and timed out: a drop.
    layer.layer(timed_out(false)).oneshot(()).await.unwrap_err();
    assert_eq!(handle.limit(), 9, "a full-budget timeout is a drop");
    assert_eq!(handle.in_flight(), 0);
}

/// Calls a service that takes a minute, lets the call run 10 ms and drops
/// it; `during` sees the layer while the call is in flight.
async fn call_and_abandon(layer: AdaptiveLimitLayer<Aimd>, during: impl Fn(&AdaptiveLimitHandle)) {
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    }));
    let mut fut = Box::pin(svc.ready().await.unwrap().call(()));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut fut)
            .await
            .is_err()
    );
    during(&handle);
    drop(fut);
    assert_eq!(handle.in_flight(), 0, "the slot comes back");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_gives_its_slot_back_and_decides_nothing() {
    let layer = AdaptiveLimitLayer::new(aimd(2)).unwrap();
    let handle = layer.handle();
    for _ in 0..5 {
        call_and_abandon(layer.clone(), |h| assert_eq!(h.in_flight(), 1)).await;
    }
    assert_eq!(handle.limit(), 2, "cancellations are not samples");
}

#[tokio::test(start_paused = true)]
async fn with_on_cancel_drop_a_cancellation_is_a_drop() {
    let layer = AdaptiveLimitLayer::builder(aimd(20))
        .on_cancel(OnCancel::Drop)
        .build()
        .unwrap();
    let handle = layer.handle();
    call_and_abandon(layer, |h| assert_eq!(h.in_flight(), 1)).await;
    assert_eq!(handle.limit(), 18, "AIMD backs off: 20 × 0.9");
}

#[tokio::test(start_paused = true)]
async fn partitions_keep_a_guaranteed_share_for_each_criticality() {
    let layer = AdaptiveLimitLayer::builder(aimd(4))
        // CriticalPlus (class 0) and Sheddable (class 3) half each.
        .partitions(
            Partitions::new(&[0.5, 0.0, 0.0, 0.5]).unwrap(),
            ByCriticality,
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let (release, gate) = tokio::sync::watch::channel(false);
    let svc = layer.layer(service_fn(move |_req: http::Request<()>| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, BoxError>(())
        }
    }));
    let request = |c: Criticality| {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(c);
        req
    };
    // Sheddable traffic (class 3) borrows the whole limit while class 0 idles.
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(tokio::spawn(
            svc.clone().oneshot(request(Criticality::Sheddable)),
        ));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight_in(3), 4);
    let refused = svc.clone().oneshot(request(Criticality::Sheddable)).await;
    assert!(refused.is_err(), "class 3 is over its share and the limit");
    // Critical traffic still gets its guaranteed 2.
    for _ in 0..2 {
        running.push(tokio::spawn(
            svc.clone().oneshot(request(Criticality::CriticalPlus)),
        ));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight_in(0), 2);
    release.send(true).unwrap();
    for r in running {
        r.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_codel_queue_follows_the_adaptive_limit() {
    let codel = CodelLayer::new(CodelConfig::with_workers(10)).unwrap();
    let workers = codel.handle();
    let follow = workers.clone();
    let limit = AdaptiveLimitLayer::builder(aimd(10))
        .classify(HttpClassifier)
        .on_limit_change(move |l| follow.set_workers(l as usize))
        .build()
        .unwrap();
    // The queue waits in front; the adaptive limit measures the service.
    let svc = codel.layer(limit.layer(service_fn(|status: u16| async move {
        let mut res = http::Response::new(());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, BoxError>(res)
    })));
    assert_eq!(workers.workers(), 10);
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(workers.workers(), 9, "a drop: 10 × 0.9");
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(workers.workers(), 8);
}

#[test]
fn a_layer_is_built_from_an_algorithms_config_and_reports_its_errors() {
    use floodwall_concurrency::{Vegas, VegasConfig};
    let layer = AdaptiveLimitLayer::new(AimdConfig {
        initial_limit: 7,
        ..AimdConfig::default()
    })
    .unwrap();
    assert_eq!(layer.handle().limit(), 7);
    // An algorithm already built is accepted as well.
    let vegas = Vegas::new(VegasConfig::default()).unwrap();
    assert!(AdaptiveLimitLayer::new(vegas).is_ok());
    // An invalid config fails at build, naming the field.
    let err = AdaptiveLimitLayer::builder(AimdConfig {
        initial_limit: 0,
        ..AimdConfig::default()
    })
    .name("rooms")
    .build()
    .unwrap_err();
    assert_eq!(err.field(), "initial_limit", "{err}");
}

#[cfg(feature = "serde")]
#[test]
fn algorithm_configs_deserialize_with_human_durations() {
    use floodwall_concurrency::{BbrConfig, EnvoyGradientConfig, Gradient2Config, VegasConfig};
    let aimd: AimdConfig =
        serde_json::from_str(r#"{ "initial_limit": 20, "timeout": "250ms" }"#).unwrap();
    assert_eq!(aimd.initial_limit, 20);
    assert_eq!(aimd.timeout, Duration::from_millis(250));
    assert_eq!(aimd.max_limit, AimdConfig::default().max_limit);
    let envoy: EnvoyGradientConfig =
        serde_json::from_str(r#"{ "min_rtt_interval": "30s" }"#).unwrap();
    assert_eq!(envoy.min_rtt_interval, Duration::from_secs(30));
    let bbr: BbrConfig = serde_json::from_str(r#"{ "window": "5s", "buckets": 50 }"#).unwrap();
    assert_eq!((bbr.window, bbr.buckets), (Duration::from_secs(5), 50));
    let _: VegasConfig = serde_json::from_str("{}").unwrap();
    let _: Gradient2Config = serde_json::from_str("{}").unwrap();
    let err = serde_json::from_str::<AimdConfig>(r#"{ "initial": 3 }"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
