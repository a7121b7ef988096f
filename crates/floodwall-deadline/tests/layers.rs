//! The server and client layers under virtual time, and the SRE book's
//! walk-through: a 30 s deadline reaches the third hop as 19 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_core::{BoxError, Deadline, RejectKind, Rejected};
use floodwall_deadline::{
    DeadlineExceeded, Phase, PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig,
    ServerDeadlineLayer, Wire, current,
};
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = http::Request<()>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn phase(err: &BoxError) -> Phase {
    let rejected = Rejected::find(err.as_ref()).expect("a floodwall rejection");
    assert_eq!(rejected.kind(), RejectKind::DeadlineExceeded);
    rejected
        .get::<DeadlineExceeded>()
        .expect("DeadlineExceeded")
        .phase()
}

fn with_header(name: &str, value: &str) -> Req {
    http::Request::builder()
        .header(name, value)
        .body(())
        .unwrap()
}

/// A handler that records the deadline it sees, sleeps `work`, and counts
/// its runs; `finished` is set only if it was not dropped first.
type Seen = (Option<Duration>, Option<Duration>);

#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
    /// The remaining time the handler saw, in scope and in its request.
    seen: Arc<std::sync::Mutex<Option<Seen>>>,
}

impl Probe {
    fn service(
        &self,
        work: Duration,
    ) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone {
        let probe = self.clone();
        service_fn(move |req: Req| {
            let probe = probe.clone();
            async move {
                probe.runs.fetch_add(1, Ordering::SeqCst);
                let now = Instant::now();
                let scoped = current().map(|d| d.remaining(now));
                let extension = Deadline::of(req.extensions()).map(|d| d.remaining(now));
                *probe.seen.lock().unwrap() = Some((scoped, extension));
                sleep(work).await;
                probe.finished.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    }

    fn seen(&self) -> Option<Seen> {
        *self.seen.lock().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn the_inbound_timeout_becomes_the_handlers_deadline() {
    let probe = Probe::default();
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(probe.service(secs(1)));
    svc.oneshot(with_header("grpc-timeout", "2S"))
        .await
        .unwrap();
    assert_eq!(probe.seen(), Some((Some(secs(2)), Some(secs(2)))));
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_never_reaches_the_handler() {
    let probe = Probe::default();
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(probe.service(secs(1)));
    let err = svc
        .oneshot(with_header("grpc-timeout", "0n"))
        .await
        .unwrap_err();
    assert_eq!(phase(&err), Phase::OnArrival);
    assert_eq!(probe.runs.load(Ordering::SeqCst), 0);
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_is_dropped_at_the_deadline() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let handler = service_fn(move |_: Req| {
        let guard = DropFlag(flag.clone());
        async move {
            sleep(secs(5)).await;
            drop(guard);
            Ok::<_, BoxError>(())
        }
    });
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(handler);
    let mut call = Box::pin(svc.oneshot(with_header("grpc-timeout", "2S")));
    let t0 = Instant::now();
    let err = (&mut call).await.unwrap_err();
    assert_eq!(Instant::now() - t0, secs(2));
    assert_eq!(phase(&err), Phase::InFlight);
    // Dropped at the deadline, while the response future still exists.
    assert!(dropped.load(Ordering::SeqCst), "the handler was dropped");
    drop(call);
}

#[tokio::test(start_paused = true)]
async fn the_server_max_caps_and_untrusted_headers_are_ignored() {
    let probe = Probe::default();
    let capped = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(1)),
        ..Default::default()
    })
    .unwrap()
    .layer(probe.service(Duration::ZERO));
    capped
        .oneshot(with_header("grpc-timeout", "60S"))
        .await
        .unwrap();
    assert_eq!(probe.seen(), Some((Some(secs(1)), Some(secs(1)))));
    // A header shorter than the max wins.
    let capped = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(1)),
        ..Default::default()
    })
    .unwrap()
    .layer(probe.service(Duration::ZERO));
    capped
        .oneshot(with_header("grpc-timeout", "300m"))
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    assert_eq!(probe.seen(), Some((Some(short), Some(short))));

    let edge = ServerDeadlineLayer::new(ServerDeadlineConfig {
        trust_inbound: false,
        max: Some(secs(3)),
        ..Default::default()
    })
    .unwrap()
    .layer(probe.service(Duration::ZERO));
    edge.oneshot(with_header("grpc-timeout", "1m"))
        .await
        .unwrap();
    assert_eq!(probe.seen(), Some((Some(secs(3)), Some(secs(3)))));
}

#[tokio::test(start_paused = true)]
async fn no_header_and_no_max_means_no_deadline() {
    let probe = Probe::default();
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(probe.service(secs(100)));
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(probe.seen(), Some((None, None)));
    // A malformed header is no header.
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(probe.service(secs(0)));
    svc.oneshot(with_header("grpc-timeout", "1.5S"))
        .await
        .unwrap();
    assert_eq!(probe.seen(), Some((None, None)));
}

#[tokio::test(start_paused = true)]
async fn queueing_before_the_layer_counts_from_arrival() {
    let probe = Probe::default();
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(probe.service(secs(0)));
    let mut req = with_header("grpc-timeout", "2S");
    floodwall_core::Arrival::stamp(req.extensions_mut(), Instant::now());
    sleep(Duration::from_millis(500)).await;
    svc.oneshot(req).await.unwrap();
    let left = Duration::from_millis(1500);
    assert_eq!(probe.seen(), Some((Some(left), Some(left))));
}

/// A client service that records the headers it was sent.
fn recorder(
    sent: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    work: Duration,
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: Req| {
        sent.lock().unwrap().push(req.headers().clone());
        async move {
            sleep(work).await;
            Ok::<_, BoxError>(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn outbound_calls_send_what_remains_less_the_margin() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        margin: Duration::from_millis(100),
        ..Default::default()
    })
    .unwrap()
    .layer(recorder(sent.clone(), Duration::ZERO));
    // No deadline in scope: nothing sent.
    client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    let deadline = Deadline::after(Instant::now(), secs(2));
    floodwall_deadline::scope(deadline, client.clone().oneshot(http::Request::new(())))
        .await
        .unwrap();
    let sent = sent.lock().unwrap();
    assert!(sent[0].get("grpc-timeout").is_none());
    assert_eq!(sent[1]["grpc-timeout"], "1900000u");
}

#[tokio::test(start_paused = true)]
async fn the_calls_own_timeout_caps_what_is_sent_and_awaited() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        wire: Wire::http(),
        timeout: Some(secs(1)),
        ..Default::default()
    })
    .unwrap()
    .layer(recorder(sent.clone(), secs(5)));
    let deadline = Deadline::after(Instant::now(), secs(30));
    let t0 = Instant::now();
    let err = floodwall_deadline::scope(deadline, client.oneshot(http::Request::new(())))
        .await
        .unwrap_err();
    assert_eq!(Instant::now() - t0, secs(1));
    assert_eq!(phase(&err), Phase::AwaitingResponse);
    assert_eq!(sent.lock().unwrap()[0]["x-request-timeout-ms"], "1000");
}

#[tokio::test(start_paused = true)]
async fn nothing_left_fails_locally_without_sending() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        margin: Duration::from_millis(100),
        ..Default::default()
    })
    .unwrap()
    .layer(recorder(sent.clone(), Duration::ZERO));
    // 100 ms left, all of it margin.
    let deadline = Deadline::after(Instant::now(), Duration::from_millis(100));
    let err = floodwall_deadline::scope(deadline, client.oneshot(http::Request::new(())))
        .await
        .unwrap_err();
    assert_eq!(phase(&err), Phase::BeforeSend);
    assert!(sent.lock().unwrap().is_empty(), "not sent");
}

#[tokio::test(start_paused = true)]
async fn spawned_work_carries_the_deadline() {
    let deadline = Deadline::after(Instant::now(), secs(5));
    let seen = floodwall_deadline::scope(deadline, async {
        floodwall_deadline::spawn(async { current() })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(seen, Some(deadline));
    let bare = floodwall_deadline::scope(deadline, async {
        tokio::spawn(async { current() }).await.unwrap()
    })
    .await;
    assert_eq!(bare, None, "a plain spawn does not");
    // A nested scope never extends the outer deadline.
    let later = Deadline::after(Instant::now(), secs(50));
    let inner = floodwall_deadline::scope(deadline, async {
        floodwall_deadline::scope(later, async { current() }).await
    })
    .await;
    assert_eq!(inner, Some(deadline));
}

/// Calls `N` in a task of its own, as if on another server.
#[derive(Clone)]
struct Remote<N>(N);

type RemoteFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

impl<N> Service<Req> for Remote<N>
where
    N: Service<Req, Response = (), Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = RemoteFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RemoteFuture {
        let task = tokio::spawn(self.0.clone().oneshot(req));
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                Err(join) => Err(Box::new(join) as BoxError),
            }
        })
    }
}

/// One hop: the server layer, a handler that works `work` then calls the
/// next hop through the client layer (if any).
fn hop<N>(
    work: Duration,
    next: Option<N>,
    seen: Arc<std::sync::Mutex<Vec<(String, Duration)>>>,
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone
where
    N: Service<Req, Response = (), Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let handler = service_fn(move |req: Req| {
        let (next, seen) = (next.clone(), seen.clone());
        async move {
            let header = req.headers()["grpc-timeout"].to_str().unwrap().to_owned();
            let remaining = current().unwrap().remaining(Instant::now());
            seen.lock().unwrap().push((header, remaining));
            sleep(work).await;
            if let Some(next) = next {
                // The next hop runs in a task of its own, as on another
                // server: it cannot see this task's scope, only the header.
                let remote = Remote(next);
                let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig::default())
                    .unwrap()
                    .layer(remote);
                client.oneshot(http::Request::new(())).await?;
            }
            Ok::<_, BoxError>(())
        }
    });
    ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(handler)
}

#[tokio::test(start_paused = true)]
async fn sre_walk_through_30s_then_23s_then_19s() {
    // "Handling Overload": the frontend gives 30 s; A spends 7 s before
    // calling B, which gets 23 s; B spends 4 s before calling C: 19 s.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = hop::<tower::util::BoxCloneSyncService<Req, (), BoxError>>(
        Duration::ZERO,
        None,
        seen.clone(),
    );
    let b = hop(
        secs(4),
        Some(tower::util::BoxCloneSyncService::new(c)),
        seen.clone(),
    );
    let a = hop(
        secs(7),
        Some(tower::util::BoxCloneSyncService::new(b)),
        seen.clone(),
    );
    a.oneshot(with_header("grpc-timeout", "30S")).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        [
            ("30S".to_owned(), secs(30)),
            ("23000000u".to_owned(), secs(23)),
            ("19000000u".to_owned(), secs(19)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hop_with_no_time_left_is_not_called() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = hop::<tower::util::BoxCloneSyncService<Req, (), BoxError>>(
        Duration::ZERO,
        None,
        seen.clone(),
    );
    // B works for its whole deadline: its outbound call has nothing left.
    let b = hop(
        secs(2),
        Some(tower::util::BoxCloneSyncService::new(c)),
        seen.clone(),
    );
    let err = b
        .oneshot(with_header("grpc-timeout", "2S"))
        .await
        .unwrap_err();
    // B's handler and its deadline end at the same instant: either B is
    // dropped, or its call to C fails before sending. C never runs.
    assert!(matches!(phase(&err), Phase::InFlight | Phase::BeforeSend));
    assert_eq!(seen.lock().unwrap().len(), 1, "C never ran");
}

#[tokio::test(start_paused = true)]
async fn an_inner_server_layer_never_extends_the_outer_deadline() {
    let probe = Probe::default();
    // A global cap of 1 s outside a per-route cap of 5 s.
    let inner = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(5)),
        ..Default::default()
    })
    .unwrap()
    .layer(probe.service(Duration::ZERO));
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(1)),
        trust_inbound: false,
        ..Default::default()
    })
    .unwrap()
    .layer(inner);
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(probe.seen(), Some((Some(secs(1)), Some(secs(1)))));
}

#[tokio::test(start_paused = true)]
async fn the_margin_shortens_what_is_sent_not_how_long_the_caller_waits() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        margin: Duration::from_millis(500),
        ..Default::default()
    })
    .unwrap()
    .layer(recorder(sent.clone(), Duration::from_millis(1_800)));
    let deadline = Deadline::after(Instant::now(), secs(2));
    // The callee is told 1.5 s; its answer at 1.8 s is still awaited.
    floodwall_deadline::scope(deadline, client.oneshot(http::Request::new(())))
        .await
        .unwrap();
    assert_eq!(sent.lock().unwrap()[0]["grpc-timeout"], "1500000u");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_already_on_the_request_caps_what_is_sent() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig::default())
        .unwrap()
        .layer(recorder(sent.clone(), Duration::ZERO));
    let deadline = Deadline::after(Instant::now(), secs(30));
    let req = with_header("grpc-timeout", "100m");
    floodwall_deadline::scope(deadline, client.oneshot(req))
        .await
        .unwrap();
    assert_eq!(sent.lock().unwrap()[0]["grpc-timeout"], "100000u");
}

#[test]
fn a_zero_bound_is_a_config_error_naming_the_field() {
    let err = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(Duration::ZERO),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "max");
    let err = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        timeout: Some(Duration::ZERO),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "timeout");
    assert!(err.to_string().contains("timeout"), "{err}");
}

#[test]
fn the_builder_names_the_layer_and_its_handle() {
    let server = ServerDeadlineLayer::builder(ServerDeadlineConfig::default())
        .name("edge")
        .build()
        .unwrap();
    assert_eq!(server.handle().name(), "edge");
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig::default()).unwrap();
    assert_eq!(client.handle().name(), floodwall_deadline::DEFAULT_NAME);
}

#[cfg(feature = "serde")]
#[test]
fn configs_deserialize_with_human_durations_and_every_wire_form() {
    let server: ServerDeadlineConfig =
        serde_json::from_str(r#"{ "wire": "http", "trust_inbound": false, "max": "2s" }"#).unwrap();
    assert_eq!(server.wire, Wire::http());
    assert!(!server.trust_inbound);
    assert_eq!(server.max, Some(secs(2)));

    let client: PropagateDeadlineConfig = serde_json::from_str(
        r#"{ "wire": { "http": "x-budget-ms" }, "margin": "5ms", "timeout": "1s" }"#,
    )
    .unwrap();
    assert_eq!(
        client.wire,
        Wire::Http(http::HeaderName::from_static("x-budget-ms"))
    );
    assert_eq!(client.margin, Duration::from_millis(5));
    assert_eq!(client.timeout, Some(secs(1)));

    let default: PropagateDeadlineConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(default, PropagateDeadlineConfig::default());

    let err = serde_json::from_str::<ServerDeadlineConfig>(r#"{ "wire": "smoke" }"#).unwrap_err();
    assert!(err.to_string().contains("unknown wire"), "{err}");
    let err = serde_json::from_str::<ServerDeadlineConfig>(r#"{ "maxx": "1s" }"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

/// The deadline the layers below a client layer see: in scope while they
/// are called and polled, through `Deadline::effective`; the outbound
/// request's extensions stay empty.
#[tokio::test(start_paused = true)]
async fn the_layers_below_the_client_see_its_deadline_in_scope_not_in_extensions() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let below = service_fn(move |req: Req| {
        let now = Instant::now();
        let at_call = (
            Deadline::effective(req.extensions()).map(|d| d.remaining(now)),
            req.extensions().is_empty(),
        );
        let record = record.clone();
        async move {
            let at_poll =
                Deadline::effective(&http::Extensions::new()).map(|d| d.remaining(Instant::now()));
            record.lock().unwrap().push((at_call, at_poll));
            Ok::<_, BoxError>(())
        }
    });
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        timeout: Some(secs(1)),
        ..Default::default()
    })
    .unwrap()
    .layer(below);
    // The call's own timeout inside a later deadline in scope.
    let deadline = Deadline::after(Instant::now(), secs(30));
    floodwall_deadline::scope(deadline, client.oneshot(http::Request::new(())))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [((Some(secs(1)), true), Some(secs(1)))],
        "the call's own 1 s, in scope at the call and at the poll; no extension"
    );
}

/// The server layer's timer ends an outbound call that waits for the same
/// deadline: the call makes no timer of its own, and the server layer
/// answers (phase `InFlight`) at the deadline.
#[tokio::test(start_paused = true)]
async fn an_outbound_call_inheriting_the_server_deadline_ends_with_the_server_timer() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        timeout: Some(secs(10)),
        ..Default::default()
    })
    .unwrap()
    .layer(recorder(sent.clone(), secs(60)));
    let handler = service_fn(move |_: Req| {
        let client = client.clone();
        async move { client.oneshot(http::Request::new(())).await }
    });
    let server = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(2)),
        ..Default::default()
    })
    .unwrap()
    .layer(handler);
    let t0 = Instant::now();
    let err = server.oneshot(http::Request::new(())).await.unwrap_err();
    assert_eq!(Instant::now() - t0, secs(2));
    assert_eq!(phase(&err), Phase::InFlight);
    assert_eq!(sent.lock().unwrap()[0]["grpc-timeout"], "2000000u");
}

/// Work carried into another task keeps the deadline but not the server
/// timer's mark: its outbound call times itself out at the deadline, even
/// after the server's timer dropped the handler that spawned it.
#[tokio::test(start_paused = true)]
async fn a_carried_outbound_call_makes_its_own_timer() {
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = PropagateDeadlineLayer::new(PropagateDeadlineConfig::default())
        .unwrap()
        .layer(recorder(sent.clone(), secs(60)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let handler = service_fn(move |_: Req| {
        let (client, tx) = (client.clone(), tx.clone());
        async move {
            let task = floodwall_deadline::spawn(client.oneshot(http::Request::new(())));
            let _ = tx.lock().unwrap().take().unwrap().send(task);
            std::future::pending::<Result<(), BoxError>>().await
        }
    });
    let server = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(secs(2)),
        ..Default::default()
    })
    .unwrap()
    .layer(handler);
    let t0 = Instant::now();
    let err = server.oneshot(http::Request::new(())).await.unwrap_err();
    assert_eq!(phase(&err), Phase::InFlight);
    // The task's call ends at the same deadline by its own timer, not when
    // the callee answers a minute later.
    let outcome = rx.await.unwrap().await.unwrap();
    assert_eq!(Instant::now() - t0, secs(2));
    assert_eq!(phase(&outcome.unwrap_err()), Phase::AwaitingResponse);
}
