//! An open-loop load generator on tokio's clock.
//!
//! Open loop: request `i` starts at its scheduled instant whatever happened
//! to the requests before it, as independent users behave; an overloaded
//! server cannot slow the offered load down. Each request is handed the
//! instant it was *scheduled* for, and latency is measured from that
//! instant, so if the generator itself falls behind (in real time, on a
//! busy machine) the delay is charged to the request instead of being
//! hidden (no coordinated omission).
//!
//! The generator only reads `tokio::time`, so the same code runs in virtual
//! time (a paused current-thread runtime: deterministic, instant) and in
//! real time (HTTP over loopback).

use std::future::Future;
use std::time::Duration;

use floodwall::core::random::SplitMix;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// When requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Evenly spaced, `rate` per second.
    Constant {
        /// Requests per second.
        rate: f64,
    },
    /// A Poisson process of `rate` per second (exponential gaps), drawn
    /// from a seeded generator: the same seed gives the same schedule.
    Poisson {
        /// Mean requests per second.
        rate: f64,
        /// The seed of the gaps.
        seed: u64,
    },
}

impl Arrivals {
    /// The mean rate, per second.
    pub fn rate(&self) -> f64 {
        match *self {
            Arrivals::Constant { rate } | Arrivals::Poisson { rate, .. } => rate,
        }
    }

    /// The offsets from the start of every arrival in `[0, duration)`.
    /// Empty if the rate is not a positive finite number.
    pub fn offsets(&self, duration: Duration) -> Vec<Duration> {
        let rate = self.rate();
        if !(rate.is_finite() && rate > 0.0) {
            return Vec::new();
        }
        let rng = match *self {
            Arrivals::Poisson { seed, .. } => Some(SplitMix::new(seed)),
            Arrivals::Constant { .. } => None,
        };
        let end = duration.as_secs_f64();
        let mut out = Vec::with_capacity((rate * end) as usize + 1);
        let mut t = 0.0_f64;
        while t < end {
            out.push(Duration::from_secs_f64(t));
            t = match &rng {
                // u in (0, 1]: -ln(u) is finite.
                Some(rng) => {
                    let u = 1.0 - (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    t - u.ln() / rate
                }
                // From the index, so that rounding does not accumulate.
                None => out.len() as f64 / rate,
            };
        }
        out
    }
}

/// Starts `request(i, scheduled)` on its own task at each scheduled instant
/// of `arrivals` over `duration` from now, never waiting for earlier
/// requests, and returns their handles in order.
///
/// `scheduled` is the instant the request was due; measure latency from
/// it (see the module docs).
pub async fn open_loop<F, Fut>(
    arrivals: Arrivals,
    duration: Duration,
    mut request: F,
) -> Vec<JoinHandle<Fut::Output>>
where
    F: FnMut(usize, Instant) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let start = Instant::now();
    let offsets = arrivals.offsets(duration);
    let mut handles = Vec::with_capacity(offsets.len());
    for (i, offset) in offsets.into_iter().enumerate() {
        let due = start + offset;
        if Instant::now() < due {
            sleep_until(due).await;
        }
        handles.push(tokio::spawn(request(i, due)));
    }
    handles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_poisson_schedules() {
        let c = Arrivals::Constant { rate: 100.0 }.offsets(Duration::from_secs(1));
        assert_eq!(c.len(), 100);
        assert_eq!(c[1], Duration::from_millis(10));
        let p = Arrivals::Poisson {
            rate: 1000.0,
            seed: 7,
        };
        let a = p.offsets(Duration::from_secs(10));
        assert_eq!(a, p.offsets(Duration::from_secs(10)), "seeded");
        assert!((a.len() as f64 - 10_000.0).abs() < 400.0, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            Arrivals::Constant { rate: f64::NAN }
                .offsets(Duration::from_secs(1))
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_start_on_schedule_without_waiting_for_each_other() {
        let start = Instant::now();
        let handles = open_loop(
            Arrivals::Constant { rate: 10.0 },
            Duration::from_secs(1),
            |i, due| async move {
                // Each request takes far longer than the gap between them.
                tokio::time::sleep(Duration::from_secs(5)).await;
                (i, due - start)
            },
        )
        .await;
        // All ten were started before the first one finished.
        assert_eq!(Instant::now() - start, Duration::from_millis(900));
        for (n, h) in handles.into_iter().enumerate() {
            let (i, offset) = h.await.unwrap();
            assert_eq!(i, n);
            assert_eq!(offset, Duration::from_millis(100) * n as u32);
        }
    }
}
