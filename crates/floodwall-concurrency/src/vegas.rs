//! Vegas: TCP Vegas' queue estimate, applied to requests.

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::random::{Random, SplitMix};
use tokio::time::Instant;

use crate::{Algorithm, Estimates, Sample, log10_root};

/// [`Vegas`]'s settings. Defaults are Netflix `VegasLimit`'s; α, β, the
/// threshold and the steps are its default functions of the limit `L`
/// (see [`log10_root`]): α = 3·f(L), β = 6·f(L), threshold = f(L),
/// increase = L + f(L), decrease = L − f(L).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct VegasConfig {
    /// The limit to start from. Default 20.
    pub initial_limit: u32,
    /// The highest the limit goes. Default 1,000.
    pub max_limit: u32,
    /// How much of each new estimate replaces the old, in `(0, 1]`.
    /// Default 1 (no smoothing).
    pub smoothing: f64,
    /// Re-measure the no-load RTT about every `probe_multiplier × limit`
    /// samples (times a random factor in `[0.5, 1)`). Default 30.
    pub probe_multiplier: u32,
    /// Seed of the probe jitter (deterministic runs). Default 0.
    pub seed: u64,
}

impl Default for VegasConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            max_limit: 1_000,
            smoothing: 1.0,
            probe_multiplier: 30,
            seed: 0,
        }
    }
}

/// The no-load RTT `RTT_noload` is the smallest RTT seen (re-measured by a
/// periodic probe). Per sample, the queue the limit builds is estimated as
/// `queue = ⌈limit × (1 − RTT_noload / RTT)⌉`; then, with the functions of
/// [`VegasConfig`]:
///
/// - a drop: `limit = decrease(limit)`;
/// - fewer than half the limit in flight: no change (app-limited);
/// - `queue ≤ threshold`: `limit + β` (no queuing: grow fast);
/// - `queue < α`: `increase(limit)`;
/// - `queue > β`: `decrease(limit)`;
/// - otherwise no change.
///
/// The result is clamped to `[1, max_limit]` and blended by `smoothing`. A
/// sample that sets a new minimum, or that is a probe, only updates
/// `RTT_noload`.
#[derive(Debug)]
pub struct Vegas {
    config: VegasConfig,
    estimate: f64,
    rtt_noload: Option<Duration>,
    latest: Option<Duration>,
    probe_count: u64,
    probe_jitter: f64,
    rng: SplitMix,
}

impl Vegas {
    /// A Vegas limit.
    ///
    /// # Errors
    /// [`ConfigError`] for a smoothing outside `(0, 1]`, a zero probe
    /// multiplier, or an initial limit outside `1..=max_limit`.
    pub fn new(config: VegasConfig) -> Result<Self, ConfigError> {
        if !(config.smoothing > 0.0 && config.smoothing <= 1.0) {
            return Err(ConfigError::new("smoothing", "must be in (0, 1]"));
        }
        if config.probe_multiplier == 0 {
            return Err(ConfigError::new("probe_multiplier", "must be at least 1"));
        }
        if config.initial_limit == 0 || config.initial_limit > config.max_limit {
            return Err(ConfigError::new(
                "initial_limit",
                "must be between 1 and max_limit",
            ));
        }
        let rng = SplitMix::new(config.seed);
        let probe_jitter = jitter(&rng);
        Ok(Self {
            estimate: f64::from(config.initial_limit),
            rtt_noload: None,
            latest: None,
            probe_count: 0,
            probe_jitter,
            rng,
            config,
        })
    }

    /// The no-load RTT, once measured.
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload
    }

    fn should_probe(&self) -> bool {
        self.probe_jitter * f64::from(self.config.probe_multiplier) * self.estimate
            <= self.probe_count as f64
    }
}

/// A factor in `[0.5, 1)`.
fn jitter(rng: &SplitMix) -> f64 {
    0.5 + 0.5 * rng.next_f64()
}

impl Algorithm for Vegas {
    fn limit(&self) -> u32 {
        self.estimate as u32
    }

    fn estimates(&self) -> Estimates {
        Estimates {
            baseline: self.rtt_noload,
            latest: self.latest,
        }
    }

    fn update(&mut self, _now: Instant, sample: &Sample) -> u32 {
        self.latest = Some(sample.rtt);
        let rtt = sample.rtt.max(Duration::from_nanos(1));
        self.probe_count += 1;
        if self.should_probe() {
            self.probe_jitter = jitter(&self.rng);
            self.probe_count = 0;
            self.rtt_noload = Some(rtt);
            return self.limit();
        }
        let noload = match self.rtt_noload {
            Some(min) if rtt >= min => min,
            _ => {
                self.rtt_noload = Some(rtt);
                return self.limit();
            }
        };
        let limit = self.estimate;
        let l = self.estimate as u32;
        let f = f64::from(log10_root(l));
        let queue = (limit * (1.0 - noload.as_secs_f64() / rtt.as_secs_f64())).ceil();
        let fresh = if sample.dropped {
            limit - f
        } else if f64::from(sample.inflight) * 2.0 < limit {
            return self.limit();
        } else {
            let (alpha, beta, threshold) = (3.0 * f, 6.0 * f, f);
            if queue <= threshold {
                limit + beta
            } else if queue < alpha {
                limit + f
            } else if queue > beta {
                limit - f
            } else {
                return self.limit();
            }
        };
        let clamped = fresh.clamp(1.0, f64::from(self.config.max_limit));
        let s = self.config.smoothing;
        self.estimate = (1.0 - s) * limit + s * clamped;
        self.limit()
    }
}

impl crate::Reconfigure for Vegas {
    type Config = VegasConfig;

    /// Applies `config` (validated as [`Vegas::new`] validates), keeping
    /// the limit it has, clamped to the new bounds, and its RTT estimates.
    fn reconfigure(&mut self, config: VegasConfig) -> Result<(), ConfigError> {
        Vegas::new(config)?;
        self.estimate = self.estimate.clamp(1.0, f64::from(config.max_limit));
        self.config = config;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(us: u64, inflight: u32, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_micros(us),
            inflight,
            dropped,
        }
    }

    /// A Vegas that never probes within a test.
    fn vegas(initial: u32) -> Vegas {
        Vegas::new(VegasConfig {
            initial_limit: initial,
            probe_multiplier: 1_000_000,
            ..VegasConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_first_sample_and_every_new_minimum_only_set_the_noload_rtt() {
        let mut v = vegas(20);
        assert_eq!(v.update(Instant::now(), &sample(10_000, 20, false)), 20);
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(10)));
        assert_eq!(
            v.update(Instant::now(), &sample(8_000, 20, true)),
            20,
            "a new minimum, even dropped"
        );
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(8)));
    }

    #[test]
    fn no_queue_grows_by_beta_and_a_long_queue_shrinks_by_one_step() {
        let mut v = vegas(20);
        v.update(Instant::now(), &sample(10_000, 20, false));
        // RTT = no-load: queue 0 ≤ threshold 1 → 20 + β (6·1) = 26.
        assert_eq!(v.update(Instant::now(), &sample(10_000, 20, false)), 26);
        // RTT 20 ms: queue = ⌈26 × 0.5⌉ = 13 > β = 6 → 26 − 1 = 25.
        assert_eq!(v.update(Instant::now(), &sample(20_000, 26, false)), 25);
    }

    #[test]
    fn a_small_queue_grows_by_one_step_and_the_sweet_spot_holds() {
        let mut v = vegas(20);
        v.update(Instant::now(), &sample(10_000, 20, false));
        // queue = ⌈20 × (1 − 10/10.5)⌉ = ⌈0.95⌉ = 1 ≤ 1: + β.
        assert_eq!(v.update(Instant::now(), &sample(10_500, 20, false)), 26);
        // queue = ⌈26 × (1 − 10/11)⌉ = ⌈2.36⌉ = 3, not < α = 3, not > β = 6:
        // the sweet spot.
        assert_eq!(v.update(Instant::now(), &sample(11_000, 26, false)), 26);
        // queue = ⌈26 × (1 − 10/10.8)⌉ = ⌈1.93⌉ = 2 < α: + f = 27.
        assert_eq!(v.update(Instant::now(), &sample(10_800, 26, false)), 27);
    }

    #[test]
    fn a_drop_shrinks_and_an_app_limited_sample_does_not_grow() {
        let mut v = vegas(20);
        v.update(Instant::now(), &sample(10_000, 20, false));
        assert_eq!(
            v.update(Instant::now(), &sample(10_000, 9, false)),
            20,
            "9 < 20/2"
        );
        assert_eq!(
            v.update(Instant::now(), &sample(10_000, 1, true)),
            19,
            "drop: − f"
        );
    }

    #[test]
    fn probes_re_measure_the_noload_rtt_after_about_multiplier_times_limit_samples() {
        let mut v = Vegas::new(VegasConfig {
            initial_limit: 10,
            probe_multiplier: 2,
            seed: 7,
            ..VegasConfig::default()
        })
        .unwrap();
        v.update(Instant::now(), &sample(10_000, 1, false));
        // Latency rose for good: within 2 × 10 samples a probe adopts it.
        let mut adopted = None;
        for i in 1..=20 {
            v.update(Instant::now(), &sample(30_000, 1, false));
            if v.rtt_noload() == Some(Duration::from_millis(30)) {
                adopted = Some(i);
                break;
            }
        }
        let i = adopted.expect("a probe within 20 samples");
        assert!((9..=20).contains(&i), "probe after {i} samples");
    }

    #[test]
    fn bad_settings_are_refused() {
        let d = VegasConfig::default();
        let bad = |c| Vegas::new(c).unwrap_err().field();
        assert_eq!(
            bad(VegasConfig {
                smoothing: 1.5,
                ..d
            }),
            "smoothing"
        );
        assert_eq!(
            bad(VegasConfig {
                probe_multiplier: 0,
                ..d
            }),
            "probe_multiplier"
        );
        assert_eq!(
            bad(VegasConfig {
                initial_limit: 2_000,
                ..d
            }),
            "initial_limit"
        );
    }
}
