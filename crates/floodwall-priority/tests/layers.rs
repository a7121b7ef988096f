//! The Tower layers of floodwall-priority, under virtual time.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_core::{Arrival, Criticality, Priority, RejectKind, Rejected};
use floodwall_priority::{
    AdmissionConfig, AdmissionLayer, AssignConfig, AssignPriorityLayer, BusinessTable, Mode,
    Prioritized, PriorityClientConfig, PriorityClientLayer, Queuing,
};
use http::{Request, Response};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn p(b: u8, u: u8) -> Priority {
    Priority::new(b, u).unwrap()
}

/// An echo service counting its calls and reporting the task's priority.
fn backend(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Option<Priority>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Option<Priority>>, Infallible>> + Send,
> + Clone {
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Response::new(floodwall_priority::current())) }
    })
}

fn request(priority: Option<Priority>, arrival: Option<Instant>) -> Request<()> {
    let mut req = Request::new(());
    if let Some(p) = priority {
        req.extensions_mut().insert(p);
    }
    if let Some(a) = arrival {
        req.extensions_mut().insert(Arrival::new(a));
    }
    req
}

fn small_windows() -> AdmissionConfig {
    AdmissionConfig {
        window_requests: 10,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn overload_sheds_the_least_important_and_says_so() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = AdmissionLayer::new(small_windows()).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend(calls.clone()));
    // One window of 10 requests that queued 30 ms (arrival 30 ms ago): half
    // important, half not.
    tokio::time::advance(Duration::from_millis(30)).await;
    let arrived = Instant::now() - Duration::from_millis(30);
    for i in 0..10u8 {
        let prio = if i % 2 == 0 { p(1, 0) } else { p(6, 0) };
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(Some(prio), Some(arrived)))
            .await
            .unwrap();
        assert_eq!(
            res.body(),
            &Some(prio),
            "the handler runs in the request's priority scope"
        );
    }
    // Overloaded: N_exp = 9.5 keeps (1, 0) only.
    assert_eq!(handle.level(), p(5, 127));
    let report = handle.last_window().unwrap();
    assert!(report.overloaded);
    assert_eq!(report.average_queuing, Duration::from_millis(30));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(1, 0)), None))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-floodwall-admission-level"], "5-127");
    let before = calls.load(Ordering::SeqCst);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(6, 0)), None))
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "a refused request never reaches the service"
    );
    let rejected = Rejected::find(&*err).unwrap();
    assert_eq!(rejected.kind(), RejectKind::Prioritized);
    assert_eq!(rejected.admission_level(), Some(p(5, 127)));
    let prioritized = rejected.get::<Prioritized>().unwrap();
    assert_eq!(
        (prioritized.priority(), prioritized.is_local()),
        (p(6, 0), false)
    );
    // floodwall-http turns it into a 503 carrying the level.
    let res: Response<()> = floodwall_http::response_for(rejected);
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-floodwall-admission-level"], "5-127");
}

#[tokio::test(start_paused = true)]
async fn inbound_headers_are_believed_only_when_trusted() {
    let calls = Arc::new(AtomicUsize::new(0));
    for trusted in [false, true] {
        let layer = AdmissionLayer::builder(small_windows())
            .trust_inbound(trusted)
            .unprioritized(p(9, 9))
            .build()
            .unwrap();
        let svc = layer.layer(backend(calls.clone()));
        let req = Request::builder()
            .header("x-floodwall-priority", "0-1")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let expected = if trusted { p(0, 1) } else { p(9, 9) };
        assert_eq!(res.body(), &Some(expected), "trusted = {trusted}");
    }
}

#[tokio::test(start_paused = true)]
async fn reported_queuing_drives_the_level() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = AdmissionLayer::builder(small_windows())
        .queuing(Queuing::Reported)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend(calls));
    // Arrival stamps are ignored in this mode: only reports count.
    let old = Instant::now();
    tokio::time::advance(Duration::from_secs(5)).await;
    for b in 0..10 {
        svc.ready()
            .await
            .unwrap()
            .call(request(Some(p(b, 0)), Some(old)))
            .await
            .unwrap();
    }
    assert!(!handle.last_window().unwrap().overloaded);
    for _ in 0..10 {
        handle.record_queuing(Duration::from_millis(40));
    }
    for b in 0..10 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(request(Some(p(b, 0)), None))
            .await;
    }
    let report = handle.last_window().unwrap();
    assert!(report.overloaded);
    assert_eq!(handle.level(), p(8, 127), "N_exp = 9.5 admits nine cells");
}

#[tokio::test(start_paused = true)]
async fn criticality_mode_sheds_lower_classes_first() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = AdmissionLayer::builder(AdmissionConfig {
        window_requests: 400,
        ..Default::default()
    })
    .mode(Mode::Criticality)
    .build()
    .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend(calls));
    let stale = Instant::now();
    tokio::time::advance(Duration::from_millis(50)).await;
    let classes = [Criticality::Critical, Criticality::Sheddable];
    // Two windows under 50 ms queuing, half Critical, half Sheddable.
    for i in 0..800 {
        let mut req = request(None, Some(stale));
        req.extensions_mut().insert(classes[i % 2]);
        let _ = svc.ready().await.unwrap().call(req).await;
    }
    // The level has cut into the Sheddable class only.
    let level = handle.level();
    assert_eq!(
        level.business(),
        Criticality::Sheddable.index() as u8,
        "level {level}"
    );
    assert!(level.user() < 127);
    let mut outcomes = [0usize; 2];
    for i in 0..200 {
        let mut req = request(None, None);
        req.extensions_mut().insert(classes[i % 2]);
        if svc.ready().await.unwrap().call(req).await.is_ok() {
            outcomes[i % 2] += 1;
        }
    }
    let mut refused = None;
    for _ in 0..50 {
        let mut req = request(None, None);
        req.extensions_mut().insert(Criticality::Sheddable);
        if let Err(e) = svc.ready().await.unwrap().call(req).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("some Sheddable request refused");
    assert_eq!(
        Rejected::find(&*refused).unwrap().admission_level(),
        None,
        "class-scale levels are not advertised"
    );
    let mut req = request(None, None);
    req.extensions_mut().insert(Criticality::Critical);
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert!(res.headers().get("x-floodwall-admission-level").is_none());
    assert_eq!(outcomes[0], 100, "every Critical request admitted");
    assert!(
        outcomes[1] < 100,
        "some Sheddable requests shed: {outcomes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_response_future_leaks_nothing() {
    let layer = AdmissionLayer::new(small_windows()).unwrap();
    let handle = layer.handle();
    let pending = service_fn(|_req: Request<()>| async {
        std::future::pending::<Result<Response<()>, Infallible>>().await
    });
    let mut svc = layer.layer(pending);
    let mut fut = Box::pin(svc.call(request(Some(p(1, 1)), None)));
    assert!(futures_poll_once(&mut fut).is_none());
    drop(fut);
    drop(svc);
    assert_eq!(
        floodwall_priority::current(),
        None,
        "the scope ends with the future"
    );
    // Arrival counted once; the controller still works.
    assert!(handle.controller().would_admit(p(200, 0)));
    drop(layer);
    assert_eq!(handle.name(), "priority");
}

fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(fut).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn client_propagates_and_drops_collaboratively() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let level = Arc::new(parking_lot::Mutex::new("2-10".to_string()));
    let downstream = {
        let seen = seen.clone();
        let level = level.clone();
        service_fn(move |req: Request<()>| {
            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            seen.lock()
                .push((h("x-floodwall-priority"), h("x-floodwall-upstream-drops")));
            let mut res = Response::new(());
            res.headers_mut()
                .insert("x-floodwall-admission-level", level.lock().parse().unwrap());
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let layer = PriorityClientLayer::new(PriorityClientConfig::default()).unwrap();
    let mut client = layer.layer(downstream);
    // From the task scope: sent on the wire; the response teaches (2, 10).
    floodwall_priority::scope(
        p(2, 3),
        client.ready().await.unwrap().call(Request::new(())),
    )
    .await
    .unwrap();
    assert_eq!(layer.handle().level(), p(2, 10));
    // Below the level: dropped locally, twice, and not sent.
    for _ in 0..2 {
        let err = client
            .ready()
            .await
            .unwrap()
            .call(request(Some(p(3, 0)), None))
            .await
            .unwrap_err();
        let rejected = Rejected::find(&*err).unwrap();
        assert_eq!(
            rejected.admission_level(),
            None,
            "the downstream's level is not ours to send"
        );
        let prioritized = *rejected.get::<Prioritized>().unwrap();
        assert!(prioritized.is_local());
        assert_eq!(prioritized.level(), p(2, 10));
    }
    assert_eq!(seen.lock().len(), 1);
    // The next request sent reports the two drops.
    *level.lock() = "255-127".into();
    client
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(0, 0)), None))
        .await
        .unwrap();
    assert_eq!(seen.lock()[1], (Some("0-0".into()), Some("2".into())));
    assert_eq!(layer.handle().level(), Priority::LOWEST);
    // A drop count already on a request (forwarded by a proxy) is not ours.
    let mut forwarded = request(Some(p(0, 0)), None);
    forwarded
        .headers_mut()
        .insert("x-floodwall-upstream-drops", "99".parse().unwrap());
    client.ready().await.unwrap().call(forwarded).await.unwrap();
    assert_eq!(seen.lock()[2], (Some("0-0".into()), None));
    seen.lock().remove(2);
    // A restrictive level expires after its TTL: requests go out again.
    *level.lock() = "0-5".into();
    client
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(0, 0)), None))
        .await
        .unwrap();
    assert!(
        client
            .ready()
            .await
            .unwrap()
            .call(request(Some(p(1, 0)), None))
            .await
            .is_err()
    );
    tokio::time::advance(Duration::from_millis(1001)).await;
    client
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(1, 0)), None))
        .await
        .unwrap();
    assert_eq!(seen.lock().len(), 4);
    assert_eq!(layer.handle().local_drops(), 3);
}

#[tokio::test(start_paused = true)]
async fn client_learns_from_an_in_process_rejection() {
    let server = AdmissionLayer::new(small_windows()).unwrap();
    let handle = server.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut direct = server.clone().layer(backend(calls.clone()));
    let stale = Instant::now();
    tokio::time::advance(Duration::from_millis(40)).await;
    for b in 0..10 {
        direct
            .ready()
            .await
            .unwrap()
            .call(request(Some(p(b, 0)), Some(stale)))
            .await
            .unwrap();
    }
    let level = handle.level();
    assert!(level < Priority::LOWEST);
    // A client that has heard nothing yet sends, and learns from the
    // rejection error itself.
    let client_layer = PriorityClientLayer::new(PriorityClientConfig::default()).unwrap();
    let mut client = client_layer.layer(server.layer(backend(calls)));
    let err: BoxError = client
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(9, 0)), None))
        .await
        .unwrap_err();
    assert!(
        !Rejected::find(&*err)
            .unwrap()
            .get::<Prioritized>()
            .unwrap()
            .is_local()
    );
    assert_eq!(client_layer.handle().level(), level);
    let err = client
        .ready()
        .await
        .unwrap()
        .call(request(Some(p(9, 0)), None))
        .await
        .unwrap_err();
    assert!(
        Rejected::find(&*err)
            .unwrap()
            .get::<Prioritized>()
            .unwrap()
            .is_local()
    );
}

#[tokio::test(start_paused = true)]
async fn the_edge_assigns_and_strips() {
    let layer = AssignPriorityLayer::new(AssignConfig {
        business: BusinessTable::new(7)
            .prefix("/room.Room/", 2)
            .route("/room.Room/Gift", 0),
        user_header: Some("x-user-id".into()),
        key_seed: Some(1),
        ..Default::default()
    })
    .unwrap();
    let svc = layer
        .clone()
        .layer(service_fn(|req: Request<()>| async move {
            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>((
                Priority::of(req.extensions()).unwrap(),
                h("x-floodwall-priority"),
                h("x-floodwall-upstream-drops"),
                floodwall_priority::current(),
            ))
        }));
    let req = Request::builder()
        .uri("/room.Room/Gift")
        .header("x-user-id", "u-42")
        .header("x-floodwall-priority", "0-0")
        .header("x-floodwall-upstream-drops", "1000000")
        .body(())
        .unwrap();
    let (prio, header, drops, scoped) = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(prio, p(0, layer.user_priority(b"u-42")));
    assert_eq!(
        header,
        Some(prio.to_string()),
        "the forged header is replaced"
    );
    assert_eq!(drops, None, "untrusted drop reports are removed");
    assert_eq!(scoped, Some(prio));
    // Unknown route, no user: the table's default and the anonymous user.
    let (prio, ..) = svc
        .clone()
        .oneshot(Request::builder().uri("/x").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(prio, p(7, 127));
    let (prio, ..) = svc
        .oneshot(Request::builder().uri("/room.Room/Join").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(prio.business(), 2);
}

#[cfg(feature = "serde")]
#[test]
fn configs_deserialize_in_human_form() {
    let config: AdmissionConfig = serde_json::from_str(
        r#"{"window": "500ms", "window_requests": 1000, "threshold": "15ms", "alpha": 0.1}"#,
    )
    .unwrap();
    assert_eq!(config.window, Duration::from_millis(500));
    assert_eq!(config.threshold, Duration::from_millis(15));
    assert_eq!(
        (config.window_requests, config.alpha, config.beta),
        (1000, 0.1, 0.01)
    );
    assert!(serde_json::from_str::<AdmissionConfig>(r#"{"windw": "1s"}"#).is_err());
    let assign: AssignConfig = serde_json::from_str(
        r#"{"business": {"default": 5, "routes": {"/pay": 0}, "prefixes": [["/room.Room/", 2]]},
            "user_header": "x-user-id", "rotation": "30m"}"#,
    )
    .unwrap();
    assert_eq!(assign.business.lookup("/pay"), 0);
    assert_eq!(assign.business.lookup("/room.Room/Join"), 2);
    assert_eq!(assign.rotation, Duration::from_secs(1800));
    let client: PriorityClientConfig = serde_json::from_str(r#"{"level_ttl": "250ms"}"#).unwrap();
    assert!(client.collaborative);
    assert_eq!(client.level_ttl, Duration::from_millis(250));
}
