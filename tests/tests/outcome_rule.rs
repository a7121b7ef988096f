//! The one outcome rule across layers (virtual time): what a finished,
//! refused or abandoned call says about the dependency, read the same way
//! by the breaker, the adaptive throttle and the adaptive limit.

use std::time::Duration;

use floodwall::breaker::{BreakerConfig, BreakerLayer, State, WindowKind};
use floodwall::core::{BoxError, Deadline};
use floodwall::deadline::{PropagateDeadlineConfig, PropagateDeadlineLayer, Wire};
use floodwall::throttle::{ThrottleConfig, ThrottleLayer};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// A breaker that opens on four failures out of four.
fn breaker() -> BreakerLayer {
    BreakerLayer::new(BreakerConfig {
        window: WindowKind::Count(4),
        minimum_calls: 4,
        ..BreakerConfig::default()
    })
    .unwrap()
}

/// A dependency that answers after `latency`.
fn dependency(
    latency: Duration,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |_: http::Request<()>| async move {
        tokio::time::sleep(latency).await;
        Ok::<_, BoxError>(http::Response::new(()))
    })
}

/// The room call's client stack: deadline propagation outermost (a 400 ms
/// budget), then the breaker.
fn client(
    breaker: &BreakerLayer,
    latency: Duration,
) -> impl tower::Service<http::Request<()>, Response = http::Response<()>, Error = BoxError> + Clone
{
    ServiceBuilder::new()
        .layer(propagate_400ms())
        .layer(breaker.clone())
        .service(dependency(latency))
}

#[tokio::test(start_paused = true)]
async fn fifty_calls_cut_short_by_their_callers_deadline_leave_the_breaker_closed() {
    let breaker = breaker();
    let handle = breaker.handle();
    // A healthy dependency that takes 30 ms; each caller allows 5 ms.
    let svc = client(&breaker, Duration::from_millis(30));
    for _ in 0..50 {
        let caller = Deadline::after(Instant::now(), Duration::from_millis(5));
        let call = floodwall::deadline::scope(caller, svc.clone().oneshot(http::Request::new(())));
        let err = call.await.unwrap_err();
        assert!(err.to_string().contains("deadline"), "{err}");
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.counts().calls, 0, "nothing was recorded");
}

#[tokio::test(start_paused = true)]
async fn a_dependency_that_hangs_for_the_full_budget_opens_it() {
    let breaker = breaker();
    let handle = breaker.handle();
    let svc = client(&breaker, Duration::from_secs(60));
    for _ in 0..4 {
        // No caller deadline: the call has its whole 400 ms.
        svc.clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
    // And with a caller deadline longer than the budget, the same.
    let breaker = self::breaker();
    let handle = breaker.handle();
    let svc = client(&breaker, Duration::from_secs(60));
    for _ in 0..4 {
        let caller = Deadline::after(Instant::now(), Duration::from_secs(5));
        floodwall::deadline::scope(caller, svc.clone().oneshot(http::Request::new(())))
            .await
            .unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_outside_the_deadline_layer_reads_its_timeout_the_same_way() {
    let stack = |breaker: &BreakerLayer, latency| {
        ServiceBuilder::new()
            .layer(breaker.clone())
            .layer(propagate_400ms())
            .service(dependency(latency))
    };
    let breaker = breaker();
    let handle = breaker.handle();
    let svc = stack(&breaker, Duration::from_millis(30));
    for _ in 0..50 {
        let caller = Deadline::after(Instant::now(), Duration::from_millis(5));
        floodwall::deadline::scope(caller, svc.clone().oneshot(http::Request::new(())))
            .await
            .unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);
    let svc = stack(&breaker, Duration::from_secs(60));
    for _ in 0..4 {
        svc.clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn abandoned_and_caller_limited_calls_do_not_raise_the_throttle() {
    let throttle = ThrottleLayer::new(ThrottleConfig::default()).unwrap();
    let handle = throttle.handle();
    let svc = ServiceBuilder::new()
        .layer(propagate_400ms())
        .layer(throttle.clone())
        .service(dependency(Duration::from_millis(30)));
    for _ in 0..20 {
        let caller = Deadline::after(Instant::now(), Duration::from_millis(5));
        floodwall::deadline::scope(caller, svc.clone().oneshot(http::Request::new(())))
            .await
            .unwrap_err();
    }
    // Abandoned by the caller before the answer.
    for _ in 0..20 {
        let call = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
        tokio::time::advance(Duration::from_millis(1)).await;
        call.abort();
        let _ = call.await;
    }
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (0, 0), "nothing counted");
    // A full-budget timeout is a request the backend did not accept.
    let slow = throttle.layer(dependency(Duration::from_secs(60)));
    let timed = propagate_400ms().layer(slow);
    timed.oneshot(http::Request::new(())).await.unwrap_err();
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (1, 0));
}

/// Deadline propagation for a call configured to get 400 ms.
fn propagate_400ms() -> PropagateDeadlineLayer {
    PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        wire: Wire::Grpc,
        timeout: Some(Duration::from_millis(400)),
        ..PropagateDeadlineConfig::default()
    })
    .unwrap()
}
