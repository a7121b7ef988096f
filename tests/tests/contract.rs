//! The layer contract: one suite, run against every layer the `floodwall`
//! facade exports (a facade module missing from [`CASES`] fails
//! `every_facade_layer_is_in_the_suite`).
//!
//! For each layer, over a stateful backend that errors when it is called
//! without being made ready first:
//! - readiness is forwarded: not ready while the backend is not, ready when
//!   it is, and `call` never reaches the backend without its readiness;
//! - the backend's own errors pass through untouched (found in the error's
//!   chain, never dressed as a floodwall rejection);
//! - clones of one service, and services built from one layer value, share
//!   one state: what one spends, the others cannot;
//! - every rejection maps to the right HTTP status and gRPC code through
//!   floodwall-http and floodwall-grpc;
//! - response futures dropped at every poll leave no backend work alive,
//!   and a layer that holds a permit while a request runs gives it back.
//!
//! The body-end and readiness modes of the layers on the shared adapter
//! (breaker, adaptive limit, throttle) are checked at the end.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodwall::breaker::{BreakerConfig, BreakerGroupConfig, BreakerGroupLayer, BreakerLayer};
use floodwall::bulkhead::{BulkheadConfig, BulkheadLayer};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::concurrency::{AdaptiveLimitLayer, AimdConfig};
use floodwall::core::{
    Arrival, BoxError, Deadline, HttpClassifier, Priority, RejectKind, Rejected,
};
use floodwall::deadline::{
    EmaTimeoutConfig, EmaTimeoutLayer, PropagateDeadlineConfig, PropagateDeadlineLayer,
    ServerDeadlineConfig, ServerDeadlineLayer,
};
use floodwall::grpc::GrpcRejectionLayer;
use floodwall::hotkey::{HotCacheConfig, HotCacheLayer, HotKeyConfig, HotKeyLayer};
use floodwall::http::HttpRejectionLayer;
use floodwall::leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
use floodwall::priority::{
    AdmissionConfig, AdmissionLayer, AssignConfig, AssignPriorityLayer, PriorityClientConfig,
    PriorityClientLayer,
};
use floodwall::ratelimit::Quota as HotQuota;
use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode};
use floodwall::tail::{
    CoalesceConfig, CoalesceLayer, FallbackConfig, FallbackLayer, HedgeConfig, HedgeDelay,
    HedgeLayer, WhenFull, fallback,
};
use floodwall::throttle::{RetryConfig, RetryLayer, SplitMix, ThrottleConfig, ThrottleLayer};
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::util::{BoxCloneService, BoxCloneServiceLayer};
use tower::{Layer, Service, ServiceExt};

type Req = Request<()>;
type Res = Response<()>;
type Svc = BoxCloneService<Req, Res, BoxError>;
type BoxLayer = BoxCloneServiceLayer<Backend, Req, Res, BoxError>;

// ---------------------------------------------------------------- backend

/// The backend's own error: must come back untouched.
#[derive(Debug)]
struct InnerError;

impl std::fmt::Display for InnerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the backend's own error")
    }
}

impl std::error::Error for InnerError {}

/// Called without being made ready: the contract was broken.
#[derive(Debug)]
struct NotReady;

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend called without poll_ready")
    }
}

impl std::error::Error for NotReady {}

/// A stateful backend: ready only while its gate is open, each clone must
/// be made ready before each call; answers `x-fail` with [`InnerError`],
/// `x-status: N` with that status, `x-level` with an admission level
/// header, and takes `x-delay-ms` of virtual time.
#[derive(Clone)]
struct Backend {
    gate: Arc<AtomicBool>,
    waiting: Arc<parking_lot::Mutex<Vec<Waker>>>,
    live: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    ready: bool,
}

impl Backend {
    fn new() -> Self {
        Self {
            gate: Arc::new(AtomicBool::new(true)),
            waiting: Arc::default(),
            live: Arc::default(),
            calls: Arc::default(),
            ready: false,
        }
    }

    fn set_ready(&self, open: bool) {
        self.gate.store(open, Ordering::SeqCst);
        if open {
            for w in self.waiting.lock().drain(..) {
                w.wake();
            }
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Req> for Backend {
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.gate.load(Ordering::SeqCst) {
            self.ready = true;
            Poll::Ready(Ok(()))
        } else {
            self.waiting.lock().push(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if !std::mem::take(&mut self.ready) {
            return Box::pin(async { Err(BoxError::from(NotReady)) });
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.live.clone());
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let delay = header("x-delay-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        let fail = header("x-fail").is_some();
        let status = header("x-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200u16);
        let level = header("x-level");
        Box::pin(async move {
            let _alive = alive;
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if fail {
                return Err(BoxError::from(InnerError));
            }
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            res.headers_mut().insert("x-backend", "1".parse().unwrap());
            if let Some(level) = level {
                res.headers_mut().insert(
                    floodwall::core::wire::ADMISSION_LEVEL_HEADER,
                    level.parse().unwrap(),
                );
            }
            Ok(res)
        })
    }
}

// ------------------------------------------------------------------ cases

/// How a layer refuses: the requests that make it refuse (earlier ones may
/// stay in flight), and the kind of the refusal.
struct Refusal {
    layer: fn() -> BoxLayer,
    request: fn(usize) -> Req,
    kind: RejectKind,
    /// Whether the refusal is only for as long as an earlier request is
    /// still in flight (a permit held while it runs).
    while_in_flight: bool,
}

struct Case {
    /// The facade module the layer comes from.
    module: &'static str,
    name: &'static str,
    /// A layer that admits plain requests.
    open: fn() -> BoxLayer,
    refusal: Option<Refusal>,
}

fn boxed<L>(layer: L) -> BoxLayer
where
    L: Layer<Backend> + Send + Sync + 'static,
    L::Service: Service<Req, Response = Res, Error = BoxError> + Clone + Send + 'static,
    <L::Service as Service<Req>>::Future: Send + 'static,
{
    BoxCloneServiceLayer::new(layer)
}

fn plain(_: usize) -> Req {
    Request::new(())
}

fn with(headers: &[(&'static str, &str)]) -> Req {
    let mut b = Request::builder();
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// The coalescing key: the request's headers rendered (identical requests
/// coalesce; an `x-key` header tells them apart).
fn by_key(req: &Req) -> Option<String> {
    Some(format!("{:?}", req.headers()))
}

fn held(_: usize) -> Req {
    with(&[("x-delay-ms", "60000")])
}

fn once_per_hour() -> Quota {
    Quota::per_hour(1).unwrap()
}

fn open_quota() -> Quota {
    Quota::per_second(1_000_000)
        .unwrap()
        .with_burst(1_000)
        .unwrap()
}

const CASES: &[Case] = &[
    Case {
        module: "token_bucket",
        name: "token bucket",
        open: || boxed(TokenBucketLayer::new(open_quota()).unwrap()),
        refusal: Some(Refusal {
            layer: || boxed(TokenBucketLayer::new(once_per_hour()).unwrap()),
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "token_bucket",
        name: "keyed token bucket",
        open: || {
            boxed(
                TokenBucketLayer::builder(open_quota())
                    .capacity(16)
                    .build_keyed(|_: &Req| Some(1u8))
                    .unwrap(),
            )
        },
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    TokenBucketLayer::builder(once_per_hour())
                        .capacity(16)
                        .build_keyed(|_: &Req| Some(1u8))
                        .unwrap(),
                )
            },
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "leaky_bucket",
        name: "leaky bucket meter",
        open: || boxed(LeakyBucketLayer::builder(open_quota()).build().unwrap()),
        refusal: Some(Refusal {
            layer: || boxed(LeakyBucketLayer::builder(once_per_hour()).build().unwrap()),
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "leaky_bucket",
        name: "leaky bucket shaper",
        open: || {
            boxed(
                LeakyBucketLayer::builder(LeakyBucketConfig::shaper(open_quota(), 4))
                    .build()
                    .unwrap(),
            )
        },
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    LeakyBucketLayer::builder(LeakyBucketConfig::shaper(once_per_hour(), 0))
                        .build()
                        .unwrap(),
                )
            },
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "sliding_window",
        name: "sliding window counter",
        open: || {
            boxed(
                SlidingWindowLayer::builder(Window::per_second(10_000).unwrap())
                    .build()
                    .unwrap(),
            )
        },
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    SlidingWindowLayer::builder(
                        Window::new(1, Duration::from_secs(3_600)).unwrap(),
                    )
                    .build()
                    .unwrap(),
                )
            },
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "sliding_window",
        name: "sliding log",
        open: || {
            boxed(
                SlidingWindowLayer::builder(
                    SlidingWindowConfig::from(Window::per_second(10_000).unwrap())
                        .mode(WindowMode::Log),
                )
                .build()
                .unwrap(),
            )
        },
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    SlidingWindowLayer::builder(
                        SlidingWindowConfig::from(
                            Window::new(1, Duration::from_secs(3_600)).unwrap(),
                        )
                        .mode(WindowMode::Log),
                    )
                    .build()
                    .unwrap(),
                )
            },
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "breaker",
        name: "circuit breaker",
        open: || boxed(BreakerLayer::new(BreakerConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || boxed(BreakerLayer::new(BreakerConfig::consecutive(1)).unwrap()),
            request: |_| with(&[("x-fail", "1")]),
            kind: RejectKind::CircuitOpen,
            while_in_flight: false,
        }),
    },
    Case {
        module: "breaker",
        name: "breakers per key",
        open: || boxed(BreakerGroupLayer::new(BreakerGroupConfig::default(), by_key).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    BreakerGroupLayer::new(
                        BreakerGroupConfig {
                            breaker: BreakerConfig::consecutive(1),
                            ..BreakerGroupConfig::default()
                        },
                        |_: &Req| Some(()),
                    )
                    .unwrap(),
                )
            },
            request: |_| with(&[("x-fail", "1")]),
            kind: RejectKind::CircuitOpen,
            while_in_flight: false,
        }),
    },
    Case {
        module: "hotkey",
        name: "hot-key marking and per-hot-key quota",
        open: || boxed(HotKeyLayer::new(HotKeyConfig::default(), by_key).unwrap()),
        refusal: Some(Refusal {
            // Hot from its second request, then limited to 1 an hour.
            layer: || {
                boxed(
                    HotKeyLayer::new(
                        HotKeyConfig {
                            min_count: 1,
                            hot_limit: Some(HotQuota::per_hour(1).unwrap()),
                            ..HotKeyConfig::default()
                        },
                        by_key,
                    )
                    .unwrap(),
                )
            },
            request: plain,
            kind: RejectKind::RateLimited,
            while_in_flight: false,
        }),
    },
    Case {
        module: "hotkey",
        name: "hot-key cache",
        open: || boxed(HotCacheLayer::<String, Res>::new(HotCacheConfig::default()).unwrap()),
        refusal: None,
    },
    Case {
        module: "tail",
        name: "hedging",
        open: || {
            boxed(
                HedgeLayer::new(HedgeConfig {
                    delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                    ..HedgeConfig::default()
                })
                .unwrap(),
            )
        },
        refusal: None,
    },
    Case {
        module: "tail",
        name: "fallback on rejections and timeouts",
        open: || {
            boxed(
                FallbackLayer::new(
                    FallbackConfig {
                        on_failure: false,
                        ..FallbackConfig::default()
                    },
                    fallback::value(Response::new(())),
                )
                .unwrap(),
            )
        },
        refusal: None,
    },
    Case {
        module: "throttle",
        name: "SRE adaptive throttle",
        open: || boxed(ThrottleLayer::new(ThrottleConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    ThrottleLayer::builder(ThrottleConfig::default())
                        .classify(HttpClassifier)
                        .rng(SplitMix::new(7))
                        .build()
                        .unwrap(),
                )
            },
            request: |_| with(&[("x-status", "503")]),
            kind: RejectKind::Throttled,
            while_in_flight: false,
        }),
    },
    Case {
        module: "throttle",
        name: "retry with its budget",
        open: || boxed(RetryLayer::builder(RetryConfig::default()).build().unwrap()),
        refusal: None,
    },
    Case {
        module: "codel",
        name: "CoDel admission queue",
        open: || boxed(CodelLayer::new(CodelConfig::with_workers(4)).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    CodelLayer::new(CodelConfig {
                        workers: 1,
                        max_queue: 0,
                        ..CodelConfig::default()
                    })
                    .unwrap(),
                )
            },
            request: held,
            kind: RejectKind::Overloaded,
            while_in_flight: true,
        }),
    },
    Case {
        module: "bulkhead",
        name: "bulkhead",
        open: || boxed(BulkheadLayer::new(BulkheadConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    BulkheadLayer::new(BulkheadConfig {
                        max_concurrent: 1,
                        ..BulkheadConfig::default()
                    })
                    .unwrap(),
                )
            },
            request: held,
            kind: RejectKind::Overloaded,
            while_in_flight: true,
        }),
    },
    Case {
        module: "concurrency",
        name: "adaptive concurrency limit",
        open: || boxed(AdaptiveLimitLayer::new(AimdConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(
                    AdaptiveLimitLayer::new(AimdConfig {
                        initial_limit: 1,
                        max_limit: 1,
                        ..AimdConfig::default()
                    })
                    .unwrap(),
                )
            },
            request: held,
            kind: RejectKind::Overloaded,
            while_in_flight: true,
        }),
    },
    Case {
        module: "deadline",
        name: "server deadline",
        open: || boxed(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || boxed(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap()),
            request: |_| with(&[("grpc-timeout", "0n")]),
            kind: RejectKind::DeadlineExceeded,
            while_in_flight: false,
        }),
    },
    Case {
        module: "deadline",
        name: "deadline propagation",
        open: || boxed(PropagateDeadlineLayer::new(PropagateDeadlineConfig::default()).unwrap()),
        refusal: Some(Refusal {
            layer: || {
                boxed(PropagateDeadlineLayer::new(PropagateDeadlineConfig::default()).unwrap())
            },
            request: |_| {
                let mut req = Request::new(());
                req.extensions_mut()
                    .insert(Deadline::after(Instant::now(), Duration::ZERO));
                req
            },
            kind: RejectKind::DeadlineExceeded,
            while_in_flight: false,
        }),
    },
    Case {
        module: "deadline",
        name: "EMA dynamic timeout",
        open: || boxed(EmaTimeoutLayer::new(EmaTimeoutConfig::default()).unwrap()),
        refusal: None,
    },
    Case {
        module: "tail",
        name: "request coalescing",
        open: || boxed(CoalesceLayer::new(CoalesceConfig::default(), by_key).unwrap()),
        refusal: Some(Refusal {
            // One key in flight at most, refused over it: a second key is
            // refused while the first one's call runs.
            layer: || {
                boxed(
                    CoalesceLayer::new(
                        CoalesceConfig {
                            max_keys: 1,
                            when_full: WhenFull::Refuse,
                            ..CoalesceConfig::default()
                        },
                        by_key,
                    )
                    .unwrap(),
                )
            },
            request: |i| with(&[("x-delay-ms", "60000"), ("x-key", &i.to_string())]),
            kind: RejectKind::Overloaded,
            while_in_flight: true,
        }),
    },
    Case {
        module: "priority",
        name: "DAGOR admission",
        open: || boxed(AdmissionLayer::new(AdmissionConfig::default()).unwrap()),
        refusal: Some(Refusal {
            // Windows of 10 requests, each queued 100 ms: overloaded, so the
            // level falls and the least important requests are dropped.
            layer: || {
                boxed(
                    AdmissionLayer::new(AdmissionConfig {
                        window_requests: 10,
                        ..AdmissionConfig::default()
                    })
                    .unwrap(),
                )
            },
            request: |_| {
                let mut req = Request::new(());
                let queued = Instant::now() - Duration::from_millis(100);
                req.extensions_mut().insert(Arrival::new(queued));
                req.extensions_mut()
                    .insert(Priority::new(100, 127).unwrap());
                req
            },
            kind: RejectKind::Prioritized,
            while_in_flight: false,
        }),
    },
    Case {
        module: "priority",
        name: "collaborative admission client",
        open: || boxed(PriorityClientLayer::new(PriorityClientConfig::default()).unwrap()),
        refusal: Some(Refusal {
            // The downstream advertises level 1-0: business 100 is dropped
            // locally from then on.
            layer: || boxed(PriorityClientLayer::new(PriorityClientConfig::default()).unwrap()),
            request: |_| {
                let mut req = with(&[("x-level", "1-0")]);
                req.extensions_mut()
                    .insert(Priority::new(100, 127).unwrap());
                req
            },
            kind: RejectKind::Prioritized,
            while_in_flight: false,
        }),
    },
    Case {
        module: "priority",
        name: "edge priority assignment",
        open: || boxed(AssignPriorityLayer::new(AssignConfig::default()).unwrap()),
        refusal: None,
    },
    Case {
        module: "http",
        name: "HTTP rejection responder",
        open: || boxed(HttpRejectionLayer::new()),
        refusal: None,
    },
    Case {
        module: "grpc",
        name: "gRPC rejection responder",
        open: || boxed(GrpcRejectionLayer::default()),
        refusal: None,
    },
];

/// Facade modules that are not layers themselves (vocabulary, adapters) or
/// that need a server (checked in `redis_limiter_keeps_the_contract`).
const NOT_LAYERS: &[&str] = &["core", "admit", "ratelimit", "redis"];

// ----------------------------------------------------------------- checks

fn noop() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn find<E: std::error::Error + 'static>(err: &BoxError) -> Option<&E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

async fn ready_call(svc: &mut Svc, req: Req) -> Result<Res, BoxError> {
    svc.ready().await?.call(req).await
}

/// Readiness is the backend's; calls reach it only after its readiness.
async fn readiness_is_forwarded(case: &Case) {
    let backend = Backend::new();
    backend.set_ready(false);
    let mut svc: Svc = (case.open)().layer(backend.clone());
    assert!(
        svc.poll_ready(&mut noop()).is_pending(),
        "{}: ready while its backend is not",
        case.name
    );
    backend.set_ready(true);
    let res = ready_call(&mut svc, Request::new(())).await;
    assert!(res.is_ok(), "{}: {:?}", case.name, res.err());
    // Clones made ready one after the other, each calling once.
    for _ in 0..3 {
        let mut clone = svc.clone();
        let res = ready_call(&mut clone, Request::new(())).await;
        assert!(res.is_ok(), "{}: {:?}", case.name, res.err());
    }
}

/// The backend's errors come back as they were.
async fn inner_errors_pass_through(case: &Case) {
    let mut svc: Svc = (case.open)().layer(Backend::new());
    let err = ready_call(&mut svc, with(&[("x-fail", "1")]))
        .await
        .expect_err(case.name);
    assert!(find::<InnerError>(&err).is_some(), "{}: {err}", case.name);
    assert!(
        Rejected::find(&*err).is_none(),
        "{}: dressed as a rejection: {err}",
        case.name
    );
}

/// Drives requests `0..` until one is refused; earlier ones that did not
/// finish at once are kept in flight. Returns the refusal and the held
/// futures.
async fn refuse(
    svc: &mut Svc,
    refusal: &Refusal,
    name: &str,
) -> (
    BoxError,
    Vec<Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>>,
) {
    let mut held = Vec::new();
    for i in 0..5_000 {
        let mut fut = Box::pin(svc.ready().await.unwrap().call((refusal.request)(i)));
        match fut.as_mut().poll(&mut noop()) {
            Poll::Ready(Err(e)) if Rejected::find(&*e).is_some() => return (e, held),
            Poll::Ready(_) => {}
            Poll::Pending => held.push(fut as Pin<Box<dyn Future<Output = _> + Send>>),
        }
        tokio::task::yield_now().await;
    }
    panic!("{name}: never refused");
}

/// What one service spends, its clones and sibling services cannot.
async fn state_is_shared(case: &Case, refusal: &Refusal) {
    let layer = (refusal.layer)();
    let backend = Backend::new();
    let mut first: Svc = layer.layer(backend.clone());
    let (err, held) = refuse(&mut first, refusal, case.name).await;
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        refusal.kind,
        "{}",
        case.name
    );
    // A clone, and a service built anew from the same layer value, are
    // refused too.
    let mut clone = first.clone();
    let mut sibling: Svc = layer.layer(backend.clone());
    // (Up to three tries: the throttle refuses with a probability; a fresh
    // state would refuse none of them.)
    for svc in [&mut clone, &mut sibling] {
        let mut refused = None;
        for _ in 0..3 {
            if let Err(err) = ready_call(svc, (refusal.request)(usize::MAX)).await
                && let Some(r) = Rejected::find(&*err)
            {
                refused = Some(r.kind());
                break;
            }
        }
        assert_eq!(
            refused,
            Some(refusal.kind),
            "{}: a clone did not share the state",
            case.name
        );
    }
    drop(held);
}

/// The refusal through floodwall-http and floodwall-grpc.
async fn rejections_map_to_responses(case: &Case, refusal: &Refusal) {
    let (status, code) = match refusal.kind {
        RejectKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "8"),
        RejectKind::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "4"),
        RejectKind::Overloaded
        | RejectKind::CircuitOpen
        | RejectKind::Throttled
        | RejectKind::Prioritized => (StatusCode::SERVICE_UNAVAILABLE, "14"),
        other => panic!("{}: unexpected kind {other:?}", case.name),
    };
    let mut http: Svc = BoxCloneService::new(
        HttpRejectionLayer::new().layer((refusal.layer)().layer(Backend::new())),
    );
    let mut grpc: Svc = BoxCloneService::new(
        GrpcRejectionLayer::default().layer((refusal.layer)().layer(Backend::new())),
    );
    for (svc, which) in [(&mut http, "http"), (&mut grpc, "grpc")] {
        let mut held = Vec::new();
        let mut answer = None;
        for i in 0..5_000 {
            let mut fut = Box::pin(svc.ready().await.unwrap().call((refusal.request)(i)));
            match fut.as_mut().poll(&mut noop()) {
                // Not the backend's own answer: the responder's.
                Poll::Ready(Ok(res)) if !res.headers().contains_key("x-backend") => {
                    answer = Some(res);
                    break;
                }
                Poll::Ready(_) => {}
                Poll::Pending => held.push(fut),
            }
            tokio::task::yield_now().await;
        }
        let res = answer.unwrap_or_else(|| panic!("{} ({which}): never refused", case.name));
        if which == "http" {
            assert_eq!(res.status(), status, "{}", case.name);
        } else {
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "{}: gRPC answers 200",
                case.name
            );
            assert_eq!(res.headers()["grpc-status"], code, "{}", case.name);
        }
    }
}

/// Futures dropped before, between and after polls leave nothing alive;
/// a permit held while a request runs comes back.
async fn cancellation_returns_everything(case: &Case) {
    let backend = Backend::new();
    let mut svc: Svc = (case.open)().layer(backend.clone());
    for polls in 0..4 {
        for _ in 0..8 {
            let mut fut = Box::pin(
                svc.ready()
                    .await
                    .unwrap()
                    .call(with(&[("x-delay-ms", "50")])),
            );
            for _ in 0..polls {
                let _ = fut.as_mut().poll(&mut noop());
                tokio::time::advance(Duration::from_millis(5)).await;
            }
            drop(fut);
        }
    }
    settle().await;
    assert_eq!(backend.live(), 0, "{}: backend work left alive", case.name);
    if let Some(refusal) = &case.refusal
        && refusal.while_in_flight
    {
        let backend = Backend::new();
        let mut svc: Svc = (refusal.layer)().layer(backend.clone());
        let (_, held) = refuse(&mut svc, refusal, case.name).await;
        drop(held);
        settle().await;
        assert_eq!(backend.live(), 0, "{}", case.name);
        let mut fut = Box::pin(svc.ready().await.unwrap().call(held_request()));
        assert!(
            fut.as_mut().poll(&mut noop()).is_pending(),
            "{}: the dropped requests' permits did not come back",
            case.name
        );
    }
}

/// Lets tasks a layer spawned see that nobody waits for them any more
/// (no time passes).
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn held_request() -> Req {
    held(0)
}

#[tokio::test(start_paused = true)]
async fn every_layer_keeps_the_contract() {
    // Room before the clock's start, for arrivals in the past.
    tokio::time::advance(Duration::from_secs(10)).await;
    for case in CASES {
        readiness_is_forwarded(case).await;
        inner_errors_pass_through(case).await;
        cancellation_returns_everything(case).await;
        if let Some(refusal) = &case.refusal {
            state_is_shared(case, refusal).await;
            rejections_map_to_responses(case, refusal).await;
        }
    }
}

#[test]
fn every_facade_layer_is_in_the_suite() {
    let modules = common::facade_modules();
    for m in modules {
        assert!(
            NOT_LAYERS.contains(&m) || CASES.iter().any(|c| c.module == m),
            "the facade exports `{m}` but the contract suite has no case for it"
        );
    }
}

// ------------------------------------------------ the adapter's two modes

/// A response body fed through a channel: a stream.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

#[tokio::test(start_paused = true)]
async fn until_body_end_holds_a_slot_for_the_whole_stream() {
    use http_body_util::BodyExt;

    let layer = AdaptiveLimitLayer::new(AimdConfig {
        initial_limit: 1,
        max_limit: 1,
        ..AimdConfig::default()
    })
    .unwrap();
    let handle = layer.handle();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let rx = Arc::new(parking_lot::Mutex::new(Some(rx)));
    let streaming = tower::service_fn(move |_: Req| {
        let rx = rx.lock().take();
        async move {
            let rx = rx.ok_or_else(|| BoxError::from("one stream only"))?;
            Ok::<_, BoxError>(Response::new(ChannelBody(rx)))
        }
    });
    let svc = layer.until_body_end().layer(streaming);
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        handle.in_flight(),
        1,
        "the head arrived; the stream still counts"
    );
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectKind::Overloaded
    );
    let mut body = res.into_body();
    tx.send(bytes::Bytes::from_static(b"a")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(handle.in_flight(), 0, "the stream ended");
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_for_a_slot_instead_of_refusing() {
    let layer = AdaptiveLimitLayer::new(AimdConfig {
        initial_limit: 1,
        max_limit: 1,
        ..AimdConfig::default()
    })
    .unwrap();
    let handle = layer.handle();
    let backend = Backend::new();
    let mut a = layer.backpressure().layer(backend.clone());
    let mut b = a.clone();
    std::future::poll_fn(|cx| a.poll_ready(cx)).await.unwrap();
    assert_eq!(handle.in_flight(), 1, "taken in poll_ready");
    assert!(
        b.poll_ready(&mut noop()).is_pending(),
        "b waits, not refused"
    );
    let running = a.call(with(&[("x-delay-ms", "10")]));
    let waiter = tokio::spawn(async move {
        std::future::poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
        b.call(Request::new(())).await.unwrap()
    });
    running.await.unwrap();
    waiter.await.unwrap();
    assert_eq!(handle.in_flight(), 0);
    // Made ready and dropped without a call: the slot comes back.
    let mut c = layer.backpressure().layer(backend.clone());
    std::future::poll_fn(|cx| c.poll_ready(cx)).await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(c);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_in_readiness_mode_is_not_ready_until_it_may_probe() {
    let layer = BreakerLayer::new(BreakerConfig {
        open_duration: Duration::from_secs(5),
        ..BreakerConfig::consecutive(1)
    })
    .unwrap();
    let backend = Backend::new();
    let mut svc = layer.backpressure().layer(backend.clone());
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    svc.call(with(&[("x-fail", "1")])).await.unwrap_err();
    let t0 = Instant::now();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(5),
        "ready when it may probe"
    );
    svc.call(Request::new(())).await.unwrap();
}

/// The Redis limiter keeps the same contract, against a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limiter_keeps_the_contract() {
    use floodwall::redis::{RedisConnection, RedisLimiter, RedisRateLimitLayer};
    use floodwall_redis::test_util::RedisServer;

    let server = RedisServer::start();
    let limiter: RedisLimiter<u8> = RedisLimiter::builder(
        RedisConnection::open(&server.url()).expect("a redis URL"),
        once_per_hour(),
    )
    .build()
    .unwrap();
    let layer = RedisRateLimitLayer::new(limiter, |_: &Req| Some(1u8));
    let backend = Backend::new();
    backend.set_ready(false);
    let mut svc: Svc = BoxCloneService::new(layer.layer(backend.clone()));
    assert!(
        svc.poll_ready(&mut noop()).is_pending(),
        "readiness forwarded"
    );
    backend.set_ready(true);
    let err = ready_call(&mut svc, with(&[("x-fail", "1")]))
        .await
        .unwrap_err();
    assert!(find::<InnerError>(&err).is_some(), "{err}");
    let mut clone = svc.clone();
    let err = ready_call(&mut clone, Request::new(())).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectKind::RateLimited
    );
    let mut http = HttpRejectionLayer::new().layer(clone);
    let res = http
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}
