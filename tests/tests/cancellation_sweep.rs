//! The cancellation sweep: one harness drives any floodwall layer with
//! thousands of requests under virtual time, polls each response future a
//! random number of times (zero included) while the clock moves, and drops
//! it wherever it is — before its first poll, while it waits for a token or
//! a worker, while the backend works. Then every permit, slot and counter
//! the layer keeps must be back to idle, and no backend future may be left
//! alive.
//!
//! ARCHITECTURE.md, rule 3: "Cancellation returns everything." Each layer's
//! own tests drop futures at chosen points; this sweep drops them at every
//! point, for every layer and for the whole stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall::breaker::{BreakerConfig, BreakerLayer, State, WindowKind};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::core::BoxError;
use floodwall::deadline::{PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall::grpc::GrpcRejectionLayer;
use floodwall::http::HttpRejectionLayer;
use floodwall::leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
use floodwall::priority::{
    AdmissionConfig, AdmissionLayer, AssignConfig, AssignPriorityLayer, Priority,
    PriorityClientConfig, PriorityClientLayer,
};
use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode};
use floodwall::throttle::{
    RetryBudget, RetryConfig, RetryLayer, SplitMix, ThrottleConfig, ThrottleLayer,
};
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// A backend that takes `x-delay-us` of virtual time, fails when `x-fail`
/// is set, and counts its calls and the futures of its still alive.
#[derive(Clone, Default)]
struct Backend {
    live: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<()>> for Backend {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<()>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.live.clone());
        let delay = req
            .headers()
            .get("x-delay-us")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let fail = req.headers().contains_key("x-fail");
        Box::pin(async move {
            let _alive = alive;
            tokio::time::sleep(Duration::from_micros(delay)).await;
            if fail {
                Err("backend failed".into())
            } else {
                Ok(Response::new(()))
            }
        })
    }
}

/// How a sweep drives its service.
#[derive(Clone, Copy)]
struct Sweep {
    requests: usize,
    seed: u64,
    /// Share of requests the backend fails.
    fail: f64,
    /// The backend's delay is uniform in `0..max_delay`.
    max_delay: Duration,
    /// Each step moves the clock by up to this much.
    max_step: Duration,
    /// Each future is polled up to this many times before it is dropped.
    max_polls: u32,
    /// Give requests a `grpc-timeout` of up to this much.
    timeout: Option<Duration>,
    /// Let the clock run (sleeping each step) instead of advancing a
    /// paused one: for layers that wait on real I/O.
    real_time: bool,
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            requests: 3_000,
            seed: 2026,
            fail: 0.0,
            max_delay: Duration::from_millis(2),
            max_step: Duration::from_micros(500),
            max_polls: 12,
            timeout: None,
            real_time: false,
        }
    }
}

/// What happened to the sweep's requests.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    err: usize,
    dropped: usize,
    never_polled: usize,
}

/// SplitMix64: the sweep's schedule is a function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn request(rng: &mut Rng, sweep: &Sweep) -> Request<()> {
    let delay = rng.below(sweep.max_delay.as_micros() as u64);
    let mut req = Request::builder().header("x-delay-us", delay.to_string());
    if rng.chance(sweep.fail) {
        req = req.header("x-fail", "1");
    }
    if let Some(max) = sweep.timeout {
        let ms = 1 + rng.below(max.as_millis() as u64);
        req = req.header("grpc-timeout", format!("{ms}m"));
    }
    req.body(()).unwrap()
}

/// A response future in flight, with the polls it has left.
struct InFlight<F> {
    fut: Pin<Box<F>>,
    polls: u64,
    polled: bool,
}

async fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx| Poll::Ready(fut.take().unwrap().poll(cx))).await
}

/// Issues `sweep.requests` requests through `svc`, keeping many in flight;
/// each response future is polled up to a random number of times, the
/// clock moving between steps, then dropped if it has not finished.
async fn sweep<S>(svc: &mut S, sweep: Sweep) -> Outcome
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    sweep_watching(svc, sweep, || {}).await
}

/// As [`sweep`], calling `watch` after every step (to sample a layer's
/// state while requests are in flight).
async fn sweep_watching<S>(svc: &mut S, sweep: Sweep, mut watch: impl FnMut()) -> Outcome
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    let mut rng = Rng(sweep.seed);
    let mut out = Outcome::default();
    let mut flying: Vec<InFlight<S::Future>> = Vec::new();
    for _ in 0..sweep.requests {
        let req = request(&mut rng, &sweep);
        let fut = svc
            .ready()
            .await
            .expect("floodwall layers stay ready")
            .call(req);
        let polls = rng.below(u64::from(sweep.max_polls) + 1);
        flying.push(InFlight {
            fut: Box::pin(fut),
            polls,
            polled: false,
        });
        let mut i = 0;
        while i < flying.len() {
            let InFlight { fut, polls, polled } = &mut flying[i];
            if *polls == 0 {
                out.dropped += 1;
                out.never_polled += usize::from(!*polled);
                drop(flying.swap_remove(i));
                continue;
            }
            *polls -= 1;
            *polled = true;
            match poll_once(fut.as_mut()).await {
                Poll::Ready(Ok(_)) => out.ok += 1,
                Poll::Ready(Err(_)) => out.err += 1,
                Poll::Pending => {
                    i += 1;
                    continue;
                }
            }
            drop(flying.swap_remove(i));
        }
        let step = Duration::from_micros(rng.below(sweep.max_step.as_micros() as u64));
        if sweep.real_time {
            tokio::time::sleep(step).await;
        } else {
            advance(step).await;
        }
        watch();
    }
    out.dropped += flying.len();
    drop(flying);
    out
}

/// Sweeps `layer` over a fresh [`Backend`] and checks that no backend
/// future outlived its caller; returns the backend and the outcome.
async fn sweep_layer<L>(layer: L, config: Sweep) -> (Backend, Outcome)
where
    L: Layer<Backend>,
    L::Service: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    let backend = Backend::default();
    let mut svc = layer.layer(backend.clone());
    let out = sweep(&mut svc, config).await;
    assert_eq!(backend.live(), 0, "a backend future outlived its caller");
    (backend, out)
}

/// Every sweep must have both finished and abandoned requests (some never
/// polled at all), or it tested nothing. Tests call it last: a leak usually
/// starves the sweep too, but their own checks say which state leaked.
fn exercised(out: &Outcome) {
    eprintln!("{}: {out:?}", std::thread::current().name().unwrap_or("?"));
    assert!(out.ok > 20, "{out:?}");
    assert!(out.dropped > 50, "{out:?}");
    assert!(out.never_polled > 10, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn token_bucket_in_wait_mode() {
    let backend = Backend::default();
    let layer =
        TokenBucketLayer::builder(Quota::per_second(3_000).unwrap().with_burst(20).unwrap())
            .wait(Duration::from_millis(2))
            .build()
            .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let start = Instant::now();
    let out = sweep(&mut svc, Sweep::default()).await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(backend.live(), 0, "a backend future outlived its caller");
    assert!(backend.calls() as f64 <= 20.0 + 3_000.0 * elapsed + 1.0);
    // Reservations of dropped waiters were refunded or have passed.
    advance(Duration::from_millis(20)).await;
    assert_eq!(handle.remaining(), 20);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn keyed_token_bucket_in_wait_mode() {
    // Four keys, from the request's delay.
    let key = |req: &Request<()>| {
        let delay: u64 = req.headers()["x-delay-us"].to_str().ok()?.parse().ok()?;
        Some(delay % 4)
    };
    let layer = TokenBucketLayer::builder(Quota::per_second(700).unwrap().with_burst(10).unwrap())
        .wait(Duration::from_millis(3))
        .capacity(1_000)
        .build_keyed(key)
        .unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    advance(Duration::from_millis(20)).await;
    let buckets = handle.limiter().limiter();
    for k in 0..4 {
        assert_eq!(buckets.remaining(&k, Instant::now()), 10, "key {k}");
    }
    assert!(buckets.keys().len() <= 4);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_shaper() {
    // A cancelled waiter's slot is not given back (the shaper's convention,
    // SPECS.md), so the rate stays above the ~4,000 requests/s offered or
    // the queue would stay full of abandoned slots.
    let layer = LeakyBucketLayer::builder(LeakyBucketConfig::shaper(
        Quota::per_second(5_000).unwrap(),
        10,
    ))
    .build()
    .unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    // A cancelled waiter's slot passes unused (the shaper's convention);
    // once the slots' time has passed the queue is empty.
    advance(Duration::from_millis(10)).await;
    assert_eq!(handle.limiter().queued(Instant::now()), 0);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn sliding_window_counter() {
    let window = Window::new(300, Duration::from_millis(100)).unwrap();
    let layer = SlidingWindowLayer::builder(window).build().unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    advance(Duration::from_millis(200)).await;
    assert_eq!(handle.remaining(), 300);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_meter() {
    let layer =
        LeakyBucketLayer::builder(Quota::per_second(3_000).unwrap().with_burst(20).unwrap())
            .build()
            .unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    advance(Duration::from_millis(20)).await;
    assert_eq!(
        handle.limiter().level(Instant::now()),
        0,
        "the meter drained"
    );
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn sliding_log_and_fixed_window() {
    let window = Window::new(300, Duration::from_millis(100)).unwrap();
    let layer =
        SlidingWindowLayer::builder(SlidingWindowConfig::from(window).mode(WindowMode::Log))
            .build()
            .unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    advance(Duration::from_millis(200)).await;
    assert_eq!(handle.remaining(), 300);
    exercised(&out);
    let layer =
        SlidingWindowLayer::builder(SlidingWindowConfig::from(window).mode(WindowMode::Fixed))
            .build()
            .unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    advance(Duration::from_millis(200)).await;
    assert_eq!(handle.remaining(), 300);
    exercised(&out);
}

/// The edge layers (priority assignment, rejection responders) hold
/// nothing; dropping through them must still drop what is below.
#[tokio::test(start_paused = true)]
async fn edge_assignment_and_rejection_responders() {
    let backend = Backend::default();
    let bucket =
        TokenBucketLayer::builder(Quota::per_second(3_000).unwrap().with_burst(20).unwrap())
            .wait(Duration::from_millis(2))
            .build()
            .unwrap();
    let mut http = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(AssignPriorityLayer::new(AssignConfig::default()).unwrap())
        .layer(bucket.clone())
        .service(backend.clone());
    let out = sweep(&mut http, Sweep::default()).await;
    assert_eq!(backend.live(), 0);
    // Refusals became responses, not errors.
    assert_eq!(out.err, 0, "{out:?}");
    exercised(&out);
    let mut grpc = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::default())
        .layer(bucket)
        .service(backend.clone());
    let out = sweep(&mut grpc, Sweep::default()).await;
    assert_eq!(backend.live(), 0);
    assert_eq!(out.err, 0, "{out:?}");
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_through_its_half_open_probes() {
    let backend = Backend::default();
    let config = BreakerConfig {
        window: WindowKind::Count(10),
        minimum_calls: 5,
        open_duration: Duration::from_millis(2),
        half_open_calls: 3,
        detect_slow_calls: false,
        ..BreakerConfig::default()
    };
    let layer = BreakerLayer::new(config).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.clone());
    let mut seen = std::collections::HashSet::new();
    let out = sweep_watching(
        &mut svc,
        Sweep {
            fail: 0.5,
            ..Sweep::default()
        },
        || {
            seen.insert(handle.state());
        },
    )
    .await;
    // The sweep moved it through open and half-open, not just closed.
    assert!(
        seen.contains(&State::Open) && seen.contains(&State::HalfOpen),
        "{seen:?}"
    );
    assert_eq!(backend.live(), 0);
    // Dropped probes gave their slots back: a healthy backend closes the
    // breaker again instead of finding it stuck half-open.
    advance(Duration::from_millis(10)).await;
    for _ in 0..5 {
        if handle.state() == State::Closed {
            break;
        }
        let _ = svc.ready().await.unwrap().call(Request::new(())).await;
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.state(), State::Closed);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn codel_queue_gives_back_every_worker_and_slot() {
    let layer = CodelLayer::new(CodelConfig::with_workers(4)).unwrap();
    let handle = layer.handle();
    let (_, out) = sweep_layer(layer, Sweep::default()).await;
    assert_eq!(
        handle.in_flight(),
        0,
        "a worker was kept by a dropped request"
    );
    assert_eq!(handle.queue_len(), 0, "a dropped request stayed queued");
    assert_eq!(handle.waiters(), 0, "a waiter's slot leaked");
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn throttle_and_retry_budget() {
    let backend = Backend::default();
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let throttle = ThrottleLayer::builder(ThrottleConfig::default())
        .rng(SplitMix::new(7))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder(RetryConfig::default())
                .budget(budget.clone())
                .build()
                .unwrap(),
        )
        .layer(throttle)
        .service(backend.clone());
    // The throttle counts an attempt that never got an answer as not
    // accepted (its documented convention), so a sweep that abandons most
    // attempts would have it throttle everything. Here most run to the end.
    let out = sweep(
        &mut svc,
        Sweep {
            fail: 0.1,
            max_polls: 40,
            ..Sweep::default()
        },
    )
    .await;
    assert_eq!(backend.live(), 0);
    assert!(budget.tokens() <= budget.max_tokens());
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn deadline_server_and_propagation() {
    let backend = Backend::default();
    let mut svc = ServiceBuilder::new()
        .layer(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap())
        .layer(PropagateDeadlineLayer::new(Default::default()).unwrap())
        .service(backend.clone());
    let out = sweep(
        &mut svc,
        Sweep {
            timeout: Some(Duration::from_millis(4)),
            ..Sweep::default()
        },
    )
    .await;
    assert!(out.err > 0, "some deadlines expired during the sweep");
    assert_eq!(backend.live(), 0);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn priority_admission_and_collaborative_client() {
    let backend = Backend::default();
    let server = AdmissionLayer::new(AdmissionConfig::default()).unwrap();
    let handle = server.handle();
    let mut svc = ServiceBuilder::new()
        .layer(PriorityClientLayer::new(PriorityClientConfig::default()).unwrap())
        .layer(server)
        .service(backend.clone());
    let out = sweep(&mut svc, Sweep::default()).await;
    assert_eq!(backend.live(), 0);
    // Nothing queued, so no overload was seen: everything is admitted.
    assert_eq!(handle.level(), Priority::LOWEST);
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn the_whole_stack() {
    let backend = Backend::default();
    let codel = CodelLayer::new(CodelConfig::with_workers(4)).unwrap();
    let queue = codel.handle();
    let breaker = BreakerLayer::new(BreakerConfig {
        window: WindowKind::Count(10),
        minimum_calls: 5,
        open_duration: Duration::from_millis(2),
        half_open_calls: 3,
        detect_slow_calls: false,
        ..BreakerConfig::default()
    })
    .unwrap();
    let breaker_handle = breaker.handle();
    let bucket =
        TokenBucketLayer::builder(Quota::per_second(5_000).unwrap().with_burst(50).unwrap())
            .wait(Duration::from_millis(2))
            .build()
            .unwrap();
    let tokens = bucket.handle();
    let mut svc = ServiceBuilder::new()
        .layer(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap())
        .layer(bucket)
        .layer(AdmissionLayer::new(AdmissionConfig::default()).unwrap())
        .layer(codel)
        .layer(
            RetryLayer::builder(RetryConfig::default())
                .budget(Arc::new(RetryBudget::new(10.0, 0.1).unwrap()))
                .build()
                .unwrap(),
        )
        .layer(PropagateDeadlineLayer::new(Default::default()).unwrap())
        .layer(PriorityClientLayer::new(PriorityClientConfig::default()).unwrap())
        .layer(breaker)
        .layer(
            // Seeded, like the sweep: the same schedule every run.
            ThrottleLayer::builder(ThrottleConfig::default())
                .rng(SplitMix::new(7))
                .build()
                .unwrap(),
        )
        .service(backend.clone());
    let out = sweep(
        &mut svc,
        Sweep {
            fail: 0.05,
            max_polls: 40,
            timeout: Some(Duration::from_millis(20)),
            ..Sweep::default()
        },
    )
    .await;
    assert_eq!(backend.live(), 0);
    assert_eq!(queue.in_flight(), 0);
    assert_eq!(queue.queue_len(), 0);
    assert_eq!(queue.waiters(), 0);
    advance(Duration::from_millis(50)).await;
    assert_eq!(tokens.remaining(), 50);
    for _ in 0..5 {
        if breaker_handle.state() == State::Closed {
            break;
        }
        let _ = svc.ready().await.unwrap().call(Request::new(())).await;
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(breaker_handle.state(), State::Closed);
    exercised(&out);
}

/// The Redis limiter against a real `redis-server`, in real time (a paused
/// clock would jump ahead whenever the runtime waits for the socket). With
/// leasing on, many requests are dropped while their key's lease fetch is
/// in flight, or while they wait for another request's fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limiter_with_leases() {
    use floodwall::redis::{RedisConnection, RedisLimiter, RedisRateLimitLayer, Source};
    use floodwall_redis::test_util::RedisServer;

    let server = RedisServer::start();
    let quota = Quota::per_second(100_000)
        .unwrap()
        .with_burst(1_000)
        .unwrap();
    let limiter: RedisLimiter<u64> = RedisLimiter::builder(
        RedisConnection::open(&server.url()).expect("a redis URL"),
        quota,
    )
    .lease(10, Duration::from_secs(1))
    .timeout(Duration::from_secs(2))
    .build()
    .unwrap();
    let backend = Backend::default();
    // Four keys, from the request's delay.
    let layer = RedisRateLimitLayer::new(limiter.clone(), |req: &Request<()>| {
        let delay: u64 = req.headers()["x-delay-us"].to_str().ok()?.parse().ok()?;
        Some(delay % 4)
    });
    let mut svc = layer.layer(backend.clone());
    let out = sweep(
        &mut svc,
        Sweep {
            requests: 1_000,
            real_time: true,
            ..Sweep::default()
        },
    )
    .await;
    // Let replies to abandoned calls arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.live(), 0);
    // No lease claim was left behind by a dropped request: each key's next
    // requests fetch or spend a lease at once, from Redis, not after
    // waiting out the timeout for a fetch that will never finish.
    for key in 0..4 {
        for _ in 0..12 {
            let started = Instant::now();
            let source = limiter.acquire(key, 1).await.unwrap();
            assert!(
                matches!(source, Source::Redis | Source::Lease),
                "{source:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "waited for a lost fetch"
            );
        }
    }
    assert_eq!(limiter.stats().errors, 0);
    exercised(&out);
}

/// Lets tasks a layer spawned see that nobody waits for them any more.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn hedging_cancels_every_attempt_it_started() {
    use floodwall::tail::{HedgeConfig, HedgeDelay, HedgeLayer};
    let layer = HedgeLayer::new(HedgeConfig {
        max_attempts: 3,
        delay: HedgeDelay::Fixed(Duration::from_micros(700)),
        ..HedgeConfig::default()
    })
    .unwrap();
    let budget = layer.handle().budget().clone();
    let (backend, out) = sweep_layer(
        layer,
        Sweep {
            fail: 0.2,
            ..Sweep::default()
        },
    )
    .await;
    // Hedges went out: more backend calls than requests.
    assert!(backend.calls() > 3_000, "{} calls", backend.calls());
    assert!(budget.tokens() <= budget.max_tokens());
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn coalescing_frees_every_key_and_cancels_calls_nobody_waits_for() {
    use floodwall::tail::{CoalesceConfig, CoalesceLayer};
    // Requests with the same delay share a call: many do, at 2,000 delays.
    let layer = CoalesceLayer::new(CoalesceConfig::default(), |req: &Request<()>| {
        req.headers().get("x-delay-us").cloned()
    })
    .unwrap();
    let handle = layer.handle();
    let backend = Backend::default();
    let mut svc = layer.layer(backend.clone());
    let out = sweep(&mut svc, Sweep::default()).await;
    settle().await;
    assert_eq!(backend.live(), 0, "a call ran on for nobody");
    assert_eq!(handle.in_flight(), 0, "a key stayed in flight");
    assert!(backend.calls() < 3_000, "nothing was coalesced");
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn fallback_and_the_ema_timeout() {
    use floodwall::deadline::{EmaTimeoutConfig, EmaTimeoutLayer};
    use floodwall::tail::{FallbackConfig, FallbackLayer, fallback};
    let ema = EmaTimeoutLayer::new(EmaTimeoutConfig {
        avg: Duration::from_micros(500),
        hwm: Duration::from_millis(1),
        max: Duration::from_micros(1_500),
        n: 10,
    })
    .unwrap();
    let backend = Backend::default();
    let mut svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::new(
                FallbackConfig::default(),
                fallback::value(Response::new(())),
            )
            .unwrap(),
        )
        .layer(ema)
        .service(backend.clone());
    let out = sweep(
        &mut svc,
        Sweep {
            fail: 0.3,
            ..Sweep::default()
        },
    )
    .await;
    assert_eq!(backend.live(), 0);
    assert_eq!(out.err, 0, "every failure and timeout fell back: {out:?}");
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn breakers_per_key_give_back_their_probes() {
    use floodwall::breaker::{BreakerGroupConfig, BreakerGroupLayer};
    let config = BreakerGroupConfig {
        breaker: BreakerConfig {
            window: WindowKind::Count(10),
            minimum_calls: 5,
            open_duration: Duration::from_millis(2),
            half_open_calls: 2,
            detect_slow_calls: false,
            ..BreakerConfig::default()
        },
        max_keys: 6,
    };
    // Eight keys over six slots: breakers are evicted and made anew.
    let layer = BreakerGroupLayer::new(config, |req: &Request<()>| {
        let delay: u64 = req
            .headers()
            .get("x-delay-us")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(delay % 8)
    })
    .unwrap();
    let handle = layer.handle();
    let mut seen = std::collections::HashSet::new();
    let backend = Backend::default();
    let mut svc = layer.layer(backend.clone());
    let out = sweep_watching(
        &mut svc,
        Sweep {
            fail: 0.5,
            ..Sweep::default()
        },
        || {
            seen.extend(handle.not_closed().into_iter().map(|(_, s)| s));
        },
    )
    .await;
    assert!(
        seen.contains(&State::Open) && seen.contains(&State::HalfOpen),
        "{seen:?}"
    );
    assert_eq!(backend.live(), 0);
    assert!(handle.keys() <= 6);
    // Dropped probes gave their slots back: healthy calls close every key.
    for key in 0..8u64 {
        for _ in 0..6 {
            if handle.state(&key).is_none_or(|s| s == State::Closed) {
                break;
            }
            advance(Duration::from_millis(3)).await;
            let req = Request::builder()
                .header("x-delay-us", key.to_string())
                .body(())
                .unwrap();
            let _ = svc.ready().await.unwrap().call(req).await;
        }
        assert!(
            handle.state(&key).is_none_or(|s| s == State::Closed),
            "key {key}: {:?}",
            handle.state(&key)
        );
    }
    exercised(&out);
}

#[tokio::test(start_paused = true)]
async fn hot_keys_and_their_cache_leave_no_call_behind() {
    use floodwall::hotkey::{HotCacheConfig, HotCacheLayer, HotKeyConfig, HotKeyLayer};
    // Four keys, all hot within a few requests; answers cached for 1 ms so
    // that misses (and their coalesced calls) keep coming.
    let hot = HotKeyLayer::new(
        HotKeyConfig {
            min_count: 5,
            ..HotKeyConfig::default()
        },
        |req: &Request<()>| {
            let delay: u64 = req
                .headers()
                .get("x-delay-us")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            Some(delay % 4)
        },
    )
    .unwrap();
    let hot_handle = hot.handle();
    let cache: HotCacheLayer<u64, Response<()>> = HotCacheLayer::new(HotCacheConfig {
        ttl: Duration::from_millis(1),
        ..HotCacheConfig::default()
    })
    .unwrap();
    let cache_handle = cache.handle();
    let backend = Backend::default();
    let mut svc = ServiceBuilder::new()
        .layer(hot)
        .layer(cache)
        .service(backend.clone());
    let out = sweep(&mut svc, Sweep::default()).await;
    settle().await;
    assert_eq!(backend.live(), 0, "a call ran on for nobody");
    assert_eq!(cache_handle.in_flight(), 0, "a key stayed in flight");
    assert_eq!(hot_handle.hot().len(), 4);
    assert!(backend.calls() < 3_000, "nothing was cached");
    exercised(&out);
}
