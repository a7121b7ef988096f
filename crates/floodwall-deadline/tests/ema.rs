//! The ema-timeout algorithm against hand-computed numbers at its three
//! regimes, and the layer: its own timeout, a sooner deadline winning
//! (and not recorded), failures counted as at least `Tmax`.

use std::time::Duration;

use floodwall_core::{Deadline, DeadlineExceeded, Rejected};
use floodwall_deadline::{EmaTimeout, EmaTimeoutConfig, EmaTimeoutLayer};
use tokio::time::{Instant, sleep};
use tower::{Layer, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The source's README example, with `N = 1` so that the EMA is the last
/// latency (r = 2/(1 + 1) = 1) and every regime is exact.
fn readme(n: u32) -> EmaTimeoutConfig {
    EmaTimeoutConfig {
        avg: ms(55),
        hwm: ms(300),
        max: ms(500),
        n,
    }
}

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) < Duration::from_micros(1)
}

#[test]
fn the_three_regimes_at_hand_computed_values() {
    let ema = EmaTimeout::new(readme(1)).unwrap();
    assert_eq!(ema.timeout(), ms(500), "no history: EMA 0 ≤ Tavg");
    ema.record(ms(55), false);
    assert_eq!(ema.timeout(), ms(500), "EMA = Tavg: still Tmax");
    // EMA 100 ms: p = (300 − 100)/(300 − 55) = 200/245;
    // timeout = 300 + 200/245 · 200 = 463.265306… ms.
    ema.record(ms(100), false);
    assert!(close(ema.ema(), ms(100)));
    let expected = Duration::from_secs_f64(0.300 + 200.0 / 245.0 * 0.200);
    assert!(close(ema.timeout(), expected), "{:?}", ema.timeout());
    ema.record(ms(300), false);
    assert_eq!(ema.timeout(), ms(300), "EMA = Thwm");
    ema.record(ms(400), false);
    assert_eq!(ema.timeout(), ms(300), "EMA over Thwm");
    // A failure counts as at least Tmax, however fast it failed.
    ema.record(ms(10), false);
    assert_eq!(ema.timeout(), ms(500));
    ema.record(ms(10), true);
    assert!(close(ema.ema(), ms(500)));
    assert_eq!(ema.timeout(), ms(300));
}

#[test]
fn the_ema_smooths_with_r_two_over_n_plus_one() {
    let ema = EmaTimeout::new(readme(90)).unwrap();
    // r = 2/91: one 400 ms call from 0 gives 8.7912… ms.
    ema.record(ms(400), false);
    assert!(close(ema.ema(), Duration::from_secs_f64(0.4 * 2.0 / 91.0)));
    assert_eq!(ema.timeout(), ms(500));
    // A steady 200 ms converges there: between Tavg and Thwm.
    for _ in 0..2000 {
        ema.record(ms(200), false);
    }
    let expected = Duration::from_secs_f64(0.300 + 100.0 / 245.0 * 0.200);
    assert!(ema.timeout().abs_diff(expected) < Duration::from_micros(50));
}

#[test]
fn invalid_parameters_are_refused() {
    let bad = |c: EmaTimeoutConfig| EmaTimeout::new(c).unwrap_err().field();
    assert_eq!(
        bad(EmaTimeoutConfig {
            hwm: ms(55),
            ..readme(1)
        }),
        "hwm"
    );
    assert_eq!(
        bad(EmaTimeoutConfig {
            max: ms(299),
            ..readme(1)
        }),
        "max"
    );
    assert_eq!(bad(EmaTimeoutConfig { n: 0, ..readme(1) }), "n");
    assert_eq!(
        bad(EmaTimeoutConfig {
            avg: Duration::ZERO,
            ..readme(1)
        }),
        "avg"
    );
}

fn exceeded(err: &floodwall_core::BoxError) -> &DeadlineExceeded {
    Rejected::find(err.as_ref())
        .and_then(|r| r.get::<DeadlineExceeded>())
        .expect("a DeadlineExceeded rejection")
}

#[tokio::test(start_paused = true)]
async fn the_layer_times_calls_out_at_the_ema_timeout_and_records_them() {
    let layer = EmaTimeoutLayer::new(readme(1)).unwrap();
    let core = layer.core().clone();
    let svc = layer.layer(service_fn(|req: http::Request<u64>| async move {
        sleep(ms(*req.body())).await;
        Ok::<_, floodwall_core::BoxError>(())
    }));
    // A fast call: recorded as its latency.
    svc.clone().oneshot(http::Request::new(100)).await.unwrap();
    assert!(close(core.ema(), ms(100)));
    // A slow one: cut at the EMA timeout (463 ms), recorded as a failure.
    let start = Instant::now();
    let err = svc
        .clone()
        .oneshot(http::Request::new(2_000))
        .await
        .unwrap_err();
    assert!(!exceeded(&err).caller_limited());
    let timeout = Duration::from_secs_f64(0.300 + 200.0 / 245.0 * 0.200);
    // Tokio's timer has millisecond granularity: it fires at 464 ms.
    let took = start.elapsed();
    assert!(took >= timeout && took <= timeout + ms(1), "{took:?}");
    assert_eq!(
        core.timeout(),
        ms(300),
        "the failure counts as ≥ Tmax: EMA 500 ms"
    );
    // Now the sick dependency gets 300 ms.
    let start = Instant::now();
    assert!(svc.clone().oneshot(http::Request::new(400)).await.is_err());
    assert_eq!(start.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn a_sooner_deadline_wins_and_its_expiry_is_not_recorded() {
    let layer = EmaTimeoutLayer::new(readme(1)).unwrap();
    let core = layer.core().clone();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        sleep(ms(1_000)).await;
        Ok::<_, floodwall_core::BoxError>(())
    }));
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(Deadline::after(Instant::now(), ms(80)));
    let start = Instant::now();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(80));
    assert!(exceeded(&err).caller_limited());
    assert_eq!(
        core.ema(),
        Duration::ZERO,
        "the caller's deadline says nothing about the dependency"
    );
}
