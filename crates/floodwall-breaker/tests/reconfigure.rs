//! The breaker reconfigured while it serves: state and generation kept; a
//! smaller count window keeps its newest calls and judges them at the next
//! outcome; a shorter open duration ends the current opening sooner; a
//! refused configuration changes nothing.

use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, State, WindowCounts, WindowKind};
use tokio::time::Instant;

fn config(window: u32) -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count(window),
        minimum_calls: 4,
        detect_slow_calls: false,
        ..BreakerConfig::default()
    }
}

fn outcome(b: &CircuitBreaker, t: Instant, failed: bool) {
    let permit = b.try_acquire(t).expect("closed");
    if failed {
        b.on_failure(permit, t);
    } else {
        b.on_success(permit, t);
    }
}

#[test]
fn shrinking_the_window_below_the_calls_it_holds_keeps_the_newest_and_judges_them() {
    let t0 = Instant::now();
    let b = CircuitBreaker::with_epoch(config(10), t0).unwrap();
    // Six successes, then four failures: 40 % of 10, under 50 %.
    for failed in [false; 6].into_iter().chain([true; 4]) {
        outcome(&b, t0, failed);
    }
    assert_eq!(b.state(), State::Closed);
    let generation = b.generation();
    b.reconfigure(config(4), t0).unwrap();
    assert_eq!(b.state(), State::Closed, "state kept");
    assert_eq!(b.generation(), generation, "generation kept");
    assert_eq!(
        b.counts(t0),
        WindowCounts {
            calls: 4,
            failures: 4,
            slow: 0
        },
        "the newest four calls: the failures"
    );
    // The next outcome is judged on the new window: 3 failures of 4.
    outcome(&b, t0, false);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.generation(), generation + 1);
}

#[test]
fn growing_the_window_keeps_every_call_and_a_new_kind_starts_empty() {
    let t0 = Instant::now();
    let b = CircuitBreaker::with_epoch(config(4), t0).unwrap();
    for failed in [true, false, false] {
        outcome(&b, t0, failed);
    }
    b.reconfigure(config(8), t0).unwrap();
    assert_eq!(b.counts(t0).calls, 3);
    assert_eq!(b.counts(t0).failures, 1);
    let timed = BreakerConfig {
        window: WindowKind::Time(10),
        ..config(8)
    };
    b.reconfigure(timed, t0).unwrap();
    assert_eq!(b.counts(t0), WindowCounts::default());
    assert_eq!(b.config().window, WindowKind::Time(10));
}

#[test]
fn a_shorter_open_duration_ends_the_current_opening_sooner_and_a_longer_one_waits_for_the_next() {
    let t0 = Instant::now();
    let b = CircuitBreaker::with_epoch(config(4), t0).unwrap();
    for _ in 0..4 {
        outcome(&b, t0, true);
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.open_remaining(t0), Some(Duration::from_secs(60)));
    let t = t0 + Duration::from_secs(5);
    let longer = BreakerConfig {
        open_duration: Duration::from_secs(120),
        ..config(4)
    };
    b.reconfigure(longer, t).unwrap();
    assert_eq!(
        b.open_remaining(t),
        Some(Duration::from_secs(55)),
        "unchanged"
    );
    let shorter = BreakerConfig {
        open_duration: Duration::from_secs(10),
        ..config(4)
    };
    b.reconfigure(shorter, t).unwrap();
    assert_eq!(
        b.open_remaining(t),
        Some(Duration::from_secs(5)),
        "10 s from opening"
    );
}

#[test]
fn a_refused_configuration_changes_nothing() {
    let t0 = Instant::now();
    let b = CircuitBreaker::with_epoch(config(10), t0).unwrap();
    outcome(&b, t0, true);
    let bad = BreakerConfig {
        failure_rate_threshold: 150.0,
        ..config(4)
    };
    assert!(b.reconfigure(bad, t0).is_err());
    assert_eq!(b.config(), config(10));
    assert_eq!(b.counts(t0).calls, 1);
}
