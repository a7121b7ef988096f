//! Gradient2: the ratio of a long-term RTT average to the latest RTT.

use std::time::Duration;

use floodwall_core::ConfigError;
use tokio::time::Instant;

use crate::{Algorithm, Estimates, Sample};

/// [`Gradient2`]'s settings. Defaults are Netflix `Gradient2Limit`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Gradient2Config {
    /// The limit to start from. Default 20.
    pub initial_limit: u32,
    /// The lowest the limit goes. Default 20.
    pub min_limit: u32,
    /// The highest the limit goes. Default 200.
    pub max_limit: u32,
    /// How much of each new estimate replaces the old, in `(0, 1]`.
    /// Default 0.2.
    pub smoothing: f64,
    /// The headroom added to `gradient × limit`: how far the limit may grow
    /// while latency stays flat. Default 4.
    pub queue_size: u32,
    /// The long-term average's window, in samples (an exponential average
    /// with factor `2 / (window + 1)`, after a plain mean of the first 10).
    /// Default 600.
    pub long_window: u32,
}

impl Default for Gradient2Config {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            smoothing: 0.2,
            queue_size: 4,
            long_window: 600,
        }
    }
}

/// The plain mean of the first samples, then an exponential average.
#[derive(Debug, Clone, Copy)]
struct ExpAvg {
    value: f64,
    sum: f64,
    count: u32,
    warmup: u32,
    factor: f64,
}

impl ExpAvg {
    fn new(window: u32, warmup: u32) -> Self {
        Self {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (f64::from(window) + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

/// Per sample, with `short` the sample's RTT and `long` the long-term
/// average including it:
///
/// - if `long / short > 2` (latency fell back after a long overload), `long`
///   is cut by 10 % so the baseline catches up;
/// - if fewer than half the limit are in flight, nothing else changes;
/// - else `gradient = clamp(long / short, 0.5, 1)`,
///   `new = gradient × limit + queue_size`, blended as
///   `limit × (1 − smoothing) + new × smoothing` and clamped to
///   `[min_limit, max_limit]`.
///
/// Drops are not a signal of their own: their latency is.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    config: Gradient2Config,
    estimate: f64,
    long: ExpAvg,
    latest: Option<Duration>,
}

impl Gradient2 {
    /// A Gradient2 limit.
    ///
    /// # Errors
    /// [`ConfigError`] for a smoothing outside `(0, 1]`, a zero window or
    /// `min_limit`, `min_limit > max_limit`, or an initial limit outside
    /// `[min_limit, max_limit]`.
    pub fn new(config: Gradient2Config) -> Result<Self, ConfigError> {
        if !(config.smoothing > 0.0 && config.smoothing <= 1.0) {
            return Err(ConfigError::new("smoothing", "must be in (0, 1]"));
        }
        if config.long_window == 0 {
            return Err(ConfigError::new("long_window", "must be at least 1"));
        }
        if config.min_limit == 0 || config.min_limit > config.max_limit {
            return Err(ConfigError::new(
                "min_limit",
                "must be between 1 and max_limit",
            ));
        }
        if !(config.min_limit..=config.max_limit).contains(&config.initial_limit) {
            return Err(ConfigError::new(
                "initial_limit",
                "must be between min_limit and max_limit",
            ));
        }
        Ok(Self {
            estimate: f64::from(config.initial_limit),
            long: ExpAvg::new(config.long_window, 10),
            latest: None,
            config,
        })
    }

    /// The long-term average RTT, in seconds.
    pub fn long_rtt(&self) -> f64 {
        self.long.value
    }
}

impl Algorithm for Gradient2 {
    fn limit(&self) -> u32 {
        self.estimate as u32
    }

    fn estimates(&self) -> Estimates {
        Estimates {
            baseline: (self.long.count > 0).then(|| Duration::from_secs_f64(self.long.value)),
            latest: self.latest,
        }
    }

    fn update(&mut self, _now: Instant, sample: &Sample) -> u32 {
        self.latest = Some(sample.rtt);
        let short = sample.rtt.as_secs_f64().max(1e-9);
        let mut long = self.long.add(short);
        if long / short > 2.0 {
            self.long.value *= 0.9;
            long = self.long.value;
        }
        if f64::from(sample.inflight) < self.estimate / 2.0 {
            return self.limit();
        }
        let c = &self.config;
        let gradient = (long / short).clamp(0.5, 1.0);
        let fresh = self.estimate * gradient + f64::from(c.queue_size);
        let blended = self.estimate * (1.0 - c.smoothing) + fresh * c.smoothing;
        self.estimate = blended.clamp(f64::from(c.min_limit), f64::from(c.max_limit));
        self.limit()
    }
}

impl crate::Reconfigure for Gradient2 {
    type Config = Gradient2Config;

    /// Applies `config` (validated as [`Gradient2::new`] validates), keeping
    /// the limit it has, clamped to the new bounds, and its RTT estimates.
    fn reconfigure(&mut self, config: Gradient2Config) -> Result<(), ConfigError> {
        Gradient2::new(config)?;
        self.estimate = self
            .estimate
            .clamp(f64::from(config.min_limit), f64::from(config.max_limit));
        self.config = config;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(ms: u64, inflight: u32) -> Sample {
        Sample {
            rtt: Duration::from_millis(ms),
            inflight,
            dropped: false,
        }
    }

    #[test]
    fn flat_latency_grows_the_limit_by_the_smoothed_headroom() {
        let mut g = Gradient2::new(Gradient2Config::default()).unwrap();
        // gradient 1: new = 20 + 4 = 24; blended 20·0.8 + 24·0.2 = 20.8.
        assert_eq!(g.update(Instant::now(), &sample(10, 20)), 20);
        assert!((g.estimate - 20.8).abs() < 1e-9);
        // 20.8·0.8 + (20.8 + 4)·0.2 = 21.6
        g.update(Instant::now(), &sample(10, 20));
        assert!((g.estimate - 21.6).abs() < 1e-9);
    }

    #[test]
    fn rising_latency_cuts_the_limit_by_at_most_half_per_step_before_smoothing() {
        let mut g = Gradient2::new(Gradient2Config {
            initial_limit: 100,
            ..Gradient2Config::default()
        })
        .unwrap();
        // Warm-up mean of 10 samples at 10 ms.
        for _ in 0..9 {
            g.update(Instant::now(), &sample(10, 0));
        }
        // The 10th sample is 40 ms: long = (9·10 + 40)/10 = 13 ms,
        // gradient = 13/40 = 0.325 → clamped to 0.5; new = 50 + 4 = 54;
        // blended = 100·0.8 + 54·0.2 = 90.8.
        assert_eq!(g.update(Instant::now(), &sample(40, 100)), 90);
        assert!((g.estimate - 90.8).abs() < 1e-9);
    }

    #[test]
    fn an_app_limited_sample_changes_nothing_but_the_average() {
        let mut g = Gradient2::new(Gradient2Config::default()).unwrap();
        assert_eq!(g.update(Instant::now(), &sample(10, 9)), 20, "9 < 20/2");
        assert!((g.estimate - 20.0).abs() < 1e-9);
        assert!((g.long_rtt() - 0.010).abs() < 1e-12);
    }

    #[test]
    fn the_baseline_is_cut_when_latency_falls_far_below_it() {
        let mut g = Gradient2::new(Gradient2Config::default()).unwrap();
        for _ in 0..10 {
            g.update(Instant::now(), &sample(100, 0));
        }
        // long after adding 10 ms: 100·(1 − f) + 10·f with f = 2/601, then
        // long/short ≈ 9.7 > 2 → × 0.9.
        let f = 2.0 / 601.0;
        g.update(Instant::now(), &sample(10, 0));
        let expected = (0.100 * (1.0 - f) + 0.010 * f) * 0.9;
        assert!((g.long_rtt() - expected).abs() < 1e-12);
    }

    #[test]
    fn limits_are_clamped_and_bad_settings_refused() {
        let mut g = Gradient2::new(Gradient2Config {
            initial_limit: 200,
            ..Gradient2Config::default()
        })
        .unwrap();
        for _ in 0..50 {
            g.update(Instant::now(), &sample(10, 200));
        }
        assert_eq!(g.limit(), 200);
        let d = Gradient2Config::default();
        let bad = |c| Gradient2::new(c).unwrap_err().field();
        assert_eq!(
            bad(Gradient2Config {
                smoothing: 0.0,
                ..d
            }),
            "smoothing"
        );
        assert_eq!(
            bad(Gradient2Config {
                long_window: 0,
                ..d
            }),
            "long_window"
        );
        assert_eq!(
            bad(Gradient2Config {
                min_limit: 300,
                ..d
            }),
            "min_limit"
        );
        assert_eq!(
            bad(Gradient2Config {
                initial_limit: 5,
                ..d
            }),
            "initial_limit"
        );
    }
}
