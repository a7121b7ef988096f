//! The breaker's state machine under virtual time, at the exact boundaries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, Growth, State, StateChange, WindowKind};
use floodwall_core::random::SplitMix;
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

fn breaker(config: BreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new(config)
        .unwrap()
        .with_rng(SplitMix::new(5))
}

/// Makes `n` calls at `now`, the first `failures` of them failing.
fn calls(b: &CircuitBreaker, n: u32, failures: u32) {
    for i in 0..n {
        let now = Instant::now();
        let Ok(permit) = b.try_acquire(now) else {
            return;
        };
        if i < failures {
            b.on_failure(permit, now);
        } else {
            b.on_success(permit, now);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn forty_nine_percent_stays_closed_fifty_opens() {
    let b = breaker(BreakerConfig::default()); // last 100 calls, minimum 100, 50 %
    calls(&b, 51, 0);
    calls(&b, 49, 49);
    assert_eq!(b.counts(Instant::now()).failures, 49);
    assert_eq!(b.state(), State::Closed, "49 of 100");
    // The oldest success leaves as a failure arrives: 50 of the last 100.
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn fewer_than_minimum_calls_never_open() {
    let b = breaker(BreakerConfig::default());
    calls(&b, 99, 99);
    assert_eq!(b.state(), State::Closed, "99 failures, but 99 < 100 calls");
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_count_window_is_the_last_n_calls() {
    let config = BreakerConfig {
        window: WindowKind::Count(10),
        minimum_calls: 10,
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 4, 4); // 4 failures
    calls(&b, 10, 0); // pushed out by 10 successes
    assert_eq!(b.counts(Instant::now()).failures, 0);
    calls(&b, 4, 4);
    assert_eq!(b.state(), State::Closed, "4 of the last 10");
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open, "5 of the last 10");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_at_their_own_threshold() {
    let config = BreakerConfig {
        window: WindowKind::Count(4),
        minimum_calls: 4,
        slow_call_rate_threshold: 50.0,
        slow_call_duration: Duration::from_secs(2),
        ..Default::default()
    };
    let b = breaker(config);
    let timed = |d: Duration| {
        let b = &b;
        async move {
            let permit = b.try_acquire(Instant::now()).unwrap();
            advance(d).await;
            b.on_success(permit, Instant::now());
        }
    };
    timed(MS).await;
    timed(Duration::from_millis(2001)).await;
    timed(MS).await;
    assert_eq!(b.state(), State::Closed);
    timed(Duration::from_secs(2)).await;
    assert_eq!(
        b.state(),
        State::Closed,
        "exactly 2 s is not slower than 2 s: 1 of 4"
    );
    assert_eq!(b.counts(Instant::now()).slow, 1);
    timed(Duration::from_millis(2001)).await;
    assert_eq!(b.state(), State::Open, "2 slow of the last 4: 50 %");
}

#[tokio::test(start_paused = true)]
async fn open_waits_its_duration_then_half_opens() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open);
    let refused = b.try_acquire(Instant::now()).unwrap_err();
    assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));
    advance(Duration::from_secs(60) - MS).await;
    assert_eq!(
        b.try_acquire(Instant::now()).unwrap_err().retry_after,
        Some(MS)
    );
    advance(MS).await;
    let probe = b.try_acquire(Instant::now()).unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), State::HalfOpen);
    b.on_cancel(probe);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_probes_and_decides_on_them() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        half_open_calls: 4,
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 1, 1);
    advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    let probes: Vec<_> = (0..4).map(|_| b.try_acquire(now).unwrap()).collect();
    assert!(b.try_acquire(now).is_err(), "a fifth probe is refused");
    let mut probes = probes.into_iter();
    // 2 of 4 failing is 50 %: open again.
    b.on_failure(probes.next().unwrap(), now);
    b.on_failure(probes.next().unwrap(), now);
    b.on_success(probes.next().unwrap(), now);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "undecided until all four report"
    );
    b.on_success(probes.next().unwrap(), now);
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    let probes: Vec<_> = (0..4).map(|_| b.try_acquire(now).unwrap()).collect();
    for (i, p) in probes.into_iter().enumerate() {
        if i == 0 {
            b.on_failure(p, now);
        } else {
            b.on_success(p, now);
        }
    }
    assert_eq!(b.state(), State::Closed, "1 of 4 is 25 %");
    assert_eq!(b.counts(now).calls, 0, "a fresh window");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot_and_decides_nothing() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        half_open_calls: 1,
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 1, 1);
    advance(Duration::from_secs(60)).await;
    let now = Instant::now();
    let probe = b.try_acquire(now).unwrap();
    assert!(b.try_acquire(now).is_err());
    b.on_cancel(probe);
    assert_eq!(b.state(), State::HalfOpen, "nothing decided");
    let probe = b.try_acquire(now).expect("the slot is free again");
    b.on_success(probe, now);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_earlier_generation_are_ignored() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        half_open_calls: 1,
        ..Default::default()
    };
    let b = breaker(config);
    let stale = b.try_acquire(Instant::now()).unwrap(); // started while closed
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(60)).await;
    let probe = b.try_acquire(Instant::now()).unwrap();
    b.on_success(probe, Instant::now());
    assert_eq!(
        b.state(),
        State::Closed,
        "closed again, two generations later"
    );
    // The call from before the trip fails now. Without the generation check
    // it would land in the new window (minimum 1, window 1) and reopen it.
    b.on_failure(stale, Instant::now());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.counts(Instant::now()).calls, 0);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_and_a_success_resets_the_run() {
    let b = breaker(BreakerConfig::consecutive(3));
    calls(&b, 2, 2);
    calls(&b, 1, 0);
    calls(&b, 2, 2);
    assert_eq!(b.state(), State::Closed, "runs of 2");
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open, "3 in a row");
}

#[tokio::test(start_paused = true)]
async fn open_durations_grow_with_jitter_up_to_a_cap() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        half_open_calls: 1,
        open_duration: Duration::from_secs(10),
        growth: Some(Growth {
            multiplier: 2.0,
            max: Duration::from_secs(35),
            jitter: 0.0,
        }),
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 1, 1);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let wait = b
            .try_acquire(Instant::now())
            .unwrap_err()
            .retry_after
            .unwrap();
        waits.push(wait.as_secs());
        advance(wait).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        b.on_failure(probe, Instant::now());
    }
    assert_eq!(waits, [10, 20, 35, 35]);
    // Closing resets the growth.
    advance(Duration::from_secs(35)).await;
    let probe = b.try_acquire(Instant::now()).unwrap();
    b.on_success(probe, Instant::now());
    calls(&b, 1, 1);
    assert_eq!(
        b.try_acquire(Instant::now()).unwrap_err().retry_after,
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_open_durations() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        open_duration: Duration::from_secs(100),
        growth: Some(Growth {
            multiplier: 1.0,
            max: Duration::from_secs(100),
            jitter: 0.2,
        }),
        ..Default::default()
    };
    let mut seen = Vec::new();
    for seed in 0..20 {
        let b = CircuitBreaker::new(config)
            .unwrap()
            .with_rng(SplitMix::new(seed));
        calls(&b, 1, 1);
        let wait = b
            .try_acquire(Instant::now())
            .unwrap_err()
            .retry_after
            .unwrap();
        assert!(
            (80.0..=100.0).contains(&wait.as_secs_f64()),
            "{wait:?}: spread, then capped"
        );
        seen.push(wait);
    }
    seen.dedup();
    assert!(seen.len() > 10, "durations differ between breakers");
}

#[tokio::test(start_paused = true)]
async fn after_closing_the_ramp_admits_a_growing_fraction() {
    let config = BreakerConfig {
        minimum_calls: 1,
        window: WindowKind::Count(1),
        half_open_calls: 1,
        ramp: Some(Duration::from_secs(10)),
        ramp_start: 0.1,
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 1, 1);
    advance(Duration::from_secs(60)).await;
    let probe = b.try_acquire(Instant::now()).unwrap();
    b.on_success(probe, Instant::now());
    assert_eq!(b.state(), State::Closed);
    let admitted = |b: &CircuitBreaker| {
        let now = Instant::now();
        (0..10_000)
            .filter_map(|_| b.try_acquire(now).ok())
            .map(|p| b.on_success(p, now))
            .count() as f64
            / 10_000.0
    };
    assert!((b.admitted_fraction(Instant::now()) - 0.1).abs() < 1e-9);
    assert!((admitted(&b) - 0.1).abs() < 0.02);
    advance(Duration::from_secs(5)).await;
    assert!((b.admitted_fraction(Instant::now()) - 0.55).abs() < 1e-9);
    assert!((admitted(&b) - 0.55).abs() < 0.02);
    advance(Duration::from_secs(5)).await;
    assert_eq!(admitted(&b), 1.0, "the ramp is over");
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_old_failures() {
    let config = BreakerConfig {
        window: WindowKind::Time(10),
        minimum_calls: 4,
        ..Default::default()
    };
    let b = breaker(config);
    calls(&b, 2, 2);
    advance(Duration::from_secs(10)).await;
    calls(&b, 2, 0);
    assert_eq!(
        b.counts(Instant::now()).calls,
        2,
        "the failures left the window"
    );
    calls(&b, 2, 1);
    assert_eq!(b.state(), State::Closed, "1 of 4");
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Closed, "2 of 5 = 40 %");
    calls(&b, 1, 1);
    assert_eq!(b.state(), State::Open, "3 of 6 = 50 %");
}

#[tokio::test(start_paused = true)]
async fn manual_control_listeners_and_subscribers() {
    let seen: Arc<Mutex<Vec<StateChange>>> = Arc::default();
    let s = seen.clone();
    let b = CircuitBreaker::new(BreakerConfig::default())
        .unwrap()
        .on_state_change(move |c| s.lock().unwrap().push(*c));
    let mut rx = b.subscribe();
    b.force_open();
    assert!(b.try_acquire(Instant::now()).is_err());
    assert_eq!(*rx.borrow_and_update(), State::ForcedOpen);
    b.disable();
    calls(&b, 200, 200);
    assert_eq!(b.state(), State::Disabled, "metrics only: never opens");
    assert_eq!(b.counts(Instant::now()).failures, 100, "but counts");
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert!(rx.has_changed().unwrap());
    let changes: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(
        changes,
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Disabled),
            (State::Disabled, State::Closed)
        ]
    );
    assert_eq!(seen.lock().unwrap()[2].generation, 3);
}

#[test]
fn invalid_configs_name_their_field() {
    let bad = |c: BreakerConfig| c.validate().unwrap_err().field();
    assert_eq!(
        bad(BreakerConfig {
            failure_rate_threshold: 0.0,
            ..Default::default()
        }),
        "failure_rate_threshold"
    );
    assert_eq!(
        bad(BreakerConfig {
            window: WindowKind::Count(0),
            ..Default::default()
        }),
        "window"
    );
    assert_eq!(
        bad(BreakerConfig {
            half_open_calls: 0,
            ..Default::default()
        }),
        "half_open_calls"
    );
    assert_eq!(
        bad(BreakerConfig {
            ramp_start: 1.5,
            ..Default::default()
        }),
        "ramp_start"
    );
    assert!(BreakerConfig::responsive().validate().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_minimum_above_the_window_is_clamped_to_it() {
    let b = breaker(BreakerConfig {
        window: WindowKind::Count(20),
        ..Default::default() // minimum 100
    });
    assert_eq!(b.config().minimum_calls, 20);
    calls(&b, 20, 10);
    assert_eq!(
        b.state(),
        State::Open,
        "10 of 20, with the minimum clamped to 20"
    );
}
