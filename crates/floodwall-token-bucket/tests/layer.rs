//! The Tower layer: shedding, sharing, wait mode, cancellation, keys, metrics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_token_bucket::error::{ExceedsBurst, RateLimited};
use floodwall_token_bucket::{Quota, TokenBucketConfig, TokenBucketLayer};
use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt, service_fn};

fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

type Echo = BoxCloneService<u32, u32, BoxError>;

fn echo() -> Echo {
    BoxCloneService::new(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }))
}

fn rejection(err: &BoxError) -> &Rejected {
    Rejected::find(&**err).expect("a floodwall rejection")
}

#[tokio::test(start_paused = true)]
async fn sheds_with_a_typed_rate_limited_error() {
    let layer = TokenBucketLayer::builder(quota(100, 10))
        .name("api")
        .build();
    let svc = layer.layer(echo());
    for i in 0..10 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
    }
    let err = svc.clone().oneshot(99).await.unwrap_err();
    let r = rejection(&err);
    assert_eq!(r.kind(), RejectKind::RateLimited);
    assert_eq!(r.retry_after(), Some(Duration::from_millis(10)));
    let policy = r.rate_limit().unwrap();
    assert_eq!(
        (policy.name(), policy.quota(), policy.window()),
        ("api", 100, Duration::from_secs(1))
    );
    let limited = r.get::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_millis(10));
    assert_eq!(
        limited.to_string(),
        "rate limit \"api\" exceeded; retry after 10ms"
    );
    advance(Duration::from_millis(10)).await;
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let layer = TokenBucketLayer::new(quota(10, 10));
    let failing = service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("backend down")) });
    let err = layer.layer(failing).oneshot(()).await.unwrap_err();
    assert!(Rejected::find(&*err).is_none());
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner error");
    assert_eq!(io.to_string(), "backend down");
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_takes_no_token() {
    let layer = TokenBucketLayer::new(quota(1, 1));
    let handle = layer.handle();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    inner.allow(0);
    assert_pending!(svc.poll_ready());
    for _ in 0..100 {
        let _ = svc.poll_ready();
    }
    assert_eq!(handle.available(), 1, "polling readiness holds no permit");
    inner.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let fut = svc.call(());
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_response(());
    fut.await.unwrap();
    assert_eq!(handle.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_bucket() {
    let svc = TokenBucketLayer::new(quota(5, 5)).layer(echo());
    let clones: Vec<_> = (0..20).map(|_| svc.clone()).collect();
    let mut admitted = 0;
    for c in clones {
        admitted += usize::from(c.oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 5);
}

/// The way axum's `route_layer` works: the layer value is cloned into every
/// route. One layer value must still mean one limit.
#[tokio::test(start_paused = true)]
async fn per_route_copies_of_one_layer_share_one_limit() {
    let layer = TokenBucketLayer::new(quota(10, 6));
    let mut routes: HashMap<&str, Echo> = HashMap::new();
    for path in ["/rooms", "/users", "/gifts"] {
        routes.insert(path, BoxCloneService::new(layer.clone().layer(echo())));
    }
    let mut admitted = 0;
    for i in 0..30 {
        let path = ["/rooms", "/users", "/gifts"][i % 3];
        admitted += usize::from(routes[path].clone().oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 6, "one budget across all routes");

    // Separate layer values are separate limits.
    let a = TokenBucketLayer::new(quota(10, 6)).layer(echo());
    let b = TokenBucketLayer::new(quota(10, 6)).layer(echo());
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(a.clone().oneshot(1).await.is_ok());
        admitted += usize::from(b.clone().oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 12);
}

#[tokio::test(start_paused = true)]
async fn weighted_requests_and_exceeds_burst() {
    // A batch call costs one token per item.
    let layer = TokenBucketLayer::builder(quota(10, 10))
        .name("batch")
        .weigh(|items: &u32| *items)
        .build();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    assert_eq!(svc.clone().oneshot(6).await.unwrap(), 6);
    assert_eq!(handle.available(), 4);
    let err = svc.clone().oneshot(6).await.unwrap_err();
    assert_eq!(
        rejection(&err).retry_after(),
        Some(Duration::from_millis(200)),
        "two more tokens are 200 ms away"
    );
    assert_eq!(svc.clone().oneshot(4).await.unwrap(), 4);

    let err = svc.clone().oneshot(11).await.unwrap_err();
    let r = rejection(&err);
    assert_eq!(r.kind(), RejectKind::RateLimited);
    assert_eq!(r.retry_after(), None, "waiting never helps");
    let e = r.get::<ExceedsBurst>().unwrap();
    assert_eq!((e.requested(), e.burst()), (11, 10));
    assert_eq!(
        e.to_string(),
        "request of 11 tokens exceeds the burst of 10 of rate limit \"batch\""
    );
}

/// Which request reached the inner service, and when (since the test began).
type CallLog = Arc<Mutex<Vec<(u32, Duration)>>>;

/// Records when the inner service was called.
fn recording() -> (Echo, CallLog) {
    let t0 = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let svc = BoxCloneService::new(service_fn(move |n: u32| {
        l.lock().unwrap().push((n, t0.elapsed()));
        async move { Ok::<_, BoxError>(n) }
    }));
    (svc, log)
}

#[tokio::test(start_paused = true)]
async fn wait_mode_starts_requests_one_interval_apart() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_millis(250))
        .build();
    let (inner, log) = recording();
    let svc = layer.layer(inner);
    let futs: Vec<_> = (0..3)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    // The fourth would need to wait 300 ms > 250 ms: refused at once.
    let err = svc.clone().oneshot(3).await.unwrap_err();
    assert_eq!(
        rejection(&err).retry_after(),
        Some(Duration::from_millis(300))
    );
    for f in futs {
        f.await.unwrap().unwrap();
    }
    let log = log.lock().unwrap().clone();
    let ms = |m| Duration::from_millis(m);
    assert_eq!(log, vec![(0, ms(0)), (1, ms(100)), (2, ms(200))]);
}

/// A service whose clones are counted, to see that a dropped waiter
/// releases the service clone it held.
#[derive(Clone)]
struct Counted {
    token: Arc<()>,
    calls: Arc<AtomicU64>,
}

impl Service<u32> for Counted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(n))
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_waiters_leak_nothing() {
    let q = quota(100, 5);
    let layer = TokenBucketLayer::builder(q)
        .wait(Duration::from_secs(10))
        .build();
    let handle = layer.handle();
    let counted = Counted {
        token: Arc::new(()),
        calls: Arc::new(AtomicU64::new(0)),
    };
    let svc = layer.layer(counted.clone());
    let baseline = Arc::strong_count(&counted.token);

    let mut cx = Context::from_waker(Waker::noop());
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut completed = 0u64;
    for round in 0..20 {
        // A burst of waiters, each dropped after a random amount of waiting.
        let mut futs: Vec<_> = (0..50).map(|i| Box::pin(svc.clone().oneshot(i))).collect();
        let mut deadlines: Vec<u64> = futs.iter().map(|_| next() % 400).collect();
        for step_ms in 0..400u64 {
            let mut i = 0;
            while i < futs.len() {
                if deadlines[i] == step_ms && round % 4 != 3 {
                    drop(futs.swap_remove(i));
                    deadlines.swap_remove(i);
                    continue;
                }
                if futs[i].as_mut().poll(&mut cx).is_ready() {
                    completed += 1;
                    drop(futs.swap_remove(i));
                    deadlines.swap_remove(i);
                    continue;
                }
                i += 1;
            }
            advance(Duration::from_millis(1)).await;
        }
        drop(futs);
        // Whatever was dropped gave its token back: after one burst window
        // the bucket is exactly full again and serves a full burst at once.
        advance(Duration::from_millis(50)).await;
        assert_eq!(handle.available(), 5, "round {round}");
    }
    assert_eq!(
        Arc::strong_count(&counted.token),
        baseline,
        "no service clone leaked"
    );
    assert_eq!(
        counted.calls.load(Ordering::Relaxed),
        completed,
        "dropped waiters never ran"
    );
    assert!(completed > 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_makes_room_for_the_next() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_millis(150))
        .build();
    let (inner, log) = recording();
    let svc = layer.layer(inner);
    svc.clone().oneshot(0).await.unwrap(); // takes the only token
    let waiter = tokio::spawn(svc.clone().oneshot(1)); // would start at 100 ms
    tokio::task::yield_now().await;
    assert!(svc.clone().oneshot(2).await.is_err(), "200 ms > 150 ms");
    waiter.abort();
    let _ = waiter.await;
    let late = tokio::spawn(svc.clone().oneshot(3));
    late.await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![(0, Duration::ZERO), (3, Duration::from_millis(100))],
        "request 3 took the slot the aborted waiter gave back"
    );
}

fn client_ip(req: &http::Request<()>) -> Option<IpAddr> {
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

fn from(ip: [u8; 4]) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 40000));
    req
}

#[tokio::test(start_paused = true)]
async fn keyed_layer_limits_each_client_ip_separately() {
    let layer = TokenBucketLayer::builder(quota(1, 2))
        .name("per_ip")
        .build_keyed(1000, client_ip);
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, BoxError>(())
    }));
    let mut admitted = HashMap::new();
    for i in 0..30u8 {
        let ip = [10, 0, 0, i % 3];
        let ok = svc.clone().oneshot(from(ip)).await.is_ok();
        *admitted.entry(i % 3).or_insert(0) += usize::from(ok);
    }
    assert_eq!(
        admitted.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    assert_eq!(handle.keys(), 3);
    assert_eq!(handle.available(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))), 0);
    // No key, no limit.
    for _ in 0..10 {
        svc.clone().oneshot(http::Request::new(())).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_wait_mode_refunds_per_key() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_secs(1))
        .build_keyed(100, |n: &u32| Some(*n % 2));
    let handle = layer.handle();
    let svc = layer.layer(echo());
    svc.clone().oneshot(0).await.unwrap();
    let waiter = tokio::spawn(svc.clone().oneshot(2));
    tokio::task::yield_now().await;
    waiter.abort();
    let _ = waiter.await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(
        handle.available(&0),
        1,
        "the aborted waiter's token came back"
    );
    assert_eq!(handle.available(&1), 1);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn config_as_data() {
    let cfg: TokenBucketConfig = serde_json::from_str(
        r#"{ "name": "rooms", "rate": 2, "per": "1s", "burst": 3, "max_wait": "0s" }"#,
    )
    .unwrap();
    let layer = cfg.build().unwrap();
    assert_eq!(layer.handle().name(), "rooms");
    let svc = layer.layer(echo());
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(svc.clone().oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 3);
    let bad: Result<TokenBucketConfig, _> = serde_json::from_str(r#"{ "rate": 0 }"#);
    assert_eq!(
        bad.unwrap().build().unwrap_err().to_string(),
        "rate must be positive (at least one token per period)"
    );
    let unknown: Result<TokenBucketConfig, _> =
        serde_json::from_str(r#"{ "rate": 1, "burts": 2 }"#);
    assert!(unknown.is_err(), "typos are errors, not silently ignored");
}

#[test]
fn config_presets() {
    let cfg = TokenBucketConfig::per_second(50);
    let q = cfg.quota().unwrap();
    assert_eq!((q.tokens(), q.burst()), (50, 50));
    let cfg = TokenBucketConfig {
        burst: Some(0),
        ..cfg
    };
    assert!(cfg.build().is_err());
}

mod metrics_recording {
    use super::*;
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    #[derive(Default)]
    struct Counting {
        counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let id = format!("{}{{{}}}", key.name(), labels.join(","));
            let c = self.counters.lock().unwrap().entry(id).or_default().clone();
            Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_are_counted_under_the_layer_name() {
        let rec = Counting::default();
        let layer = metrics::with_local_recorder(&rec, || {
            TokenBucketLayer::builder(quota(10, 3))
                .name("rooms")
                .build()
        });
        let svc = layer.layer(echo());
        for _ in 0..5 {
            let _ = svc.clone().oneshot(1).await;
        }
        let counters = rec.counters.lock().unwrap();
        let get = |k: &str| counters.get(k).map(|c| c.load(Ordering::Relaxed));
        assert_eq!(
            get("floodwall_token_bucket_admitted_total{name=rooms}"),
            Some(3)
        );
        assert_eq!(
            get("floodwall_token_bucket_rejected_total{name=rooms,reason=rate_limited}"),
            Some(2)
        );
    }
}
