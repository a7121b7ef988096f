//! Netflix's `WindowedLimit`: one sample per window instead of one per request.

use std::time::Duration;

use floodwall_core::ConfigError;
use tokio::time::Instant;

use crate::{Algorithm, Estimates, Sample};

/// [`Windowed`]'s settings. Defaults are Netflix `WindowedLimit`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct WindowConfig {
    /// The shortest window (at least 100 ms, as Netflix requires). A window
    /// lasts twice its lowest RTT, within `[min_window, max_window]`.
    /// Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_window: Duration,
    /// The longest window. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_window: Duration,
    /// Samples a window needs to count (at least 10). Default 10.
    pub min_samples: u32,
    /// Samples faster than this are left out (a request refused or failed
    /// before any real work says nothing about latency). Default 100 µs.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_rtt: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            min_window: Duration::from_secs(1),
            max_window: Duration::from_secs(1),
            min_samples: 10,
            min_rtt: Duration::from_micros(100),
        }
    }
}

impl WindowConfig {
    /// Windows of exactly `window` (about one RTT is the classic choice:
    /// TCP Vegas adjusts once per round trip).
    pub fn every(window: Duration) -> Self {
        Self {
            min_window: window,
            max_window: window,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    min: Option<Duration>,
    sum: Duration,
    count: u32,
    max_inflight: u32,
    dropped: bool,
}

const EMPTY: Window = Window {
    min: None,
    sum: Duration::ZERO,
    count: 0,
    max_inflight: 0,
    dropped: false,
};

/// Feeds an algorithm one aggregate sample per window, as Netflix's
/// `WindowedLimit` (with its default average window): the window's mean
/// RTT, the most requests in flight any of its requests saw, and whether
/// any was dropped.
///
/// A per-request algorithm at thousands of requests per second moves the
/// limit thousands of times per round trip, long before the effect of one
/// change can show in the latency; it overshoots and swings. Windowed, it
/// moves about once per round trip, as TCP Vegas does.
///
/// A window ends at the first sample that finishes after its end; the next
/// one then lasts `clamp(2 × its lowest RTT, min_window, max_window)`. A
/// window with fewer than `min_samples` samples is dropped unread.
#[derive(Debug)]
pub struct Windowed<A> {
    inner: A,
    config: WindowConfig,
    window: Window,
    next_update: Option<Instant>,
}

impl<A: Algorithm> Windowed<A> {
    /// `inner`, fed one sample per window.
    ///
    /// # Errors
    /// [`ConfigError`] for a window under 100 ms, `min_window >
    /// max_window`, or fewer than 10 samples per window (Netflix's bounds).
    pub fn new(inner: A, config: WindowConfig) -> Result<Self, ConfigError> {
        floodwall_core::config::check_duration("min_window", config.min_window)?;
        floodwall_core::config::check_duration("max_window", config.max_window)?;
        floodwall_core::config::check_duration("min_rtt", config.min_rtt)?;
        if config.min_window < Duration::from_millis(100) {
            return Err(ConfigError::new("min_window", "must be at least 100 ms"));
        }
        if config.max_window < config.min_window {
            return Err(ConfigError::new(
                "max_window",
                "must be at least min_window",
            ));
        }
        if config.min_samples < 10 {
            return Err(ConfigError::new("min_samples", "must be at least 10"));
        }
        Ok(Self {
            inner,
            config,
            window: EMPTY,
            next_update: None,
        })
    }

    /// The algorithm inside.
    pub fn get_ref(&self) -> &A {
        &self.inner
    }
}

impl<A: Algorithm> Algorithm for Windowed<A> {
    fn limit(&self) -> u32 {
        self.inner.limit()
    }

    fn estimates(&self) -> Estimates {
        self.inner.estimates()
    }

    fn update(&mut self, now: Instant, sample: &Sample) -> u32 {
        if sample.rtt < self.config.min_rtt {
            return self.inner.limit();
        }
        let w = &mut self.window;
        w.min = Some(w.min.map_or(sample.rtt, |m| m.min(sample.rtt)));
        w.sum += sample.rtt;
        w.count += 1;
        w.max_inflight = w.max_inflight.max(sample.inflight);
        w.dropped |= sample.dropped;
        if self.next_update.is_some_and(|at| now <= at) {
            return self.inner.limit();
        }
        let done = std::mem::replace(&mut self.window, EMPTY);
        let min = done.min.unwrap_or(Duration::ZERO);
        self.next_update =
            Some(now + (min * 2).clamp(self.config.min_window, self.config.max_window));
        if done.count >= self.config.min_samples {
            let aggregate = Sample {
                rtt: done.sum / done.count,
                inflight: done.max_inflight,
                dropped: done.dropped,
            };
            return self.inner.update(now, &aggregate);
        }
        self.inner.limit()
    }
}

impl<A: crate::Reconfigure> crate::Reconfigure for Windowed<A> {
    type Config = A::Config;

    /// Reconfigures the inner algorithm (see its own rule); the window it
    /// is fed by is kept.
    fn reconfigure(&mut self, config: A::Config) -> Result<(), ConfigError> {
        self.inner.reconfigure(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is fed.
    #[derive(Debug, Default)]
    struct Record(Vec<Sample>);

    impl Algorithm for Record {
        fn limit(&self) -> u32 {
            self.0.len() as u32 + 1
        }
        fn update(&mut self, _now: Instant, sample: &Sample) -> u32 {
            self.0.push(*sample);
            self.limit()
        }
    }

    fn s(ms: u64, inflight: u32, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(ms),
            inflight,
            dropped,
        }
    }

    /// A `Windowed` of 100 ms windows over an algorithm that records what it
    /// is fed.
    fn recorder() -> Windowed<Record> {
        Windowed::new(
            Record::default(),
            WindowConfig::every(Duration::from_millis(100)),
        )
        .unwrap()
    }

    #[test]
    fn one_aggregate_per_window_with_the_mean_the_max_in_flight_and_any_drop() {
        let mut w = recorder();
        let t0 = Instant::now();
        // The first sample opens the clock: a window of one is too small.
        w.update(t0, &s(10, 1, false));
        for i in 0..10u64 {
            w.update(
                t0 + Duration::from_millis(10 * i),
                &s(10 + i, 3 + i as u32 % 4, i == 4),
            );
        }
        assert!(w.get_ref().0.is_empty(), "the window has not ended");
        w.update(t0 + Duration::from_millis(101), &s(30, 2, false));
        // 10..=19 and 30: mean 175 / 11 ms, max in flight 6, one dropped.
        let fed = &w.get_ref().0;
        assert_eq!(fed.len(), 1);
        assert_eq!(fed[0].rtt, Duration::from_nanos(175_000_000 / 11));
        assert_eq!((fed[0].inflight, fed[0].dropped), (6, true));
    }

    #[test]
    fn small_windows_and_tiny_rtts_are_left_out_and_bounds_are_checked() {
        let mut w = recorder();
        let t0 = Instant::now();
        w.update(t0, &s(10, 1, false));
        for i in 1..5 {
            w.update(t0 + Duration::from_millis(30 * i), &s(10, 1, false));
        }
        w.update(
            t0 + Duration::from_millis(400),
            &Sample {
                rtt: Duration::from_micros(50),
                inflight: 1,
                dropped: false,
            },
        );
        assert!(w.get_ref().0.is_empty(), "4 samples, then a 50 µs one");
        let bad = |c| Windowed::new(Record::default(), c).unwrap_err().field();
        assert_eq!(
            bad(WindowConfig::every(Duration::from_millis(50))),
            "min_window"
        );
        assert_eq!(
            bad(WindowConfig {
                min_samples: 5,
                ..WindowConfig::default()
            }),
            "min_samples"
        );
    }
}
