//! The SRE throttle reconfigured while it serves: a new K applies to the
//! next decision on the counts it has; a new window starts its counts
//! afresh and ignores outcomes of requests admitted before; a refused
//! configuration changes nothing.

use std::time::Duration;

use floodwall_throttle::{AdaptiveThrottle, SplitMix, ThrottleConfig};
use tokio::time::Instant;

fn record(t: &AdaptiveThrottle, now: Instant, requests: u64, accepts: u64) {
    for i in 0..requests {
        t.record_request(now, None);
        if i < accepts {
            t.record_accept(now, None);
        }
    }
}

#[test]
fn a_new_k_applies_to_the_counts_in_the_window() {
    let t0 = Instant::now();
    let th = AdaptiveThrottle::with_rng(ThrottleConfig::default(), SplitMix::new(7), t0).unwrap();
    // 100 requests, 20 accepted: p = (100 − 2·20) / 101.
    record(&th, t0, 100, 20);
    let before = th.stats(t0, None);
    assert!((before.probability - 60.0 / 101.0).abs() < 1e-12);
    th.reconfigure(ThrottleConfig {
        k: 4.0,
        ..ThrottleConfig::default()
    })
    .unwrap();
    let after = th.stats(t0, None);
    assert_eq!((after.requests, after.accepts), (100, 20), "counts kept");
    assert!(
        (after.probability - 20.0 / 101.0).abs() < 1e-12,
        "p = (100 − 4·20) / 101"
    );
    assert_eq!(th.config().k, 4.0);
}

#[test]
fn a_new_window_starts_afresh_and_ignores_tickets_from_before() {
    let t0 = Instant::now();
    let th = AdaptiveThrottle::with_rng(ThrottleConfig::default(), SplitMix::new(7), t0).unwrap();
    record(&th, t0, 50, 0);
    let ticket = loop {
        if let Ok(ticket) = th.admit_ticket(t0, None) {
            break ticket;
        }
    };
    th.reconfigure(ThrottleConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        ..ThrottleConfig::default()
    })
    .unwrap();
    assert_eq!(th.stats(t0, None).requests, 0, "the new window is empty");
    th.accept(ticket);
    assert_eq!(
        th.stats(t0, None).accepts,
        0,
        "the ticket was counted in the old window"
    );
}

#[test]
fn a_refused_configuration_changes_nothing() {
    let t0 = Instant::now();
    let th = AdaptiveThrottle::with_rng(ThrottleConfig::default(), SplitMix::new(7), t0).unwrap();
    record(&th, t0, 10, 5);
    let bad = ThrottleConfig {
        k: 0.5,
        ..ThrottleConfig::default()
    };
    assert_eq!(th.reconfigure(bad).unwrap_err().field(), "k");
    assert_eq!(th.config(), ThrottleConfig::default());
    assert_eq!(th.stats(t0, None).requests, 10);
}

#[test]
fn the_retry_budget_keeps_its_tokens_capped_at_a_new_maximum() {
    use floodwall_throttle::RetryBudget;
    let budget = RetryBudget::new(10.0, 0.1).unwrap();
    for _ in 0..3 {
        budget.on_failure();
    }
    assert_eq!(budget.tokens(), 7.0);
    budget.reconfigure(20.0, 0.5).unwrap();
    assert_eq!(budget.tokens(), 7.0, "raising grants nothing at once");
    assert!(!budget.can_retry(), "7 is not above 20 / 2");
    budget.on_success();
    assert_eq!(budget.tokens(), 7.5, "the new ratio");
    budget.reconfigure(4.0, 0.5).unwrap();
    assert_eq!(budget.tokens(), 4.0, "capped at the new maximum");
    assert!(budget.reconfigure(0.0, 0.5).is_err());
    assert_eq!(budget.max_tokens(), 4.0);
}
