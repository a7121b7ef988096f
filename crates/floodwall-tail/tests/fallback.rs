//! Fallback on each trigger (a floodwall rejection, a classified failure,
//! a timeout), from each source (a value, a function, a service), with the
//! fallback's own failure reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_core::testing::StubRejection;
use floodwall_core::{BoxError, HttpClassifier, RejectKind, Rejected};
use floodwall_deadline::{EmaTimeoutConfig, EmaTimeoutLayer};
use floodwall_tail::{Cause, FallbackConfig, FallbackFailed, FallbackLayer, Trigger, fallback};
use tower::{Layer, ServiceExt, service_fn};

type Req = http::Request<&'static str>;
type Res = http::Response<String>;

/// A backend that answers by the request's body: `ok`, `fail` (an error),
/// `500` (a failed response), `limited` (a floodwall rate-limit rejection),
/// `timeout` (a floodwall deadline rejection).
fn backend() -> impl tower::Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone {
    service_fn(|req: Req| async move {
        match *req.body() {
            "ok" => Ok(http::Response::new("fresh".to_owned())),
            "fail" => Err(BoxError::from("connection reset")),
            "500" => {
                let mut res = http::Response::new("boom".to_owned());
                *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                Ok(res)
            }
            "limited" => Err(Rejected::boxed(StubRejection::new(RejectKind::RateLimited))),
            "timeout" => Err(Rejected::boxed(floodwall_core::DeadlineExceeded::new(
                floodwall_core::Phase::InFlight,
                false,
            ))),
            other => panic!("unscripted {other}"),
        }
    })
}

fn req(body: &'static str) -> Req {
    http::Request::new(body)
}

fn cached() -> Res {
    http::Response::new("cached".to_owned())
}

#[tokio::test]
async fn a_value_answers_on_each_trigger_and_successes_pass_through() {
    let layer = FallbackLayer::builder(FallbackConfig::default(), fallback::value(cached()))
        .classify(HttpClassifier)
        .build()
        .unwrap();
    let svc = layer.layer(backend());
    assert_eq!(
        svc.clone().oneshot(req("ok")).await.unwrap().body(),
        "fresh"
    );
    for trigger in ["fail", "500", "limited", "timeout"] {
        let res = svc.clone().oneshot(req(trigger)).await.unwrap();
        assert_eq!(res.body(), "cached", "{trigger}");
    }
}

#[tokio::test]
async fn only_the_configured_triggers_fall_back() {
    let cases = [
        (
            FallbackConfig {
                on_rejected: false,
                ..FallbackConfig::default()
            },
            "limited",
        ),
        (
            FallbackConfig {
                on_failure: false,
                ..FallbackConfig::default()
            },
            "fail",
        ),
        (
            FallbackConfig {
                on_timeout: false,
                ..FallbackConfig::default()
            },
            "timeout",
        ),
    ];
    for (config, off) in cases {
        let svc = FallbackLayer::new(config, fallback::value(cached()))
            .unwrap()
            .layer(backend());
        let err = svc.clone().oneshot(req(off)).await.unwrap_err();
        assert!(
            !err.is::<FallbackFailed>(),
            "{off}: the call's own error, untouched: {err}"
        );
        for on in ["fail", "limited", "timeout"]
            .into_iter()
            .filter(|t| *t != off)
        {
            let res = svc.clone().oneshot(req(on)).await.unwrap();
            assert_eq!(res.body(), "cached", "{on} with {off} off");
        }
    }
    assert!(
        FallbackLayer::new(
            FallbackConfig {
                on_rejected: false,
                on_failure: false,
                on_timeout: false
            },
            fallback::value(cached())
        )
        .is_err(),
        "a layer that never falls back is refused"
    );
}

#[tokio::test]
async fn a_function_sees_the_request_and_the_cause() {
    let f = fallback::from_fn(|req: Req, cause: &Cause<Res>| {
        let what = match cause.trigger {
            Trigger::Rejected(kind) => format!("rejected {}", kind.as_str()),
            Trigger::Failure => match &cause.answer {
                Ok(res) => format!("failed with {}", res.status().as_u16()),
                Err(e) => format!("failed: {e}"),
            },
            Trigger::Timeout => "timed out".to_owned(),
        };
        Ok(http::Response::new(format!("{} -> {what}", req.body())))
    });
    let layer = FallbackLayer::builder(FallbackConfig::default(), f)
        .classify(HttpClassifier)
        .build()
        .unwrap();
    let svc = layer.layer(backend());
    let body = |r: Res| r.into_body();
    assert_eq!(
        body(svc.clone().oneshot(req("fail")).await.unwrap()),
        "fail -> failed: connection reset"
    );
    assert_eq!(
        body(svc.clone().oneshot(req("500")).await.unwrap()),
        "500 -> failed with 500"
    );
    assert_eq!(
        body(svc.clone().oneshot(req("limited")).await.unwrap()),
        "limited -> rejected rate_limited"
    );
    assert_eq!(
        body(svc.clone().oneshot(req("timeout")).await.unwrap()),
        "timeout -> timed out"
    );
}

#[tokio::test]
async fn another_service_answers_and_is_called_only_on_a_trigger() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let backup = service_fn(move |req: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(http::Response::new(format!("backup for {}", req.body()))) }
    });
    let svc = FallbackLayer::new(FallbackConfig::default(), fallback::service(backup))
        .unwrap()
        .layer(backend());
    assert_eq!(
        svc.clone().oneshot(req("ok")).await.unwrap().body(),
        "fresh"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        svc.clone().oneshot(req("fail")).await.unwrap().body(),
        "backup for fail"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_fallbacks_own_failure_is_reported_with_the_calls() {
    let f = fallback::from_fn(|_: Req, _: &Cause<Res>| Err(BoxError::from("cache empty")));
    let svc = FallbackLayer::new(FallbackConfig::default(), f)
        .unwrap()
        .layer(backend());
    let err = svc.clone().oneshot(req("fail")).await.unwrap_err();
    let failed = err
        .downcast_ref::<FallbackFailed>()
        .expect("a FallbackFailed");
    assert_eq!(failed.trigger(), Trigger::Failure);
    assert_eq!(failed.fallback_error().to_string(), "cache empty");
    assert_eq!(failed.original().unwrap().to_string(), "connection reset");
    assert_eq!(
        err.to_string(),
        "the fallback failed (cache empty) after the call failed: connection reset"
    );
    // A rejection kept as the original is still found by its kind there.
    let err = svc.clone().oneshot(req("limited")).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert_eq!(
        Rejected::find(&**failed.original().unwrap()).map(|r| r.kind()),
        Some(RejectKind::RateLimited)
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_timed_out_below_falls_back_in_time() {
    // The deadline layer below times the call out; the fallback answers.
    let slow = service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(http::Response::new("late".to_owned()))
    });
    // An EMA timeout at rest gives calls its maximum, 50 ms.
    let timeout = EmaTimeoutLayer::new(EmaTimeoutConfig {
        avg: Duration::from_millis(10),
        hwm: Duration::from_millis(40),
        max: Duration::from_millis(50),
        n: 10,
    })
    .unwrap();
    let svc = FallbackLayer::new(FallbackConfig::default(), fallback::value(cached()))
        .unwrap()
        .layer(timeout.layer(slow));
    let start = tokio::time::Instant::now();
    assert_eq!(svc.oneshot(req("x")).await.unwrap().body(), "cached");
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[test]
fn the_handle_reconfigures_the_triggers() {
    let layer = FallbackLayer::new(FallbackConfig::default(), fallback::value(cached())).unwrap();
    let handle = layer.handle();
    let off = FallbackConfig {
        on_failure: false,
        ..FallbackConfig::default()
    };
    handle.reconfigure(off).unwrap();
    assert_eq!(handle.config(), off);
    assert!(
        handle
            .reconfigure(FallbackConfig {
                on_rejected: false,
                on_failure: false,
                on_timeout: false
            })
            .is_err()
    );
    assert_eq!(handle.config(), off, "a refused change changes nothing");
}
