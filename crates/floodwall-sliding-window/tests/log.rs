//! The exact log: boundary exactness, brute-force equivalence, and never
//! more than the limit in any window.

use std::time::Duration;

use floodwall_sliding_window::{Denied, KeyedSlidingLog, SlidingLog, Window};
use proptest::prelude::*;
use tokio::time::{Instant, advance};

#[tokio::test(start_paused = true)]
async fn an_admission_leaves_the_window_exactly_w_later() {
    let w = Duration::from_secs(10);
    let log = SlidingLog::new(Window::new(1, w).unwrap());
    log.try_acquire(Instant::now(), 1).unwrap();
    advance(w - Duration::from_nanos(1)).await;
    assert_eq!(
        log.try_acquire(Instant::now(), 1),
        Err(Denied::RateLimited {
            retry_after: Duration::from_nanos(1)
        }),
        "one nanosecond before, the admission is still inside (t − W, t]"
    );
    assert_eq!(log.count(Instant::now()), 1);
    advance(Duration::from_nanos(1)).await;
    assert_eq!(log.count(Instant::now()), 0);
    assert_eq!(
        log.try_acquire(Instant::now(), 1),
        Ok(()),
        "at exactly W it is out"
    );
}

#[tokio::test(start_paused = true)]
async fn weighted_requests_need_room_for_all_their_units() {
    let log = SlidingLog::new(Window::new(5, Duration::from_secs(1)).unwrap());
    let t0 = Instant::now();
    log.try_acquire(t0, 2).unwrap();
    advance(Duration::from_millis(300)).await;
    log.try_acquire(Instant::now(), 2).unwrap();
    // Two free; three are asked for: the oldest two must leave, at 1 s.
    assert_eq!(
        log.try_acquire(Instant::now(), 3),
        Err(Denied::RateLimited {
            retry_after: Duration::from_millis(700)
        })
    );
    assert_eq!(log.try_acquire(Instant::now(), 1), Ok(()));
    assert_eq!(
        log.try_acquire(Instant::now(), 6),
        Err(Denied::ExceedsBurst {
            requested: 6,
            burst: 5
        })
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_logs_are_independent_and_idle_keys_go() {
    let logs = KeyedSlidingLog::new(Window::new(2, Duration::from_secs(1)).unwrap(), 100);
    let now = Instant::now();
    for key in [1u32, 2] {
        logs.try_acquire(&key, now, 2).unwrap();
        assert!(logs.try_acquire(&key, now, 1).is_err());
        assert_eq!(logs.remaining(&key, now), 0);
    }
    assert_eq!(logs.remaining(&3, now), 2);
    advance(Duration::from_secs(1)).await;
    logs.sweep(Instant::now());
    assert!(logs.keys().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The log decides exactly as a brute-force count over every admission,
    /// its retry-after is exact, and no window of length W ever holds more
    /// than the limit.
    #[test]
    fn exact_against_brute_force(
        limit in 1u32..=12,
        window_ms in 1u64..=1000,
        trace in prop::collection::vec((0u64..200_000_000, 1u32..=3), 1..300),
    ) {
        let window = window_ms * 1_000_000;
        let epoch = Instant::now();
        let log = SlidingLog::with_epoch(
            Window::new(limit, Duration::from_nanos(window)).unwrap(),
            epoch,
        );
        let mut admitted: Vec<u64> = Vec::new();
        let in_window = |admitted: &[u64], t: u64| {
            admitted.iter().filter(|&&a| a + window > t && a <= t).count() as u32
        };
        let mut t = 0u64;
        for (dt, n) in trace {
            t += dt;
            let brute_admits = n <= limit && in_window(&admitted, t) + n <= limit;
            match log.try_acquire(epoch + Duration::from_nanos(t), n) {
                Ok(()) => {
                    prop_assert!(brute_admits, "admitted at {} ns", t);
                    admitted.extend(std::iter::repeat_n(t, n as usize));
                }
                Err(Denied::RateLimited { retry_after }) => {
                    prop_assert!(!brute_admits, "refused at {} ns", t);
                    let r = retry_after.as_nanos() as u64;
                    prop_assert!(in_window(&admitted, t + r) + n <= limit);
                    prop_assert!(in_window(&admitted, t + r - 1) + n > limit);
                }
                Err(Denied::ExceedsBurst { .. }) => prop_assert!(n > limit),
            }
        }
        for &end in &admitted {
            prop_assert!(in_window(&admitted, end) <= limit);
        }
    }
}
