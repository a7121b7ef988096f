//! The API convention (docs/architecture.md, "One API convention"), checked
//! by the compiler for every layer the facade exports:
//!
//! - `XLayer::new(config) -> Result<XLayer, floodwall::core::ConfigError>`
//!   (the one `ConfigError` type);
//! - `XLayer::builder(config).name(..)` then `.build() -> Result<XLayer, _>`;
//! - `layer.handle()`: concrete, `Clone + Send + Sync + 'static`, naming
//!   the layer;
//! - `future` and `error` modules;
//! - `tokio::spawn(svc.oneshot(req))` around a plain `service_fn`, with no
//!   helper, and an error that converts into `BoxError`.
//!
//! The mapping layers (HTTP/gRPC rejection answers, priority assignment)
//! hold no state and take no name: for them only `new` and the spawn are
//! checked. A facade module missing here fails
//! `every_facade_module_has_a_shape_case`.

// The `future::… as _` imports are the check that each crate's `future`
// module exists and holds its response futures: they only need to resolve.
#![allow(unused_imports)]

mod common;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use floodwall::core::{BoxError, ConfigError};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = Request<String>;
type Res = Response<String>;

/// A plain service: answers every request with an empty 200.
fn plain()
-> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send + 'static {
    service_fn(|_req: Req| async { Ok::<_, Infallible>(Response::new(String::new())) })
}

fn request() -> Req {
    let mut req = Request::new(String::new());
    // What servers put in extensions (keyed limiters read the peer).
    req.extensions_mut()
        .insert(SocketAddr::from((Ipv4Addr::LOCALHOST, 4000)));
    req
}

/// The one configuration error type: only `floodwall::core::ConfigError`
/// fits.
fn one_config_error<T>(result: Result<T, ConfigError>) -> T {
    result.expect("a valid config")
}

/// A handle is concrete, cheap to share across tasks, and names its layer.
fn shareable<H: Clone + Send + Sync + 'static>(handle: &H) -> H {
    handle.clone()
}

/// `tokio::spawn(svc.oneshot(req))` exactly as a user writes it; the answer
/// is a response or an error that converts into `BoxError`.
macro_rules! spawn_oneshot {
    ($layer:expr) => {{
        let svc = $layer.layer(plain());
        let joined = tokio::spawn(svc.oneshot(request())).await;
        let answer: Result<Res, BoxError> = joined.expect("the task ran").map_err(Into::into);
        answer
    }};
}

/// `new`, `builder(..).name(..).build()`, the handle's name, and a spawned
/// call admitted.
macro_rules! admission_shape {
    ($layer:ty, $config:expr, $handle:ty) => {{
        let _: $layer = one_config_error(<$layer>::new($config));
        let layer: $layer = one_config_error(<$layer>::builder($config).name("shape").build());
        let handle: $handle = shareable(&layer.handle());
        assert_eq!(handle.name(), "shape");
        spawn_oneshot!(layer).expect("admitted");
    }};
}

const CASES: &[&str] = &[
    "token_bucket",
    "leaky_bucket",
    "sliding_window",
    "ratelimit",
    "throttle",
    "breaker",
    "codel",
    "bulkhead",
    "concurrency",
    "deadline",
    "priority",
    "http",
    "grpc",
    "redis",
    "tail",
    "hotkey",
];

/// Facade modules that hold no layer of their own.
const NOT_LAYERS: &[&str] = &["core", "admit"];

#[tokio::test]
async fn token_bucket() {
    use floodwall::token_bucket::future::ResponseFuture as _;
    use floodwall::token_bucket::{
        Quota, RateLimitHandle, TokenBucket, TokenBucketLayer, error::RateLimited,
    };
    let quota = Quota::per_second(100).unwrap();
    admission_shape!(TokenBucketLayer, quota, RateLimitHandle<TokenBucket>);
    let _: Option<RateLimited> = None;
    // Keyed, through the same builder.
    let keyed = TokenBucketLayer::builder(quota)
        .capacity(16)
        .build_keyed(|req: &Req| req.extensions().get::<SocketAddr>().copied())
        .unwrap();
    spawn_oneshot!(keyed).expect("admitted");
}

#[tokio::test]
async fn leaky_bucket() {
    use floodwall::leaky_bucket::future::ResponseFuture as _;
    use floodwall::leaky_bucket::{
        LeakyBucket, LeakyBucketConfig, LeakyBucketLayer, Quota, RateLimitHandle,
        error::RateLimited,
    };
    let config = LeakyBucketConfig::shaper(Quota::per_second(100).unwrap(), 4);
    admission_shape!(
        LeakyBucketLayer,
        config.clone(),
        RateLimitHandle<LeakyBucket>
    );
    let _: Option<RateLimited> = None;
}

#[tokio::test]
async fn sliding_window() {
    use floodwall::sliding_window::future::ResponseFuture as _;
    use floodwall::sliding_window::{
        RateLimitHandle, SlidingWindow, SlidingWindowConfig, SlidingWindowLayer, Window,
        WindowMode, error::RateLimited,
    };
    let _: Option<RateLimited> = None;
    let config = SlidingWindowConfig::from(Window::new(10, Duration::from_secs(1)).unwrap())
        .mode(WindowMode::Log);
    admission_shape!(
        SlidingWindowLayer,
        config.clone(),
        RateLimitHandle<SlidingWindow>
    );
}

#[tokio::test]
async fn ratelimit() {
    // The generic layer every rate limiter is: any algorithm, same shape.
    use floodwall::ratelimit::{RateLimitHandle, RateLimitLayer};
    use floodwall::token_bucket::{Quota, TokenBucket, TokenBuckets};
    let quota = Quota::per_second(5).unwrap();
    admission_shape!(
        RateLimitLayer<TokenBuckets>,
        quota,
        RateLimitHandle<TokenBucket>
    );
}

#[tokio::test]
async fn throttle() {
    use floodwall::throttle::future::{ResponseFuture as _, RetryFuture as _};
    use floodwall::throttle::{
        RetryConfig, RetryHandle, RetryLayer, ThrottleConfig, ThrottleHandle, ThrottleLayer,
        error::Throttled,
    };
    admission_shape!(ThrottleLayer, ThrottleConfig::default(), ThrottleHandle);
    admission_shape!(RetryLayer, RetryConfig::default(), RetryHandle);
    let _: Option<Throttled> = None;
}

#[tokio::test]
async fn breaker() {
    use floodwall::breaker::future::ResponseFuture as _;
    use floodwall::breaker::{BreakerConfig, BreakerHandle, BreakerLayer, error::CircuitOpen};
    admission_shape!(BreakerLayer, BreakerConfig::default(), BreakerHandle);
    let _: Option<CircuitOpen> = None;
    // Breakers per key: the same shape, with the key function.
    use floodwall::breaker::{BreakerGroupConfig, BreakerGroupHandle, BreakerGroupLayer};
    let key = |req: &Req| req.extensions().get::<SocketAddr>().copied();
    let _: BreakerGroupLayer<SocketAddr, _> =
        one_config_error(BreakerGroupLayer::new(BreakerGroupConfig::default(), key));
    let layer = one_config_error(
        BreakerGroupLayer::builder(BreakerGroupConfig::default(), key)
            .name("shape")
            .build(),
    );
    let handle: BreakerGroupHandle<SocketAddr> = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    spawn_oneshot!(layer).expect("admitted");
}

#[tokio::test]
async fn codel() {
    use floodwall::codel::future::ResponseFuture as _;
    use floodwall::codel::{CodelConfig, CodelHandle, CodelLayer, error::Shed};
    admission_shape!(CodelLayer, CodelConfig::with_workers(4), CodelHandle);
    let _: Option<Shed> = None;
}

#[tokio::test]
async fn bulkhead() {
    use floodwall::bulkhead::{BulkheadConfig, BulkheadHandle, BulkheadLayer};
    admission_shape!(BulkheadLayer, BulkheadConfig::default(), BulkheadHandle);
}

#[tokio::test]
async fn concurrency() {
    use floodwall::concurrency::future::ResponseFuture as _;
    use floodwall::concurrency::{
        AdaptiveLimitHandle, AdaptiveLimitLayer, Aimd, AimdConfig, VegasConfig,
        error::LimitExceeded,
    };
    admission_shape!(
        AdaptiveLimitLayer<Aimd>,
        AimdConfig::default(),
        AdaptiveLimitHandle
    );
    // Every algorithm's config is a config the layer takes.
    let _ = one_config_error(AdaptiveLimitLayer::new(VegasConfig::default()));
    let _: Option<LimitExceeded> = None;
}

#[tokio::test]
async fn deadline() {
    use floodwall::deadline::future::{ClientFuture as _, ServerFuture as _};
    use floodwall::deadline::{
        DeadlineHandle, PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig,
        ServerDeadlineLayer, error::DeadlineExceeded,
    };
    admission_shape!(
        ServerDeadlineLayer,
        ServerDeadlineConfig::default(),
        DeadlineHandle
    );
    admission_shape!(
        PropagateDeadlineLayer,
        PropagateDeadlineConfig::default(),
        DeadlineHandle
    );
    let _: Option<DeadlineExceeded> = None;
}

#[tokio::test]
async fn priority() {
    use floodwall::priority::future::{ClientFuture as _, ResponseFuture as _};
    use floodwall::priority::{
        AdmissionConfig, AdmissionHandle, AdmissionLayer, AssignConfig, AssignPriorityLayer,
        PriorityClientConfig, PriorityClientHandle, PriorityClientLayer, error::Prioritized,
    };
    admission_shape!(AdmissionLayer, AdmissionConfig::default(), AdmissionHandle);
    admission_shape!(
        PriorityClientLayer,
        PriorityClientConfig::default(),
        PriorityClientHandle
    );
    // A mapping layer: it assigns, holds no state to name.
    let assign = one_config_error(AssignPriorityLayer::new(AssignConfig::default()));
    spawn_oneshot!(assign).expect("assigned and answered");
    let _: Option<Prioritized> = None;
}

#[tokio::test]
async fn http() {
    use floodwall::http::HttpRejectionLayer;
    spawn_oneshot!(HttpRejectionLayer::new()).expect("answered");
}

#[tokio::test]
async fn grpc() {
    use floodwall::grpc::{GrpcRejectionLayer, StatusErrorLayer};
    spawn_oneshot!(GrpcRejectionLayer::default()).expect("answered");
    spawn_oneshot!(StatusErrorLayer::new()).expect("answered");
}

#[tokio::test]
async fn redis() {
    use floodwall::redis::future::ResponseFuture as _;
    use floodwall::redis::{
        Fallback, Quota, RedisConnection, RedisLimiter, RedisRateLimitLayer, error::RateLimited,
    };
    let _: Option<RateLimited> = None;
    // Built before it connects: nothing listens on port 9 of loopback, so
    // the call is decided by the local fallback (open here).
    let client = RedisConnection::open("redis://127.0.0.1:9/").unwrap();
    let limiter: RedisLimiter<String> = one_config_error(
        RedisLimiter::builder(client, Quota::per_second(10).unwrap())
            .name("shape")
            .fallback(Fallback::Open)
            .build(),
    );
    let limiter = shareable(&limiter);
    let layer = RedisRateLimitLayer::new(limiter, |_: &Req| Some("k".to_owned()));
    spawn_oneshot!(layer).expect("admitted by the open fallback");
}

#[tokio::test]
async fn tail() {
    use floodwall::tail::future::ResponseFuture as _;
    use floodwall::tail::{CoalesceConfig, CoalesceHandle, CoalesceLayer, error::CoalescedError};
    let _: Option<CoalescedError> = None;
    let key = |req: &Req| Some(req.body().clone());
    let _: CoalesceLayer<_, String, Res> =
        one_config_error(CoalesceLayer::new(CoalesceConfig::default(), key));
    let layer: CoalesceLayer<_, String, Res> = one_config_error(
        CoalesceLayer::builder(CoalesceConfig::default(), key)
            .name("shape")
            .build(),
    );
    let handle: CoalesceHandle = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    spawn_oneshot!(layer).expect("answered");

    use floodwall::tail::future::{FallbackResponseFuture as _, HedgeFuture as _};
    use floodwall::tail::{
        FallbackConfig, FallbackHandle, FallbackLayer, HedgeConfig, HedgeHandle, HedgeLayer,
        error::FallbackFailed, fallback,
    };
    let _: Option<FallbackFailed> = None;
    admission_shape!(HedgeLayer, HedgeConfig::default(), HedgeHandle);
    let answer = || fallback::value(Response::new(String::new()));
    let _ = one_config_error(FallbackLayer::new(FallbackConfig::default(), answer()));
    let layer = one_config_error(
        FallbackLayer::builder(FallbackConfig::default(), answer())
            .name("shape")
            .build(),
    );
    let handle: FallbackHandle = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    spawn_oneshot!(layer).expect("answered");
}

#[tokio::test]
async fn hotkey() {
    use floodwall::hotkey::future::{AggregateFuture as _, HotCacheFuture as _, HotKeyFuture as _};
    use floodwall::hotkey::{
        AggregateConfig, AggregateHandle, AggregateLayer, HotCacheConfig, HotCacheHandle,
        HotCacheLayer, HotKeyConfig, HotKeyHandle, HotKeyLayer, Update,
        error::{AggregateError, AggregateFull},
    };
    let _: Option<(AggregateError, AggregateFull)> = None;
    let key = |req: &Req| req.extensions().get::<SocketAddr>().copied();
    let _: HotKeyLayer<SocketAddr, _> =
        one_config_error(HotKeyLayer::new(HotKeyConfig::default(), key));
    let layer = one_config_error(
        HotKeyLayer::builder(HotKeyConfig::default(), key)
            .name("shape")
            .build(),
    );
    let handle: HotKeyHandle<SocketAddr> = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    spawn_oneshot!(layer).expect("admitted");

    let _: HotCacheLayer<SocketAddr, Res> =
        one_config_error(HotCacheLayer::new(HotCacheConfig::default()));
    let layer: HotCacheLayer<SocketAddr, Res> = one_config_error(
        HotCacheLayer::builder(HotCacheConfig::default())
            .name("shape")
            .build(),
    );
    let handle: HotCacheHandle = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    spawn_oneshot!(layer).expect("answered");

    // Aggregation takes `Update`s, not HTTP requests.
    let _: AggregateLayer<u32, i64, ()> =
        one_config_error(AggregateLayer::new(AggregateConfig::default()));
    let layer: AggregateLayer<u32, i64, ()> = one_config_error(
        AggregateLayer::builder(AggregateConfig::default())
            .name("shape")
            .build(),
    );
    let handle: AggregateHandle = shareable(&layer.handle());
    assert_eq!(handle.name(), "shape");
    let svc = layer.layer(service_fn(|_: Update<u32, i64>| async {
        Ok::<_, Infallible>(())
    }));
    let joined = tokio::spawn(svc.oneshot(Update { key: 1, delta: 1 })).await;
    let answer: Result<(), BoxError> = joined.expect("the task ran");
    answer.expect("written");
}

#[test]
fn every_facade_module_has_a_shape_case() {
    let modules = common::facade_modules();
    for m in modules {
        assert!(
            NOT_LAYERS.contains(&m) || CASES.contains(&m),
            "the facade exports `{m}` but tests/tests/shape.rs has no case for it"
        );
    }
}
