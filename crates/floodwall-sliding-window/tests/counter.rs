//! The two-window counter: SPECS.md arithmetic under virtual time, a
//! reference model, exact retry-after, and the 2N bound.

use std::collections::HashMap;
use std::time::Duration;

use floodwall_sliding_window::{Denied, KeyedSlidingWindowCounter, SlidingWindowCounter, Window};
use proptest::prelude::*;
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

fn limited(d: Duration) -> Result<(), Denied> {
    Err(Denied::RateLimited { retry_after: d })
}

#[tokio::test(start_paused = true)]
async fn the_estimate_weighs_the_previous_window_by_what_is_left_of_it() {
    let counter = SlidingWindowCounter::new(Window::per_second(10).unwrap());
    let t0 = Instant::now();
    for _ in 0..10 {
        counter.try_acquire(t0, 1).unwrap();
    }
    assert_eq!(counter.estimate(t0), 10.0);
    assert!(
        counter.try_acquire(t0, 1).is_err(),
        "estimate 10 is not below 10"
    );
    advance(Duration::from_millis(1250)).await;
    // prev 10 · (1000 − 250)/1000 + cur 0 = 7.5 < 10: admitted, twice (8.5, 9.5).
    assert_eq!(counter.estimate(Instant::now()), 7.5);
    assert_eq!(counter.remaining(Instant::now()), 3);
    assert_eq!(counter.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(counter.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(counter.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(counter.estimate(Instant::now()), 10.5);
    // 10·(W−e)/W + 3 < 10 needs (W − e) < 700 ms: e > 300 ms, 50 ms from now.
    assert_eq!(
        counter.try_acquire(Instant::now(), 1),
        limited(Duration::from_nanos(50_000_001))
    );
}

#[tokio::test(start_paused = true)]
async fn admitted_iff_the_estimate_is_below_the_limit_before_counting() {
    let counter = SlidingWindowCounter::new(Window::per_second(4).unwrap());
    let t0 = Instant::now();
    for _ in 0..4 {
        counter.try_acquire(t0, 1).unwrap();
    }
    // At e = 500 ms: 4 · 0.5 = 2.0. Two admitted (2.0 < 4, 3.0 < 4), the
    // third sees exactly 4.0 and is refused.
    advance(Duration::from_millis(1500)).await;
    let now = Instant::now();
    assert_eq!(counter.try_acquire(now, 1), Ok(()));
    assert_eq!(counter.try_acquire(now, 1), Ok(()));
    assert!(counter.try_acquire(now, 1).is_err());
    assert_eq!(
        counter.estimate(now),
        4.0,
        "refused requests are not counted"
    );
}

#[tokio::test(start_paused = true)]
async fn two_idle_windows_reset_both_counts() {
    let counter = SlidingWindowCounter::new(Window::per_second(5).unwrap());
    let t0 = Instant::now();
    for _ in 0..5 {
        counter.try_acquire(t0, 1).unwrap();
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        counter.estimate(Instant::now()),
        5.0,
        "one window on: prev = 5, e = 0"
    );
    advance(Duration::from_millis(999)).await;
    assert!(counter.estimate(Instant::now()) > 0.0);
    advance(MS).await;
    assert_eq!(
        counter.estimate(Instant::now()),
        0.0,
        "two windows on: all clear"
    );
    assert_eq!(counter.remaining(Instant::now()), 5);
}

#[tokio::test(start_paused = true)]
async fn weighted_requests_and_exceeds_burst() {
    let counter = SlidingWindowCounter::new(Window::per_second(10).unwrap());
    let now = Instant::now();
    assert_eq!(counter.try_acquire(now, 7), Ok(()));
    // 7 + 4 − 1 = 10 is not below 10. In the next window 7·(W − e)/W + 3 is
    // still 10 at its first instant and below 10 one nanosecond later.
    assert_eq!(
        counter.try_acquire(now, 4),
        limited(Duration::from_secs(1) + Duration::from_nanos(1))
    );
    assert_eq!(counter.try_acquire(now, 3), Ok(()));
    assert_eq!(
        counter.try_acquire(now, 11),
        Err(Denied::ExceedsBurst {
            requested: 11,
            burst: 10
        })
    );
    assert_eq!(counter.try_acquire(now, 0), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn the_fixed_window_forgets_at_each_boundary() {
    let fixed = SlidingWindowCounter::fixed(Window::per_second(3).unwrap());
    assert!(fixed.is_fixed());
    let t0 = Instant::now();
    advance(Duration::from_millis(900)).await;
    for _ in 0..3 {
        fixed.try_acquire(Instant::now(), 1).unwrap();
    }
    assert_eq!(fixed.try_acquire(Instant::now(), 1), limited(100 * MS));
    advance(100 * MS).await;
    for _ in 0..3 {
        fixed.try_acquire(Instant::now(), 1).unwrap();
    }
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(1),
        "a window boundary"
    );
    assert!(fixed.try_acquire(Instant::now(), 1).is_err());
}

/// The word keeps the window index's low 32 bits; a fresh word (index 0)
/// must never look like a word from a later window once the real index is
/// past 2^31.
#[test]
fn fresh_state_after_two_to_the_31_windows_is_empty() {
    let epoch = Instant::now();
    let at = |ns: u64| epoch + Duration::from_nanos(ns);
    let w = Window::new(1, Duration::from_nanos(1)).unwrap();
    let counter = SlidingWindowCounter::with_epoch(w, epoch);
    let late = (1u64 << 31) + 1;
    assert_eq!(counter.try_acquire(at(late), 1), Ok(()));
    assert!(counter.try_acquire(at(late), 1).is_err());
    assert_eq!(
        counter.try_acquire(at(late + 10), 1),
        Ok(()),
        "ten windows later"
    );
    assert_eq!(counter.try_acquire(at(late + 1_000_000), 1), Ok(()));
    let keyed = KeyedSlidingWindowCounter::with_epoch(w, 100, epoch);
    for key in 0..50u32 {
        assert_eq!(keyed.try_acquire(&key, at(late), 1), Ok(()), "key {key}");
    }
    for key in 0..50u32 {
        assert_eq!(
            keyed.try_acquire(&key, at(late + 10), 1),
            Ok(()),
            "key {key}"
        );
    }
    // A 1 ms window at 25 days of uptime (2^31 windows): same story.
    let w = Window::new(100, Duration::from_millis(1)).unwrap();
    let keyed = KeyedSlidingWindowCounter::with_epoch(w, 100, epoch);
    let days_25 = (1u64 << 31) * 1_000_000 + 5;
    assert_eq!(keyed.try_acquire(&1, at(days_25), 100), Ok(()));
    assert!(keyed.try_acquire(&1, at(days_25), 1).is_err());
    assert_eq!(keyed.try_acquire(&1, at(days_25 + 2_000_000), 100), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn keyed_counters_are_independent() {
    let counters = KeyedSlidingWindowCounter::new(Window::per_second(2).unwrap(), 100);
    let now = Instant::now();
    for key in ["a", "b"] {
        counters.try_acquire(&key, now, 2).unwrap();
        assert!(counters.try_acquire(&key, now, 1).is_err());
    }
    assert_eq!(counters.remaining(&"c", now), 2);
    assert_eq!(counters.keys().len(), 2);
    advance(Duration::from_secs(2)).await;
    counters.sweep(Instant::now());
    assert!(counters.keys().is_empty(), "idle for two windows: dropped");
}

/// The counter as SPECS.md writes it, over a map of window → count, in
/// exact integer arithmetic.
struct Reference {
    counts: HashMap<u64, u64>,
    window: u64,
    limit: u64,
    fixed: bool,
}

impl Reference {
    fn admits(&self, t: u64, n: u32) -> bool {
        let (w, e) = (t / self.window, t % self.window);
        let prev = match w.checked_sub(1) {
            Some(p) if !self.fixed => self.counts.get(&p).copied().unwrap_or(0),
            _ => 0,
        };
        let cur = self.counts.get(&w).copied().unwrap_or(0);
        // prev·(W − e)/W + cur + (n − 1) < N
        u128::from(prev) * u128::from(self.window - e)
            + u128::from(cur + u64::from(n) - 1) * u128::from(self.window)
            < u128::from(self.limit) * u128::from(self.window)
    }

    fn admit(&mut self, t: u64, n: u32) {
        *self.counts.entry(t / self.window).or_default() += u64::from(n);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Same decisions as the reference, and every refusal's retry-after is
    /// exact: the reference admits at `t + r` and not at `t + r − 1 ns`.
    #[test]
    fn matches_the_reference_with_exact_retry_after(
        limit in 1u32..=20,
        window_ns in prop_oneof![1u64..=5_000, 1_000_000u64..=2_000_000_000],
        fixed in any::<bool>(),
        start in prop_oneof![Just(0u64), 0u64..(1 << 40)],
        trace in prop::collection::vec((0u64..300_000_000, 1u32..=3), 1..300),
    ) {
        let window = Window::new(limit, Duration::from_nanos(window_ns)).unwrap();
        let epoch = Instant::now();
        let counter = if fixed {
            SlidingWindowCounter::fixed_with_epoch(window, epoch)
        } else {
            SlidingWindowCounter::with_epoch(window, epoch)
        };
        let mut reference = Reference {
            counts: HashMap::new(),
            window: window_ns,
            limit: u64::from(limit),
            fixed,
        };
        let mut t = start;
        for (dt, n) in trace {
            t += dt;
            let now = epoch + Duration::from_nanos(t);
            match counter.try_acquire(now, n) {
                Ok(()) => {
                    prop_assert!(reference.admits(t, n), "admitted at {} ns", t);
                    reference.admit(t, n);
                }
                Err(Denied::RateLimited { retry_after }) => {
                    prop_assert!(!reference.admits(t, n), "refused at {} ns", t);
                    let r = retry_after.as_nanos() as u64;
                    prop_assert!(r > 0);
                    prop_assert!(reference.admits(t + r, n), "not yet admitted {} ns later", r);
                    prop_assert!(!reference.admits(t + r - 1, n), "admitted before {} ns", r);
                }
                Err(Denied::ExceedsBurst { .. }) => prop_assert!(n > limit),
            }
        }
    }

    /// Whatever the arrivals, no span of one window length holds more than
    /// twice the limit.
    #[test]
    fn never_more_than_twice_the_limit_in_any_window(
        limit in 1u32..=20,
        trace in prop::collection::vec(0u64..40_000_000, 1..500),
    ) {
        let window_ns = 100_000_000u64;
        let epoch = Instant::now();
        let counter = SlidingWindowCounter::with_epoch(
            Window::new(limit, Duration::from_nanos(window_ns)).unwrap(),
            epoch,
        );
        let mut admitted = Vec::new();
        let mut t = 0u64;
        for dt in trace {
            t += dt;
            if counter.try_acquire(epoch + Duration::from_nanos(t), 1).is_ok() {
                admitted.push(t);
            }
        }
        let mut first = 0;
        for (last, &end) in admitted.iter().enumerate() {
            while admitted[first] + window_ns <= end {
                first += 1;
            }
            prop_assert!(last - first < 2 * limit as usize, "{} in one window", last - first + 1);
        }
    }
}
