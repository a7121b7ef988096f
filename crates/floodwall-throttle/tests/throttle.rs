//! Adaptive throttling: the probability at exact counts, window expiry,
//! per-criticality isolation, and a seeded simulation against a backend of
//! fixed capacity.

use std::time::Duration;

use floodwall_core::{BoxError, Criticality, HttpClassifier, RejectKind, Rejected};
use floodwall_throttle::{AdaptiveThrottle, SplitMix, ThrottleConfig, ThrottleLayer, Throttled};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

fn throttle(config: ThrottleConfig, epoch: Instant) -> AdaptiveThrottle {
    AdaptiveThrottle::with_rng(config, SplitMix::new(42), epoch).unwrap()
}

fn record(
    t: &AdaptiveThrottle,
    now: Instant,
    class: Option<Criticality>,
    requests: u64,
    accepts: u64,
) {
    for i in 0..requests {
        t.record_request(now, class);
        if i < accepts {
            t.record_accept(now, class);
        }
    }
}

#[test]
fn probability_at_exact_counts() {
    let t0 = Instant::now();
    let th = throttle(ThrottleConfig::default(), t0);
    assert_eq!(
        th.stats(t0, None).probability,
        0.0,
        "no history, no throttling"
    );
    record(&th, t0, None, 10, 5);
    assert_eq!(th.stats(t0, None).probability, 0.0, "10 − 2·5 = 0");
    record(&th, t0, None, 1, 0);
    let s = th.stats(t0, None);
    assert_eq!((s.requests, s.accepts), (11, 5));
    assert_eq!(s.probability, 1.0 / 12.0, "(11 − 10) / 12");
    record(&th, t0, None, 89, 5);
    // 100 requests, 10 accepts: (100 − 20) / 101.
    assert_eq!(th.stats(t0, None).probability, 80.0 / 101.0);
    // K = 1.5 is more aggressive.
    let aggressive = throttle(
        ThrottleConfig {
            k: 1.5,
            ..Default::default()
        },
        t0,
    );
    record(&aggressive, t0, None, 100, 10);
    assert_eq!(aggressive.stats(t0, None).probability, 85.0 / 101.0);
}

#[test]
fn guards_min_rate_and_max_probability() {
    let t0 = Instant::now();
    let config = ThrottleConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        min_rps: 5.0,
        max_probability: 0.5,
        ..Default::default()
    };
    let th = throttle(config, t0);
    record(&th, t0, None, 49, 0);
    assert_eq!(th.stats(t0, None).probability, 0.0, "49 < 5 rps × 10 s");
    record(&th, t0, None, 1, 0);
    assert_eq!(
        th.stats(t0, None).probability,
        0.5,
        "capped at 0.5 (would be 50/51)"
    );
}

#[test]
fn counts_leave_with_the_window() {
    let t0 = Instant::now();
    let config = ThrottleConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        ..Default::default()
    };
    let th = throttle(config, t0);
    record(&th, t0, None, 100, 0);
    let s = |secs: f64| th.stats(t0 + Duration::from_secs_f64(secs), None);
    assert_eq!(s(9.999).requests, 100, "still inside the window");
    assert_eq!(s(10.0).requests, 0, "the bucket of t0 has left");
    assert_eq!(s(10.0).probability, 0.0);
    record(&th, t0 + Duration::from_secs(15), None, 3, 3);
    assert_eq!(s(15.5).requests, 3);
    assert_eq!(s(1000.0).requests, 0);
}

#[test]
fn criticality_classes_keep_separate_statistics() {
    let t0 = Instant::now();
    let th = throttle(ThrottleConfig::default(), t0);
    record(&th, t0, Some(Criticality::Sheddable), 100, 0);
    assert!(th.stats(t0, Some(Criticality::Sheddable)).probability > 0.9);
    for class in [
        Some(Criticality::CriticalPlus),
        Some(Criticality::Critical),
        None,
    ] {
        assert_eq!(th.stats(t0, class).requests, 0);
        assert!(th.admit(t0, class).is_ok(), "{class:?} is not throttled");
    }
}

#[test]
fn admit_counts_local_rejections_as_requests() {
    let t0 = Instant::now();
    let th = throttle(ThrottleConfig::default(), t0);
    record(&th, t0, None, 1000, 0);
    let rejected = (0..1000).filter(|_| th.admit(t0, None).is_err()).count();
    // p ≈ 0.999: nearly everything is dropped, and every attempt counts.
    assert!(rejected > 990, "{rejected}");
    assert_eq!(th.stats(t0, None).requests, 2000);
}

/// The acceptance simulation: a backend that accepts at most C requests a
/// second, offered 10·C. Once the window has filled, the throttled client
/// sends it about K·C a second; when the backend recovers, throttling fades
/// and stops when the formula says it must (see below).
#[test]
fn a_refusing_backend_receives_about_k_times_what_it_accepts() {
    const C: u64 = 100;
    const OFFERED: u64 = 10 * C;
    let config = ThrottleConfig::default(); // 120 s window, K = 2
    let t0 = Instant::now();
    let th = throttle(config, t0);
    let step = Duration::from_secs(1) / OFFERED as u32;
    let mut capacity_left = C;
    let mut second = 0u64;
    let mut sent_per_second = Vec::new();
    let mut local_rejects_per_second = Vec::new();
    let (mut sent, mut dropped) = (0u64, 0u64);
    let recover_at = 400u64;
    for i in 0..(recover_at + 200) * OFFERED {
        let now = t0 + step * i as u32;
        let s = i / OFFERED;
        if s != second {
            sent_per_second.push(sent);
            local_rejects_per_second.push(dropped);
            (sent, dropped, second, capacity_left) = (0, 0, s, C);
        }
        match th.admit(now, None) {
            Err(_) => dropped += 1,
            Ok(()) => {
                sent += 1;
                let accepted = s >= recover_at || capacity_left > 0;
                if accepted {
                    capacity_left = capacity_left.saturating_sub(1);
                    th.record_accept(now, None);
                }
            }
        }
    }
    // Steady state: the last 200 s of overload, the window long since full.
    let steady = &sent_per_second[200..recover_at as usize];
    let mean = steady.iter().sum::<u64>() as f64 / steady.len() as f64;
    let k_c = config.k * C as f64;
    // Expected K·C·(1 + 1/requests): the +1 in the denominator is
    // negligible at ~120,000 requests in the window, and the binomial noise
    // of ~1,000 draws a second averages out over 200 s to well under 1%.
    // ±5% leaves room for the window's bucket boundaries.
    assert!(
        (mean - k_c).abs() < 0.05 * k_c,
        "backend received {mean:.1}/s, expected about {k_c}/s"
    );
    // Recovery. With the published formula the window still holds the
    // overload's requests and the drops of the first seconds after it, so
    // throttling fades along A' = K·A/W − C (accepts A in the window, W the
    // window in seconds): p reaches 0 after
    //   x = (W/K) · ln((λ − C) / (C·(K − 1)))
    // seconds, λ the offered rate. Here (60 s) · ln 9 = 131.8 s: about 1.1
    // windows. (It is within one window only while λ ≤ C·(1 + e^K/(K − 1)),
    // 8.4·C for K = 2.)
    let w = config.window.as_secs_f64();
    let expected = w / config.k * ((OFFERED - C) as f64 / (C as f64 * (config.k - 1.0))).ln();
    let stopped = local_rejects_per_second[recover_at as usize..]
        .iter()
        .position(|&d| d == 0)
        .expect("throttling stopped") as f64;
    assert!(
        (stopped - expected).abs() <= 0.05 * expected,
        "stopped after {stopped} s, expected {expected:.1} s"
    );
    let drops = &local_rejects_per_second[recover_at as usize..];
    assert!(
        drops[0] > 500,
        "right after recovery most requests are still dropped"
    );
    let after = &drops[stopped as usize..];
    assert!(after.iter().all(|&d| d == 0), "it stays off: {after:?}");
    let stats = th.stats(t0 + Duration::from_secs(recover_at + 199), None);
    assert_eq!(stats.probability, 0.0);
    println!(
        "offered {OFFERED}/s, capacity {C}/s: backend received {mean:.1}/s in steady overload; \
         throttling stopped {stopped} s after recovery (model: {expected:.1} s)"
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_drops_locally_and_counts_overload_responses() {
    let layer = ThrottleLayer::builder(ThrottleConfig::default())
        .name("rooms")
        .rng(SplitMix::new(9))
        .classify(HttpClassifier)
        .criticality(|req: &http::Request<()>| req.extensions().get::<Criticality>().copied())
        .build()
        .unwrap();
    let handle = layer.handle();
    let backend_calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let calls = backend_calls.clone();
    let client = layer.layer(service_fn(move |_: http::Request<()>| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Ok::<_, BoxError>(http::Response::builder().status(429).body(()).unwrap()) }
    }));
    let mut throttled = 0;
    for _ in 0..1000 {
        match client.clone().oneshot(http::Request::new(())).await {
            Ok(res) => assert_eq!(res.status(), 429),
            Err(err) => {
                let r = Rejected::find(&*err).unwrap();
                assert_eq!(r.kind(), RejectKind::Throttled);
                assert!(r.get::<Throttled>().unwrap().probability() > 0.0);
                throttled += 1;
            }
        }
        advance(Duration::from_millis(10)).await;
    }
    let sent = backend_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sent + throttled, 1000);
    assert!(throttled > 900, "only {throttled} dropped");
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (1000, 0), "429s are not accepts");
    // A critical request keeps its own, clean statistics.
    let mut req = http::Request::new(());
    req.extensions_mut().insert(Criticality::CriticalPlus);
    assert!(client.clone().oneshot(req).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn errors_are_not_accepts_and_pass_through() {
    let layer = ThrottleLayer::new(ThrottleConfig::default()).unwrap();
    let handle = layer.handle();
    let client = layer.layer(service_fn(|ok: bool| async move {
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::other("connection reset"))
        }
    }));
    client.clone().oneshot(true).await.unwrap();
    let err = client.clone().oneshot(false).await.unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some());
    let s = handle.stats(None);
    assert_eq!((s.requests, s.accepts), (2, 1));
}

#[test]
fn invalid_configs_are_errors_not_panics() {
    let too_long = ThrottleConfig {
        window: Duration::from_secs(86_401),
        ..Default::default()
    };
    assert!(
        too_long
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at most a day")
    );
    let too_many = ThrottleConfig {
        buckets: u32::MAX,
        ..Default::default()
    };
    assert!(too_many.validate().is_err());
    let bad = |c: ThrottleConfig| c.validate().unwrap_err().to_string();
    assert!(
        bad(ThrottleConfig {
            k: 0.5,
            ..Default::default()
        })
        .contains("k must be finite and at least 1 (got 0.5)")
    );
    assert!(
        bad(ThrottleConfig {
            buckets: 0,
            ..Default::default()
        })
        .contains("buckets must be > 0")
    );
    assert!(
        bad(ThrottleConfig {
            max_probability: 1.5,
            ..Default::default()
        })
        .contains("max_probability")
    );
    assert!(
        bad(ThrottleConfig {
            min_rps: f64::NAN,
            ..Default::default()
        })
        .contains("min_rps")
    );
}
