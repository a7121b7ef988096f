//! The retry budget with gRPC A6's numbers, and the retry layer: backoff,
//! pushback, attempts, and don't-retry propagation across layers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected, Rejection};
use floodwall_throttle::{
    Backoff, DoNotRetry, NO_RETRY_HEADER, RetryBudget, RetryConfig, RetryHttp, RetryLayer,
};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

#[test]
fn budget_follows_a6_token_arithmetic() {
    // A6's example policy: maxTokens 10, tokenRatio 0.1.
    let b = RetryBudget::new(10.0, 0.1).unwrap();
    assert_eq!(b.tokens(), 10.0, "starts full");
    b.on_success();
    assert_eq!(b.tokens(), 10.0, "never above the max");
    let mut seen = Vec::new();
    for _ in 0..6 {
        b.on_failure();
        seen.push((b.tokens(), b.can_retry()));
    }
    assert_eq!(
        seen,
        [
            (9.0, true),
            (8.0, true),
            (7.0, true),
            (6.0, true),
            (5.0, false),
            (4.0, false)
        ],
        "retries only while tokens > max/2"
    );
    for _ in 0..10 {
        b.on_success();
    }
    assert_eq!(b.tokens(), 5.0, "ten successes at 0.1 give one token back");
    assert!(!b.can_retry(), "5.0 is not above 5");
    b.on_success();
    assert_eq!(b.tokens(), 5.1);
    assert!(b.can_retry());
    for _ in 0..20 {
        b.on_failure();
    }
    assert_eq!(b.tokens(), 0.0, "never below zero");
    // Three decimal places, exactly.
    let fine = RetryBudget::new(3.0, 0.001).unwrap();
    fine.on_failure();
    fine.on_success();
    assert_eq!(fine.tokens(), 2.001);
    assert!(RetryBudget::new(0.0, 0.1).is_err());
    assert!(RetryBudget::new(1001.0, 0.1).is_err());
    assert!(RetryBudget::new(10.0, 0.0).is_err());
}

#[derive(Debug)]
struct Busy(Option<Duration>, bool);
impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busy")
    }
}
impl std::error::Error for Busy {}
impl Rejection for Busy {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
    fn retry_after(&self) -> Option<Duration> {
        self.0
    }
    fn is_permanent(&self) -> bool {
        self.1
    }
}

/// A backend that fails with `fail(attempt)` and records call times.
fn backend(
    fail: impl Fn(u32) -> Option<BoxError> + Send + Sync + Clone + 'static,
) -> (
    impl tower::Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone,
    Arc<calls_log::Log>,
) {
    let log = Arc::new(calls_log::Log::default());
    let l = log.clone();
    let svc = service_fn(move |n: u32| {
        let attempt = l.push();
        let result = match fail(attempt) {
            Some(e) => Err(e),
            None => Ok(n),
        };
        async move { result }
    });
    (svc, log)
}

mod calls_log {
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Call instants, in order.
    #[derive(Default)]
    pub(crate) struct Log(Mutex<Vec<Instant>>);

    impl Log {
        /// Records a call; returns its 1-based number.
        pub(crate) fn push(&self) -> u32 {
            let mut v = self.0.lock().unwrap();
            v.push(Instant::now());
            v.len() as u32
        }

        pub(crate) fn times(&self) -> Vec<Instant> {
            self.0.lock().unwrap().clone()
        }
    }
}

fn retry(budget: &Arc<RetryBudget>) -> RetryLayer {
    RetryLayer::builder(RetryConfig {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        },
        ..RetryConfig::default()
    })
    .budget(budget.clone())
    .rng(|| 0.5) // deterministic jitter: half the bound
    .build()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff_and_full_jitter() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let (svc, log) = backend(|attempt| (attempt < 3).then(|| "reset".into()));
    let t0 = Instant::now();
    let svc = retry(&budget).layer(svc);
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
    let gaps: Vec<_> = log.times().iter().map(|t| *t - t0).collect();
    let ms = Duration::from_millis;
    // Bounds 100 ms then 200 ms, draw 0.5: waits of 50 ms and 100 ms.
    assert_eq!(gaps, [ms(0), ms(50), ms(150)]);
    assert!(
        (budget.tokens() - 8.1).abs() < 1e-9,
        "two failures, one success"
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_and_marks_the_error() {
    let budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    let (svc, log) = backend(|_| Some("reset".into()));
    let err = retry(&budget).layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(log.times().len(), 3, "three attempts in all");
    assert!(err.is::<DoNotRetry>());
    assert_eq!(err.to_string(), "reset (not retried further)");
}

#[tokio::test(start_paused = true)]
async fn server_pushback_sets_the_delay_and_permanent_rejections_are_final() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let (svc, log) = backend(|attempt| {
        (attempt == 1).then(|| Rejected::boxed(Busy(Some(Duration::from_millis(700)), false)))
    });
    let t0 = Instant::now();
    retry(&budget).layer(svc).oneshot(1).await.unwrap();
    let times = log.times();
    assert_eq!(
        times[1] - t0,
        Duration::from_millis(700),
        "pushback, not backoff"
    );

    let (svc, log) = backend(|_| Some(Rejected::boxed(Busy(None, true))));
    let err = retry(&budget).layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(log.times().len(), 1, "never retried");
    assert!(
        Rejected::find(&*err).unwrap().is_permanent(),
        "the rejection is still there"
    );
}

/// A refusal by a floodwall layer below without a retry-after (a local
/// throttle, an open breaker, a shedding queue) is not retried: a retry
/// would only add the load it refused, and refusals do not spend the budget.
#[tokio::test(start_paused = true)]
async fn refusals_below_without_a_retry_after_are_not_retried() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    let (svc, log) = backend(|_| Some(Rejected::boxed(Busy(None, false))));
    let err = retry(&budget).layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(log.times().len(), 1);
    assert_eq!(budget.tokens(), 10.0, "not counted");
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectKind::Overloaded
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries() {
    let budget = Arc::new(RetryBudget::new(4.0, 0.1).unwrap());
    let (svc, log) = backend(|_| Some("down".into()));
    let svc = retry(&budget).layer(svc);
    // Request 1: 4 → 3 (retry allowed: 3 > 2) → 2 (not above 2): 2 attempts.
    svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(log.times().len(), 2);
    // Request 2: 2 → 1, no retry.
    svc.clone().oneshot(2).await.unwrap_err();
    assert_eq!(log.times().len(), 3);
    assert_eq!(budget.tokens(), 1.0);
}

/// The "overloaded, don't retry" rule across layers: a retry layer that
/// gives up marks the failure, and a retry layer above never retries it.
#[tokio::test(start_paused = true)]
async fn only_the_layer_directly_above_a_failing_service_retries() {
    let inner_budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    let outer_budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    // Refused below with a retry-after: the inner layer retries after it.
    let wait = Some(Duration::from_millis(1));
    let (svc, log) = backend(move |_| Some(Rejected::boxed(Busy(wait, false))));
    let stack = retry(&outer_budget).layer(retry(&inner_budget).layer(svc));
    let err = stack.oneshot(1).await.unwrap_err();
    assert_eq!(log.times().len(), 3, "3 attempts, not 3 × 3");
    assert_eq!(
        inner_budget.tokens(),
        100.0,
        "three refusals by a floodwall layer below: retried, but never counted \
         as the dependency's failures (the outcome rule)"
    );
    assert_eq!(
        outer_budget.tokens(),
        99.0,
        "the outer layer saw one, and sent nothing more"
    );
    assert!(err.is::<DoNotRetry>());
    assert_eq!(
        err.to_string(),
        "request rejected (overloaded) (not retried further)",
        "marked once, not once per layer"
    );
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectKind::Overloaded
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_pushback_and_long_pushback_ends_retries() {
    let budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    // Attempt 1: plain failure (backoff step 1: 50 ms); attempt 2: pushback
    // 300 ms; attempt 3: plain failure again, backoff back at step 1: 50 ms.
    let (svc, log) = backend(|attempt| match attempt {
        2 => Some(Rejected::boxed(Busy(
            Some(Duration::from_millis(300)),
            false,
        ))),
        1 | 3 => Some("reset".into()),
        _ => None,
    });
    let t0 = Instant::now();
    let layer = RetryLayer::builder(RetryConfig {
        max_attempts: 4,
        ..RetryConfig::default()
    })
    .budget(budget.clone())
    .rng(|| 0.5)
    .build()
    .unwrap();
    assert_eq!(layer.layer(svc).oneshot(1).await.unwrap(), 1);
    let gaps: Vec<_> = log.times().iter().map(|t| *t - t0).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, [ms(0), ms(50), ms(350), ms(400)]);

    let (svc, log) = backend(|_| Some(Rejected::boxed(Busy(Some(Duration::from_secs(60)), false))));
    let err = retry(&budget).layer(svc).oneshot(1).await.unwrap_err();
    assert_eq!(
        log.times().len(),
        1,
        "a minute of pushback is beyond the 30 s default"
    );
    assert!(err.is::<DoNotRetry>());
}

/// A service that answers every call with a failure and whose readiness
/// fails after the first call.
#[derive(Clone)]
struct BreaksAfterOne(Arc<AtomicU32>);

impl tower::Service<u32> for BreaksAfterOne {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.0.load(Ordering::Relaxed) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Ready(Err("connection pool closed".into()))
        }
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Err("reset".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_before_a_retry_ends_it_marked() {
    let budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    let calls = Arc::new(AtomicU32::new(0));
    let err = retry(&budget)
        .layer(BreaksAfterOne(calls.clone()))
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert!(err.is::<DoNotRetry>());
    assert_eq!(
        err.to_string(),
        "connection pool closed (not retried further)"
    );
}

#[tokio::test(start_paused = true)]
async fn http_responses_overload_pushback_and_the_no_retry_header() {
    let budget = Arc::new(RetryBudget::new(100.0, 0.1).unwrap());
    let calls = Arc::new(AtomicU32::new(0));
    let make = |status: u16, headers: &'static [(&'static str, &'static str)]| {
        let calls = calls.clone();
        service_fn(move |_: http::Request<()>| {
            calls.fetch_add(1, Ordering::Relaxed);
            let mut res = http::Response::builder().status(status);
            for (k, v) in headers {
                res = res.header(*k, *v);
            }
            async move { Ok::<_, BoxError>(res.body(()).unwrap()) }
        })
    };
    let layer = || {
        RetryLayer::builder(RetryConfig::default())
            .budget(budget.clone())
            .policy(RetryHttp)
            .rng(|| 0.0)
            .build()
            .unwrap()
    };
    // 503 twice up the stack: the inner layer tries 3 times, marks, the
    // outer one does not retry.
    let stack = layer().layer(layer().layer(make(503, &[])));
    let res = stack.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()[NO_RETRY_HEADER], "1");
    assert_eq!(calls.swap(0, Ordering::Relaxed), 3);

    // gRPC pushback of -1: never retried.
    let svc = layer().layer(make(
        200,
        &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")],
    ));
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(calls.swap(0, Ordering::Relaxed), 1);

    // Retry-After: 2 seconds, exactly.
    let t0 = Instant::now();
    let svc = layer().layer(make(429, &[("retry-after", "2")]));
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(calls.swap(0, Ordering::Relaxed), 3);
    assert_eq!(Instant::now() - t0, Duration::from_secs(4));

    // A 404 and a gRPC NOT_FOUND are successes; a 500 is a failure not retried.
    for (status, headers) in [
        (404u16, &[][..]),
        (200, &[("grpc-status", "5")][..]),
        (500, &[][..]),
    ] {
        let svc = layer().layer(make(status, headers));
        svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1, "status {status}");
    }
}

#[test]
fn an_invalid_retry_config_names_its_field() {
    let err = RetryLayer::new(RetryConfig {
        max_attempts: 0,
        ..RetryConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "max_attempts");
    let err = RetryLayer::new(RetryConfig {
        backoff: Backoff {
            multiplier: f64::NAN,
            ..Backoff::default()
        },
        ..RetryConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "backoff.multiplier");
    let err = RetryLayer::new(RetryConfig {
        budget: floodwall_throttle::BudgetConfig {
            max_tokens: 0.0,
            token_ratio: 0.1,
        },
        ..RetryConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "max_tokens");
    assert!(err.to_string().contains("got 0"), "{err}");
}
