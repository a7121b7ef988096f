//! The gradient controller of Envoy's adaptive concurrency filter.

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::random::{Random, SplitMix};
use tokio::time::Instant;

use crate::{Algorithm, Estimates, Sample};

/// [`EnvoyGradient`]'s settings. Defaults are Envoy's
/// (`envoy.extensions.filters.http.adaptive_concurrency.v3`), except the
/// two intervals, which Envoy requires and leaves without a default: they
/// take the values of Envoy's documentation example.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct EnvoyGradientConfig {
    /// Which quantile of a window's RTTs stands for the window, in `[0, 1]`
    /// (`sample_aggregate_percentile`). Default 0.5 (the median).
    pub percentile: f64,
    /// How often the limit is recalculated from the RTTs of the window
    /// that just ended (`concurrency_update_interval`). Default 100 ms
    /// [Envoy: required; its docs' example].
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub update_interval: Duration,
    /// The highest the limit goes (`max_concurrency_limit`). Default 1,000.
    pub max_limit: u32,
    /// How often the minRTT is measured again (`min_rtt_calc_params.interval`),
    /// before jitter. Default 60 s [Envoy: required; its docs' example].
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_rtt_interval: Duration,
    /// RTTs that make one minRTT measurement (`request_count`). Default 50.
    pub min_rtt_requests: u32,
    /// The next minRTT measurement starts after `interval × [1, 1 + jitter)`
    /// (`jitter`), so that a fleet does not measure in step. Default 0.15.
    pub jitter: f64,
    /// The limit while the minRTT is measured, and the lowest it goes
    /// (`min_concurrency`). Default 3.
    pub min_limit: u32,
    /// Latency the controller tolerates above the minRTT before it cuts the
    /// limit, as a fraction of the minRTT (`buffer`). Default 0.25.
    pub buffer: f64,
    /// Seed of the jitter (deterministic runs). Default 0.
    pub seed: u64,
}

impl Default for EnvoyGradientConfig {
    fn default() -> Self {
        Self {
            percentile: 0.5,
            update_interval: Duration::from_millis(100),
            max_limit: 1_000,
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_requests: 50,
            jitter: 0.15,
            min_limit: 3,
            buffer: 0.25,
            seed: 0,
        }
    }
}

/// How many windows in a row may end at the minimum limit before the
/// minRTT is measured again at once (Envoy's constant: a minRTT that has
/// become too low would otherwise pin the limit at the minimum until the
/// next scheduled measurement).
const MIN_LIMIT_STREAK: u32 = 5;

/// Envoy's gradient controller: the limit follows the ratio of the minimum
/// RTT (plus a buffer) to the RTT of the last window, and the minimum RTT
/// is measured periodically with the limit pinned low.
///
/// - **minRTT measurement.** The controller starts in one, and enters one
///   every `min_rtt_interval` (jittered): the limit is pinned to
///   `min_limit`, the RTTs of requests *admitted* from then on are
///   collected, and when `min_rtt_requests` have finished, the minRTT is
///   their `percentile` quantile and the limit goes back to where it was.
///   With only `min_limit` requests in flight there is no queue, so this is
///   the service's no-load latency.
/// - **Every `update_interval`** outside a measurement, if the window that
///   ended has samples: `sample = percentile quantile of its RTTs`,
///   `gradient = clamp((minRTT × (1 + buffer)) / sample, 0.5, 2)`,
///   `limit = limit × gradient`, and then `limit + √limit` (the burst
///   headroom), truncated and clamped to `[min_limit, max_limit]`. An
///   empty window changes nothing.
/// - After 5 updates in a row that leave the limit at
///   `min_limit`, a new minRTT measurement starts at once.
///
/// Requests admitted before the latest measurement began are not sampled.
/// This core is driven by samples: a window ends at the first sample after
/// its end (Envoy runs a timer; with no sample in between there is nothing
/// to compute either way). Quantiles are exact over the window's RTTs
/// (Envoy uses an approximate histogram); a window keeps one
/// `Duration` per finished request, in a buffer reused between windows.
#[derive(Debug)]
pub struct EnvoyGradient {
    config: EnvoyGradientConfig,
    limit: u32,
    min_rtt: Option<Duration>,
    latest: Option<Duration>,
    /// The limit to restore after a minRTT measurement; `Some` during one.
    deferred: Option<u32>,
    /// Start of the latest minRTT measurement (requests admitted before it
    /// are not sampled). `None` until the first sample sets the clock.
    epoch: Option<Instant>,
    window_end: Option<Instant>,
    next_min_rtt: Option<Instant>,
    min_streak: u32,
    samples: Vec<Duration>,
    rng: SplitMix,
}

impl EnvoyGradient {
    /// An Envoy-style gradient controller, starting with a minRTT
    /// measurement (limit `min_limit`).
    ///
    /// # Errors
    /// [`ConfigError`] for a percentile, jitter or buffer outside `[0, 1]`,
    /// a zero interval or request count, or `min_limit` outside
    /// `1..=max_limit`.
    pub fn new(config: EnvoyGradientConfig) -> Result<Self, ConfigError> {
        floodwall_core::config::check_duration("update_interval", config.update_interval)?;
        floodwall_core::config::check_duration("min_rtt_interval", config.min_rtt_interval)?;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        if !unit(config.percentile) {
            return Err(ConfigError::new("percentile", "must be in [0, 1]"));
        }
        if !unit(config.jitter) {
            return Err(ConfigError::new("jitter", "must be in [0, 1]"));
        }
        if !unit(config.buffer) {
            return Err(ConfigError::new("buffer", "must be in [0, 1]"));
        }
        if config.update_interval.is_zero() {
            return Err(ConfigError::new("update_interval", "must be above zero"));
        }
        if config.min_rtt_interval.is_zero() {
            return Err(ConfigError::new("min_rtt_interval", "must be above zero"));
        }
        if config.min_rtt_requests == 0 {
            return Err(ConfigError::new("min_rtt_requests", "must be at least 1"));
        }
        if config.min_limit == 0 || config.min_limit > config.max_limit {
            return Err(ConfigError::new(
                "min_limit",
                "must be between 1 and max_limit",
            ));
        }
        Ok(Self {
            limit: config.min_limit,
            min_rtt: None,
            latest: None,
            deferred: Some(config.min_limit),
            epoch: None,
            window_end: None,
            next_min_rtt: None,
            min_streak: 0,
            samples: Vec::new(),
            rng: SplitMix::new(config.seed),
            config,
        })
    }

    /// The measured minRTT (the controller's no-load latency), once known.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether a minRTT measurement is under way (the limit is pinned).
    pub fn measuring_min_rtt(&self) -> bool {
        self.deferred.is_some()
    }

    fn quantile(&mut self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let n = self.samples.len();
        let rank = ((self.config.percentile * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (_, q, _) = self.samples.select_nth_unstable(rank);
        let q = *q;
        self.samples.clear();
        Some(q)
    }

    /// Envoy's `applyJitter`: `interval + [0, ⌈interval × jitter⌉)`.
    fn jittered(&self, interval: Duration) -> Duration {
        let range = interval.mul_f64(self.config.jitter);
        if range.is_zero() {
            return interval;
        }
        interval + range.mul_f64(self.rng.next_f64())
    }

    fn set_limit(&mut self, limit: u32) {
        let min = self.config.min_limit;
        if self.deferred.is_none() && self.limit == min && limit == min {
            self.min_streak += 1;
        } else {
            self.min_streak = 0;
        }
        self.limit = limit;
    }

    fn enter_min_rtt_window(&mut self, now: Instant) {
        self.deferred = Some(self.limit);
        self.min_streak = 0;
        self.limit = self.config.min_limit;
        self.samples.clear();
        self.epoch = Some(now);
    }

    fn close_sample_window(&mut self) {
        let Some(sample) = self.quantile() else {
            return;
        };
        self.latest = Some(sample);
        let min_rtt = self.min_rtt.unwrap_or(sample).as_secs_f64();
        let buffered = min_rtt * (1.0 + self.config.buffer);
        let gradient = (buffered / sample.as_secs_f64().max(1e-9)).clamp(0.5, 2.0);
        let limit = f64::from(self.limit) * gradient;
        let fresh =
            ((limit + limit.sqrt()) as u32).clamp(self.config.min_limit, self.config.max_limit);
        self.set_limit(fresh);
    }
}

impl Algorithm for EnvoyGradient {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn estimates(&self) -> Estimates {
        Estimates {
            baseline: self.min_rtt,
            latest: self.latest,
        }
    }

    fn update(&mut self, now: Instant, sample: &Sample) -> u32 {
        let epoch = *self.epoch.get_or_insert(now - sample.rtt);
        if let Some(restore) = self.deferred {
            // Measuring the minRTT: only requests admitted since it began.
            if now - sample.rtt < epoch {
                return self.limit;
            }
            self.samples.push(sample.rtt);
            if self.samples.len() >= self.config.min_rtt_requests as usize {
                self.min_rtt = self.quantile();
                // Restored while still "in the window", as Envoy does: the
                // restore never counts toward the minimum-limit streak.
                self.set_limit(restore);
                self.deferred = None;
                self.next_min_rtt = Some(now + self.jittered(self.config.min_rtt_interval));
                self.window_end = Some(now + self.config.update_interval);
            }
            return self.limit;
        }
        if let Some(end) = self.window_end
            && now >= end
        {
            self.close_sample_window();
            self.window_end = Some(now + self.config.update_interval);
        }
        let due = self.next_min_rtt.is_some_and(|at| now >= at);
        if due || self.min_streak >= MIN_LIMIT_STREAK {
            self.enter_min_rtt_window(now);
            return self.limit;
        }
        if now - sample.rtt >= epoch {
            self.samples.push(sample.rtt);
        }
        self.limit
    }
}

impl crate::Reconfigure for EnvoyGradient {
    type Config = EnvoyGradientConfig;

    /// Applies `config` (validated as [`EnvoyGradient::new`] validates), keeping
    /// the limit it has, clamped to the new bounds, and its RTT estimates.
    fn reconfigure(&mut self, config: EnvoyGradientConfig) -> Result<(), ConfigError> {
        EnvoyGradient::new(config)?;
        self.limit = self.limit.clamp(config.min_limit, config.max_limit);
        self.config = config;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ms, sample};

    /// Feeds `n` samples of `rtt`, finishing at `at`.
    fn feed(e: &mut EnvoyGradient, at: Instant, rtt: Duration, n: u32) -> u32 {
        let mut limit = e.limit();
        for _ in 0..n {
            limit = e.update(at, &sample(rtt));
        }
        limit
    }

    fn controller() -> EnvoyGradient {
        EnvoyGradient::new(EnvoyGradientConfig {
            min_rtt_requests: 4,
            jitter: 0.0,
            ..EnvoyGradientConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn starts_by_measuring_the_min_rtt_with_the_limit_pinned_then_restores_it() {
        let mut e = controller();
        let t0 = Instant::now();
        assert!(e.measuring_min_rtt());
        assert_eq!(e.limit(), 3);
        // Median of 10, 10, 12, 30 ms with the ceil rank rule: rank ⌈0.5 × 4⌉ = 2 → 10 ms.
        for rtt in [ms(30), ms(10), ms(12), ms(10)] {
            e.update(t0 + ms(40), &sample(rtt));
        }
        assert!(!e.measuring_min_rtt());
        assert_eq!(e.min_rtt(), Some(ms(10)));
        assert_eq!(e.limit(), 3, "restored to the limit before: 3");
    }

    #[test]
    fn each_window_applies_the_buffered_gradient_and_the_square_root_headroom() {
        let mut e = controller();
        let t0 = Instant::now();
        feed(&mut e, t0 + ms(10), ms(10), 4); // minRTT 10 ms; window ends at 110 ms
        feed(&mut e, t0 + ms(50), ms(10), 3);
        // Window closes: gradient = 12.5 / 10 = 1.25 → 3.75; + √3.75 = 5.69 → 5.
        assert_eq!(e.update(t0 + ms(110), &sample(ms(10))), 5);
        feed(&mut e, t0 + ms(150), ms(50), 5);
        // The window [110, 210) holds 10, 50 × 5: median 50 → gradient
        // max(0.5, 12.5 / 50) = 0.5 → 2.5 + 1.58 = 4.08 → 4.
        assert_eq!(e.update(t0 + ms(210), &sample(ms(50))), 4);
        // Fast again: 12.5 / 10 → at most × 2: 4 × 1.25 = 5 + 2.24 = 7.
        feed(&mut e, t0 + ms(250), ms(10), 5);
        assert_eq!(e.update(t0 + ms(310), &sample(ms(10))), 7);
        assert_eq!(e.estimates().latest, Some(ms(10)));
    }

    #[test]
    fn the_gradient_is_clamped_to_two_and_the_limit_to_the_max() {
        let mut e = EnvoyGradient::new(EnvoyGradientConfig {
            min_rtt_requests: 1,
            max_limit: 20,
            jitter: 0.0,
            ..EnvoyGradientConfig::default()
        })
        .unwrap();
        let t0 = Instant::now();
        e.update(t0 + ms(100), &sample(ms(100))); // minRTT 100 ms
        e.update(t0 + ms(150), &sample(ms(1))); // 125 / 1 → gradient 2
        // 3 × 2 = 6 + √6 = 8.45 → 8.
        assert_eq!(e.update(t0 + ms(200), &sample(ms(1))), 8);
        e.update(t0 + ms(250), &sample(ms(1)));
        // 8 × 2 = 16 + 4 = 20 (the max).
        assert_eq!(e.update(t0 + ms(300), &sample(ms(1))), 20);
        e.update(t0 + ms(350), &sample(ms(1)));
        assert_eq!(e.update(t0 + ms(400), &sample(ms(1))), 20);
    }

    #[test]
    fn a_new_measurement_starts_after_the_interval_and_ignores_older_requests() {
        let mut e = EnvoyGradient::new(EnvoyGradientConfig {
            min_rtt_requests: 2,
            min_rtt_interval: Duration::from_secs(1),
            jitter: 0.0,
            ..EnvoyGradientConfig::default()
        })
        .unwrap();
        let t0 = Instant::now();
        feed(&mut e, t0 + ms(10), ms(10), 2);
        assert!(!e.measuring_min_rtt());
        feed(&mut e, t0 + ms(50), ms(10), 2);
        let before = e.update(t0 + ms(110), &sample(ms(10)));
        // At 1.01 s the next measurement begins: pinned to 3.
        assert_eq!(e.update(t0 + ms(1_010), &sample(ms(10))), 3);
        assert!(e.measuring_min_rtt());
        // A request admitted before the measurement (started at 0.99 s) is not sampled.
        e.update(t0 + ms(1_020), &sample(ms(30)));
        assert!(e.measuring_min_rtt());
        e.update(t0 + ms(1_020), &sample(ms(8)));
        e.update(t0 + ms(1_030), &sample(ms(15)));
        assert!(!e.measuring_min_rtt());
        assert_eq!(
            e.min_rtt(),
            Some(ms(8)),
            "median of 8 and 15 (rank ⌈0.5 × 2⌉ = 1)"
        );
        // At 1.01 s the window [110 ms, 1.01 s) closed first (10 ms:
        // 5 × 1.25 = 6.25 + 2.5 = 8.75 → 8), then the measurement pinned 3;
        // its end restores 8.
        assert_eq!(before, 5);
        assert_eq!(e.limit(), 8, "restored");
    }

    #[test]
    fn five_windows_in_a_row_at_the_minimum_start_a_measurement_at_once() {
        let mut e = controller();
        let t0 = Instant::now();
        feed(&mut e, t0 + ms(1), ms(1), 4); // minRTT 1 ms: far too low
        let mut at = t0 + ms(1);
        let mut windows = 0;
        while !e.measuring_min_rtt() {
            at += ms(100);
            feed(&mut e, at, ms(50), 2);
            windows += 1;
            assert!(windows < 20, "no early measurement");
        }
        // Window 1 is empty (no change); windows 2 to 6 each leave the
        // limit at the minimum it already was: the fifth starts a measurement.
        assert_eq!(windows, 6);
    }

    #[test]
    fn empty_windows_change_nothing_and_bad_settings_are_refused() {
        let mut e = controller();
        let t0 = Instant::now();
        feed(&mut e, t0 + ms(10), ms(10), 4);
        // The next sample comes long after: the window that ended was empty.
        assert_eq!(e.update(t0 + ms(900), &sample(ms(10))), 3);
        let d = EnvoyGradientConfig::default();
        let bad = |c| EnvoyGradient::new(c).unwrap_err().field();
        assert_eq!(bad(EnvoyGradientConfig { buffer: 1.5, ..d }), "buffer");
        assert_eq!(
            bad(EnvoyGradientConfig {
                percentile: -0.1,
                ..d
            }),
            "percentile"
        );
        assert_eq!(bad(EnvoyGradientConfig { min_limit: 0, ..d }), "min_limit");
        assert_eq!(
            bad(EnvoyGradientConfig {
                update_interval: Duration::ZERO,
                ..d
            }),
            "update_interval"
        );
    }
}
