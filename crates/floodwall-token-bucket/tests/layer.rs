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
        .build()
        .unwrap();
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
    let layer = TokenBucketLayer::new(quota(10, 10)).unwrap();
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
    let layer = TokenBucketLayer::new(quota(1, 1)).unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    inner.allow(0);
    assert_pending!(svc.poll_ready());
    for _ in 0..100 {
        let _ = svc.poll_ready();
    }
    assert_eq!(handle.remaining(), 1, "polling readiness holds no permit");
    inner.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let fut = svc.call(());
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_response(());
    fut.await.unwrap();
    assert_eq!(handle.remaining(), 0);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_bucket() {
    let svc = TokenBucketLayer::new(quota(5, 5)).unwrap().layer(echo());
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
    let layer = TokenBucketLayer::new(quota(10, 6)).unwrap();
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
    let a = TokenBucketLayer::new(quota(10, 6)).unwrap().layer(echo());
    let b = TokenBucketLayer::new(quota(10, 6)).unwrap().layer(echo());
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
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    assert_eq!(svc.clone().oneshot(6).await.unwrap(), 6);
    assert_eq!(handle.remaining(), 4);
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
        "request of 11 units exceeds the most allowed at once (10) by rate limit \"batch\""
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
        .build()
        .unwrap();
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

/// A service whose clones are counted and whose calls are timed, to see that
/// dropped waiters release the service clone they held and never run.
#[derive(Clone)]
struct Counted {
    token: Arc<()>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Service<u32> for Counted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        self.starts.lock().unwrap().push(Instant::now());
        std::future::ready(Ok(n))
    }
}

/// Every window of starts obeys the GCRA bound: j − i + 1 starts between
/// `s_i` and `s_j` need `(j − i + 1 − burst) · I ≤ s_j − s_i`.
fn assert_conforming(starts: &[Instant], q: Quota) {
    let interval = q.interval().as_nanos();
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let n = (j - i + 1) as u128;
            let span = starts[j].duration_since(starts[i]).as_nanos();
            assert!(
                n <= u128::from(q.burst()) + span / interval,
                "{n} starts within {span} ns"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_waiters_leak_nothing_and_never_overadmit() {
    // Burst 1 makes the window bound tight: two starts closer than one
    // interval are already a violation.
    let q = quota(100, 1);
    let layer = TokenBucketLayer::builder(q)
        .wait(Duration::from_millis(400))
        .build()
        .unwrap();
    let handle = layer.handle();
    let counted = Counted {
        token: Arc::new(()),
        starts: Arc::new(Mutex::new(Vec::new())),
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
    let (mut completed, mut rejected, mut dropped) = (0u64, 0u64, 0u64);
    let mut id = 0u32;
    for round in 0..10 {
        // Requests keep arriving (0–3 a millisecond, against 1 token per
        // 10 ms), each giving up after a random 0–800 ms (the longest wait
        // is 400 ms) unless it is served first; every fourth round nobody
        // gives up. So waiters give up from anywhere in the queue while
        // newcomers keep coming.
        let mut futs = Vec::new();
        let mut give_up: Vec<u64> = Vec::new();
        for step_ms in 0..1000u64 {
            if step_ms < 500 {
                for _ in 0..next() % 4 {
                    futs.push(Box::pin(svc.clone().oneshot(id)));
                    id += 1;
                    give_up.push(if round % 4 == 3 {
                        u64::MAX
                    } else {
                        step_ms + next() % 800
                    });
                }
            }
            let mut i = 0;
            while i < futs.len() {
                if give_up[i] == step_ms {
                    drop(futs.swap_remove(i));
                    give_up.swap_remove(i);
                    dropped += 1;
                    continue;
                }
                if let Poll::Ready(res) = futs[i].as_mut().poll(&mut cx) {
                    if res.is_ok() {
                        completed += 1;
                    } else {
                        rejected += 1;
                    }
                    drop(futs.swap_remove(i));
                    give_up.swap_remove(i);
                    continue;
                }
                i += 1;
            }
            advance(Duration::from_millis(1)).await;
        }
        assert!(futs.is_empty(), "every waiter finished or gave up");
        // Nothing stays reserved: after the longest wait the bucket is full.
        advance(Duration::from_millis(450)).await;
        assert_eq!(handle.remaining(), 1, "round {round}");
    }
    let starts = counted.starts.lock().unwrap().clone();
    assert_eq!(starts.len() as u64, completed, "dropped waiters never ran");
    assert_conforming(&starts, q);
    assert_eq!(
        Arc::strong_count(&counted.token),
        baseline,
        "no service clone leaked"
    );
    assert!(completed > 0 && rejected > 0 && dropped > 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_makes_room_for_the_next() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_millis(150))
        .build()
        .unwrap();
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
        .capacity(1000)
        .build_keyed(client_ip)
        .unwrap();
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
    let buckets = handle.limiter().limiter();
    assert_eq!(buckets.keys().len(), 3);
    let first = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(buckets.remaining(&first, Instant::now()), 0);
    // No key, no limit.
    for _ in 0..10 {
        svc.clone().oneshot(http::Request::new(())).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_wait_mode_cancels_per_key() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_secs(1))
        .capacity(100)
        .build_keyed(|n: &u32| Some(*n % 2))
        .unwrap();
    let handle = layer.handle();
    let (inner, log) = recording();
    let svc = layer.layer(inner);
    svc.clone().oneshot(0).await.unwrap();
    svc.clone().oneshot(1).await.unwrap();
    // Key 0's next request would start at 100 ms; it gives up at once.
    let waiter = tokio::spawn(svc.clone().oneshot(2));
    tokio::task::yield_now().await;
    waiter.abort();
    let _ = waiter.await;
    // Its slot went back to key 0, and key 1 was never touched.
    let late = tokio::spawn(svc.clone().oneshot(4));
    let other = tokio::spawn(svc.clone().oneshot(3));
    late.await.unwrap().unwrap();
    other.await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    let ms = |m| Duration::from_millis(m);
    assert_eq!(
        log,
        vec![(0, ms(0)), (1, ms(0)), (4, ms(100)), (3, ms(100))]
    );
    assert_eq!(handle.limiter().limiter().keys().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_hold_no_readiness_of_the_inner_service() {
    // The mock hands out one readiness reservation; a waiter that kept the
    // instance it was called on would hold it for its whole wait.
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    inner.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let first = svc.call(1);
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_response(1);
    first.await.unwrap();

    inner.allow(1);
    assert_ready!(svc.poll_ready()).unwrap();
    let waiting = tokio::spawn(svc.call(2)); // bucket empty: waits 100 ms
    tokio::task::yield_now().await;
    assert_ready!(svc.poll_ready()).expect("the reservation was released, not held by the waiter");
    drop(svc);
    advance(Duration::from_millis(100)).await;
    let (req, respond) = inner.next_request().await.unwrap();
    assert_eq!(req, 2);
    respond.send_response(2);
    assert_eq!(waiting.await.unwrap().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_inner_service_fails_gives_its_tokens_back() {
    let layer = TokenBucketLayer::builder(quota(10, 1))
        .wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    inner.allow(2);
    assert_ready!(svc.poll_ready()).unwrap();
    let first = svc.call(1);
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_response(1);
    first.await.unwrap();
    assert_ready!(svc.poll_ready()).unwrap();
    let waiting = tokio::spawn(svc.call(2));
    tokio::task::yield_now().await;
    inner.send_error(std::io::Error::other("backend gone"));
    advance(Duration::from_millis(100)).await;
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        Rejected::find(&*err).is_none(),
        "the inner error, not a rejection"
    );
    assert_eq!(
        handle.remaining(),
        1,
        "the token came back when the error did"
    );
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn config_as_data() {
    let cfg: TokenBucketConfig = serde_json::from_str(
        r#"{ "name": "rooms", "quota": { "rate": 2, "per": "1s", "burst": 3 }, "max_wait": "0s" }"#,
    )
    .unwrap();
    let layer = TokenBucketLayer::new(cfg).unwrap();
    assert_eq!(layer.handle().name(), "rooms");
    let svc = layer.layer(echo());
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(svc.clone().oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 3);
    let bad = serde_json::from_str::<TokenBucketConfig>(r#"{ "quota": { "rate": 0 } }"#);
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("rate must be positive (at least one token per period)"),
        "an invalid quota is refused when the configuration is read"
    );
    let unknown: Result<TokenBucketConfig, _> =
        serde_json::from_str(r#"{ "quota": { "rate": 1, "burts": 2 } }"#);
    assert!(unknown.is_err(), "typos are errors, not silently ignored");
}

#[test]
fn config_from_a_quota() {
    let cfg = TokenBucketConfig::from(quota(50, 50));
    assert_eq!((cfg.quota.tokens(), cfg.quota.burst()), (50, 50));
    assert_eq!(cfg.capacity, TokenBucketConfig::DEFAULT_CAPACITY);
    let err = TokenBucketLayer::builder(cfg)
        .capacity(0)
        .build_keyed(|n: &u32| Some(*n))
        .unwrap_err();
    assert_eq!(err.field(), "capacity");
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
                .unwrap()
        });
        let svc = layer.layer(echo());
        for _ in 0..5 {
            let _ = svc.clone().oneshot(1).await;
        }
        let counters = rec.counters.lock().unwrap();
        let get = |k: &str| counters.get(k).map(|c| c.load(Ordering::Relaxed));
        // The one vocabulary: requests_total{name, outcome, reason}.
        assert_eq!(
            get("floodwall_token_bucket_requests_total{name=rooms,outcome=admitted,reason=}"),
            Some(3)
        );
        assert_eq!(
            get(
                "floodwall_token_bucket_requests_total{name=rooms,outcome=rejected,reason=rate_limited}"
            ),
            Some(2)
        );
    }
}
