//! DAGOR admission reconfigured while it serves: the level and the window
//! in progress are kept; a higher α cuts harder at the next overloaded
//! window; a refused configuration changes nothing.

use std::time::Duration;

use floodwall_core::Priority;
use floodwall_priority::{AdmissionConfig, AdmissionController};
use tokio::time::Instant;

fn p(b: u8, u: u8) -> Priority {
    Priority::new(b, u).unwrap()
}

/// One window of 100 arrivals, (1, u) and (2, u) for u in 0..50, every one
/// queuing 30 ms (overloaded: the threshold is 20 ms).
fn overloaded_window(c: &AdmissionController, t: Instant) {
    for u in 0..50 {
        for b in [1, 2] {
            let _ = c.admit(t, p(b, u));
            c.record_queuing(t, Duration::from_millis(30));
        }
    }
}

#[test]
fn raising_alpha_while_overloaded_cuts_harder_from_the_next_window_and_keeps_the_level() {
    let t0 = Instant::now();
    let config = AdmissionConfig {
        window_requests: 100,
        ..AdmissionConfig::default()
    };
    let steady = AdmissionController::new(&config, t0).unwrap();
    let raised = AdmissionController::new(&config, t0).unwrap();
    for c in [&steady, &raised] {
        overloaded_window(c, t0);
        // N_exp = 0.95 × 100 = 95: all 50 of business 1, 45 of business 2.
        assert_eq!(c.level(), p(2, 44));
    }
    raised
        .reconfigure(
            &AdmissionConfig {
                alpha: 0.5,
                ..config
            },
            t0,
        )
        .unwrap();
    assert_eq!(raised.level(), p(2, 44), "the level in force is kept");
    assert_eq!(raised.config().alpha, 0.5);
    for c in [&steady, &raised] {
        overloaded_window(c, t0);
    }
    // Steady: N_exp = 0.95 × 95 admitted = 90.25: 50 + 40.
    assert_eq!(steady.level(), p(2, 39));
    // Raised: N_exp = 0.5 × 95 = 47.5: the first 47 of business 1.
    assert_eq!(raised.level(), p(1, 46));
}

#[test]
fn a_refused_configuration_changes_nothing_and_window_counts_apply_to_the_window_in_progress() {
    let t0 = Instant::now();
    let config = AdmissionConfig {
        window_requests: 100,
        ..AdmissionConfig::default()
    };
    let c = AdmissionController::new(&config, t0).unwrap();
    let bad = AdmissionConfig {
        alpha: 1.5,
        ..config
    };
    assert_eq!(c.reconfigure(&bad, t0).unwrap_err().field(), "alpha");
    assert_eq!(c.config(), config);
    // 60 arrivals into a window of 100, then the window shrinks to 50
    // requests: the next arrival closes it.
    for u in 0..60 {
        let _ = c.admit(t0, p(1, u));
    }
    assert!(c.last_window().is_none());
    c.reconfigure(
        &AdmissionConfig {
            window_requests: 50,
            ..config
        },
        t0,
    )
    .unwrap();
    let _ = c.admit(t0, p(1, 60));
    assert_eq!(c.last_window().map(|w| w.arrivals), Some(61));
}

#[test]
fn a_shorter_window_ends_the_window_in_progress_sooner() {
    let t0 = Instant::now();
    let c = AdmissionController::new(&AdmissionConfig::default(), t0).unwrap();
    let _ = c.admit(t0, p(1, 0));
    c.reconfigure(
        &AdmissionConfig {
            window: Duration::from_millis(100),
            ..AdmissionConfig::default()
        },
        t0,
    )
    .unwrap();
    assert!(c.poll_window(t0 + Duration::from_millis(99)).is_none());
    assert!(c.poll_window(t0 + Duration::from_millis(100)).is_some());
}
