//! The admit path of every layer next to its nearest peer, one request at
//! a time: what `benches/icount.sh` counts instructions of (the `icount`
//! binary) and the `admit` criterion bench times.
//!
//! Each case builds the named layer around [`Respond`] and drives requests
//! through `poll_ready` + `call` + one poll of the response future; every
//! case answers at once (nothing is refused, nothing waits).

use std::task::{Context, Waker};
use std::time::Duration;

use crate::{Respond, ready_call};
use floodwall::breaker::{BreakerConfig, BreakerLayer};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::concurrency::{AdaptiveLimitLayer, AimdConfig};
use floodwall::deadline::{
    PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    Wire,
};
use floodwall::leaky_bucket::LeakyBucketLayer;
use floodwall::priority::{
    AdmissionConfig, AdmissionLayer, PriorityClientConfig, PriorityClientLayer,
};
use floodwall::sliding_window::{
    MAX_LIMIT, SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode,
};
use floodwall::throttle::{RetryConfig, RetryLayer, SplitMix, ThrottleConfig, ThrottleLayer};
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use tower::{Layer, Service};

type Req = http::Request<()>;

/// Drives `n` requests through `svc` on the admit path; returns the time
/// the loop took (the layer's construction is not timed).
fn drive<S>(mut svc: S, n: u64) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let req = http::Request::builder()
        .header("grpc-timeout", "2S")
        .header("x-floodwall-priority", "3-40")
        .extension(std::net::SocketAddr::from(([127, 0, 0, 1], 4000)))
        .body(())
        .expect("a request");
    let started = std::time::Instant::now();
    for _ in 0..n {
        let res = ready_call(&mut cx, &mut svc, std::hint::black_box(req.clone()));
        std::hint::black_box(res.expect("the admit path answers Ok"));
    }
    started.elapsed()
}

/// As [`drive`], awaiting each response to its end on a current-thread
/// runtime of its own (for layers whose calls run in tasks).
fn drive_to_end<S>(mut svc: S, n: u64) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let req = http::Request::new(());
    rt.block_on(async move {
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .expect("ready");
            let res = svc.call(std::hint::black_box(req.clone())).await;
            std::hint::black_box(res.expect("answered"));
        }
        started.elapsed()
    })
}

/// tower's `Hedge` policy: every request may be hedged.
#[derive(Clone, Copy, Debug)]
struct HedgeAll;

impl tower::hedge::Policy<Req> for HedgeAll {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn can_retry(&self, _: &Req) -> bool {
        true
    }
}

fn open_quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .expect("a quota")
        .with_burst(u32::MAX)
        .expect("a burst")
}

/// Every case, floodwall layers next to their nearest peers.
pub const CASES: &[&str] = &[
    "bare",
    "token-bucket",
    "token-bucket-keyed",
    "leaky-meter",
    "sliding-counter",
    "sliding-log",
    "sliding-fixed",
    "tower-rate-limit",
    "resilience-ratelimiter",
    "breaker",
    "resilience-breaker",
    "throttle",
    "retry",
    "tower-retry",
    "codel",
    "bulkhead",
    "resilience-bulkhead",
    "tower-concurrency-shed",
    "concurrency-aimd",
    "resilience-aimd",
    "deadline-server",
    "ema-timeout",
    "tower-timeout",
    "deadline-propagate",
    "priority-admission",
    "priority-client",
    "tower-load-shed",
    "hedge",
    "tower-hedge",
    "resilience-hedge",
    "fallback",
    "resilience-fallback",
    "coalesce",
    "resilience-coalesce",
    "server-stack",
    "bare-body",
    "server-stack-body",
    "peer-stack",
];

/// Runs `n` requests through `case` (inside a Tokio runtime context);
/// `None` for an unknown case.
pub fn run(case: &str, n: u64) -> Option<Duration> {
    Some(match case {
        "bare" => drive(Respond, n),
        "token-bucket" => drive(
            TokenBucketLayer::new(open_quota()).unwrap().layer(Respond),
            n,
        ),
        "token-bucket-keyed" => drive(
            TokenBucketLayer::builder(open_quota())
                .capacity(1024)
                .build_keyed(|r: &Req| r.extensions().get::<std::net::SocketAddr>().map(|a| a.ip()))
                .unwrap()
                .layer(Respond),
            n,
        ),
        "leaky-meter" => drive(
            LeakyBucketLayer::builder(open_quota())
                .build()
                .unwrap()
                .layer(Respond),
            n,
        ),
        "sliding-counter" => drive(
            SlidingWindowLayer::builder(wide())
                .build()
                .unwrap()
                .layer(Respond),
            n,
        ),
        "sliding-log" => drive(
            SlidingWindowLayer::builder(SlidingWindowConfig::from(wide()).mode(WindowMode::Log))
                .build()
                .unwrap()
                .layer(Respond),
            n,
        ),
        "sliding-fixed" => drive(
            SlidingWindowLayer::builder(SlidingWindowConfig::from(wide()).mode(WindowMode::Fixed))
                .build()
                .unwrap()
                .layer(Respond),
            n,
        ),
        "tower-rate-limit" => drive(
            tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1)).layer(Respond),
            n,
        ),
        "resilience-ratelimiter" => drive(
            tower_resilience_ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(usize::MAX / 2)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::ZERO)
                .build()
                .expect("a rate limiter")
                .layer(Respond),
            n,
        ),
        "breaker" => drive(
            BreakerLayer::new(BreakerConfig::default())
                .expect("a breaker")
                .layer(Respond),
            n,
        ),
        "resilience-breaker" => drive(
            tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .expect("a breaker")
                .layer(Respond),
            n,
        ),
        "throttle" => drive(
            ThrottleLayer::builder(ThrottleConfig::default())
                .rng(SplitMix::new(1))
                .build()
                .expect("a throttle")
                .layer(Respond),
            n,
        ),
        "retry" => drive(
            RetryLayer::builder(RetryConfig::default())
                .build()
                .expect("a retry layer")
                .layer(Respond),
            n,
        ),
        "tower-retry" => drive(tower::retry::RetryLayer::new(NoRetry).layer(Respond), n),
        "codel" => drive(
            CodelLayer::new(CodelConfig::with_workers(64))
                .expect("a codel queue")
                .layer(Respond),
            n,
        ),
        "bulkhead" => drive(
            floodwall::bulkhead::BulkheadLayer::new(floodwall::bulkhead::BulkheadConfig {
                max_concurrent: 64,
                ..Default::default()
            })
            .expect("a bulkhead")
            .layer(Respond),
            n,
        ),
        "resilience-bulkhead" => drive(
            tower_resilience_bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(64)
                .reject_when_full()
                .build()
                .expect("a bulkhead")
                .layer(Respond),
            n,
        ),
        "tower-concurrency-shed" => drive(
            tower::ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(64)
                .service(Respond),
            n,
        ),
        "concurrency-aimd" => drive(
            AdaptiveLimitLayer::new(AimdConfig::default())
                .expect("an AIMD limit")
                .layer(Respond),
            n,
        ),
        "resilience-aimd" => drive(
            tower_resilience_adaptive::AdaptiveLimiterLayer::new(
                tower_resilience_adaptive::Aimd::builder()
                    .build()
                    .expect("an AIMD limit"),
            )
            .layer(Respond),
            n,
        ),
        "deadline-server" => drive(
            ServerDeadlineLayer::new(ServerDeadlineConfig {
                wire: Wire::Grpc,
                trust_inbound: true,
                max: Some(Duration::from_secs(2)),
            })
            .unwrap()
            .layer(Respond),
            n,
        ),
        "ema-timeout" => drive(
            floodwall::deadline::EmaTimeoutLayer::new(
                floodwall::deadline::EmaTimeoutConfig::default(),
            )
            .unwrap()
            .layer(Respond),
            n,
        ),
        "tower-timeout" => drive(
            tower::timeout::TimeoutLayer::new(Duration::from_secs(2)).layer(Respond),
            n,
        ),
        "deadline-propagate" => drive(
            PropagateDeadlineLayer::new(PropagateDeadlineConfig::default())
                .unwrap()
                .layer(Respond),
            n,
        ),
        "priority-admission" => drive(
            AdmissionLayer::builder(AdmissionConfig::default())
                .trust_inbound(true)
                .build()
                .expect("an admission layer")
                .layer(Respond),
            n,
        ),
        "priority-client" => drive(
            PriorityClientLayer::new(PriorityClientConfig::default())
                .unwrap()
                .layer(Respond),
            n,
        ),
        "tower-load-shed" => drive(tower::load_shed::LoadShedLayer::new().layer(Respond), n),
        // Hedging with a delay no answer here reaches: the cost of arming a
        // hedge on every call.
        "hedge" => drive(
            floodwall::tail::HedgeLayer::new(floodwall::tail::HedgeConfig {
                delay: floodwall::tail::HedgeDelay::Fixed(Duration::from_secs(1)),
                ..floodwall::tail::HedgeConfig::default()
            })
            .unwrap()
            .layer(Respond),
            n,
        ),
        "tower-hedge" => drive(
            tower::hedge::Hedge::new::<Req>(Respond, HedgeAll, 10, 0.95, Duration::from_secs(10)),
            n,
        ),
        "resilience-hedge" => drive(
            tower_resilience_hedge::HedgeLayer::builder()
                .delay(Duration::from_secs(1))
                .max_hedged_attempts(2)
                .build()
                .layer(Respond),
            n,
        ),
        // Fallback on a call that succeeds: the cost of being ready to
        // answer from the fallback.
        "fallback" => drive(
            floodwall::tail::FallbackLayer::new(
                floodwall::tail::FallbackConfig::default(),
                floodwall::tail::fallback::value(http::Response::new(())),
            )
            .unwrap()
            .layer(Respond),
            n,
        ),
        "resilience-fallback" => drive(
            tower_resilience_fallback::FallbackLayer::<
                Req,
                http::Response<()>,
                std::convert::Infallible,
            >::value(http::Response::new(()))
            .layer(Respond),
            n,
        ),
        // Coalescing, one request at a time (each one a leader): awaited
        // to its end on a runtime of its own, since floodwall's call runs
        // in a task.
        "coalesce" => drive_to_end(
            floodwall::tail::CoalesceLayer::new(
                floodwall::tail::CoalesceConfig::default(),
                |_: &Req| Some(1u8),
            )
            .unwrap()
            .layer(Respond),
            n,
        ),
        "resilience-coalesce" => drive_to_end(
            tower_resilience_coalesce::CoalesceLayer::new(|_: &Req| 1u8).layer(Respond),
            n,
        ),
        // The recommended server stack (issue 30's e2e `floodwall` stack):
        // answers, server deadline, per-IP token bucket, CoDel.
        "server-stack" => drive(server_stack(Respond), n),
        // The same stack and the peer stack (issue 30's e2e `peer`:
        // tower_governor per IP, tower's Timeout, LoadShed +
        // ConcurrencyLimit) answering with axum's body, which
        // tower_governor's refusals need; `bare-body` is their baseline.
        "bare-body" => drive(RespondBody, n),
        "server-stack-body" => drive(server_stack(RespondBody), n),
        "peer-stack" => drive(
            tower::ServiceBuilder::new()
                .layer(
                    tower_governor::GovernorLayer::<_, _, axum::body::Body>::new(
                        tower_governor::governor::GovernorConfigBuilder::default()
                            .per_nanosecond(1)
                            .burst_size(u32::MAX)
                            .key_extractor(PeerIp)
                            .finish()
                            .expect("a governor config"),
                    ),
                )
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::ConcurrencyLimitLayer::new(1_024))
                .service(RespondBody),
            n,
        ),
        _ => return None,
    })
}

/// The recommended server stack (issue 30's e2e `floodwall` stack) over
/// `inner`: answers, server deadline, per-IP token bucket, CoDel.
fn server_stack<S, B>(
    inner: S,
) -> impl Service<Req, Response = http::Response<B>, Error = std::convert::Infallible>
where
    S: Service<Req, Response = http::Response<B>, Error = std::convert::Infallible> + Clone,
    B: Default,
{
    tower::ServiceBuilder::new()
        .layer(floodwall::http::answer::AnswerLayer::new())
        .layer(
            ServerDeadlineLayer::new(ServerDeadlineConfig {
                max: Some(Duration::from_secs(2)),
                ..ServerDeadlineConfig::default()
            })
            .unwrap(),
        )
        .layer(
            TokenBucketLayer::builder(open_quota())
                .capacity(100_000)
                .build_keyed(|r: &Req| r.extensions().get::<std::net::SocketAddr>().map(|a| a.ip()))
                .unwrap(),
        )
        .layer(CodelLayer::new(CodelConfig::with_workers(1_024)).unwrap())
        .service(inner)
}

/// [`Respond`] with axum's body.
#[derive(Clone, Copy, Debug)]
struct RespondBody;

impl<B> Service<http::Request<B>> for RespondBody {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let mut res = http::Response::new(axum::body::Body::empty());
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        std::future::ready(Ok(res))
    }
}

/// tower_governor's key: the peer address's IP.
#[derive(Clone, Copy, Debug)]
struct PeerIp;

impl tower_governor::key_extractor::KeyExtractor for PeerIp {
    type Key = std::net::IpAddr;

    fn extract<T>(
        &self,
        req: &http::Request<T>,
    ) -> Result<Self::Key, tower_governor::GovernorError> {
        req.extensions()
            .get::<std::net::SocketAddr>()
            .map(std::net::SocketAddr::ip)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The widest sliding window: never refuses at the request rates here.
fn wide() -> Window {
    Window::new(MAX_LIMIT, Duration::from_millis(1)).expect("a window")
}

/// tower's retry with a policy that never retries: the layer's own cost.
#[derive(Clone, Copy, Debug)]
struct NoRetry;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for NoRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}
