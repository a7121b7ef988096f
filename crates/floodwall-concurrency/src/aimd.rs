//! AIMD: additive increase, multiplicative decrease.

use std::time::Duration;

use floodwall_core::ConfigError;
use tokio::time::Instant;

use crate::{Algorithm, Sample};

/// [`Aimd`]'s settings. Defaults are Netflix `AIMDLimit`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AimdConfig {
    /// The limit to start from. Default 10.
    pub initial_limit: u32,
    /// The factor a drop multiplies the limit by, in `[0.5, 1)`. Default 0.9.
    pub backoff_ratio: f64,
    /// A sample slower than this counts as a drop. Default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub timeout: Duration,
    /// The highest the limit goes. Default 1,000 [convention: `AIMDLimit`
    /// has no cap; one keeps a long calm spell from growing it without
    /// bound].
    pub max_limit: u32,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            initial_limit: 10,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
            max_limit: 1_000,
        }
    }
}

/// Loss-based: while at least half the limit is in use and requests
/// succeed within the timeout, `limit + 1` per sample; on a drop (or a
/// sample slower than the timeout), `max(1, min(limit − 1, ⌊limit ×
/// backoff⌋))`. With less than half the limit in use, nothing changes (the
/// limit is not what holds the traffic back).
#[derive(Debug, Clone)]
pub struct Aimd {
    config: AimdConfig,
    limit: u32,
}

impl Aimd {
    /// An AIMD limit.
    ///
    /// # Errors
    /// [`ConfigError`] for a backoff ratio outside `[0.5, 1)`, a zero
    /// timeout, or an initial limit outside `1..=max_limit`.
    pub fn new(config: AimdConfig) -> Result<Self, ConfigError> {
        floodwall_core::config::check_duration("timeout", config.timeout)?;
        if !(0.5..1.0).contains(&config.backoff_ratio) {
            return Err(ConfigError::new("backoff_ratio", "must be in [0.5, 1)"));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be above zero"));
        }
        if config.initial_limit == 0 || config.initial_limit > config.max_limit {
            return Err(ConfigError::new(
                "initial_limit",
                "must be between 1 and max_limit",
            ));
        }
        Ok(Self {
            limit: config.initial_limit,
            config,
        })
    }
}

impl Algorithm for Aimd {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn update(&mut self, _now: Instant, sample: &Sample) -> u32 {
        let limit = self.limit;
        if sample.dropped || sample.rtt > self.config.timeout {
            let backed = (f64::from(limit) * self.config.backoff_ratio) as u32;
            self.limit = backed.min(limit.saturating_sub(1)).max(1);
        } else if u64::from(sample.inflight) * 2 >= u64::from(limit) {
            self.limit = (limit + 1).min(self.config.max_limit);
        }
        self.limit
    }
}

impl crate::Reconfigure for Aimd {
    type Config = AimdConfig;

    /// Applies `config` (validated as [`Aimd::new`] validates), keeping
    /// the limit it has, clamped to the new bounds, and its RTT estimates.
    fn reconfigure(&mut self, config: AimdConfig) -> Result<(), ConfigError> {
        Aimd::new(config)?;
        self.limit = self.limit.clamp(1, config.max_limit);
        self.config = config;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(inflight: u32, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(10),
            inflight,
            dropped,
        }
    }

    #[test]
    fn grows_by_one_only_while_half_the_limit_is_in_use() {
        let mut a = Aimd::new(AimdConfig::default()).unwrap();
        assert_eq!(
            a.update(Instant::now(), &sample(4, false)),
            10,
            "4 of 10: app-limited"
        );
        assert_eq!(a.update(Instant::now(), &sample(5, false)), 11);
        assert_eq!(a.update(Instant::now(), &sample(6, false)), 12);
    }

    #[test]
    fn backs_off_by_the_ratio_and_at_least_one() {
        let mut a = Aimd::new(AimdConfig {
            initial_limit: 100,
            ..AimdConfig::default()
        })
        .unwrap();
        assert_eq!(a.update(Instant::now(), &sample(1, true)), 90);
        assert_eq!(a.update(Instant::now(), &sample(1, true)), 81);
        let mut small = Aimd::new(AimdConfig {
            initial_limit: 5,
            ..AimdConfig::default()
        })
        .unwrap();
        // ⌊5 × 0.9⌋ = 4; ⌊4 × 0.9⌋ = 3; … never below 1.
        let seen: Vec<u32> = (0..6)
            .map(|_| small.update(Instant::now(), &sample(1, true)))
            .collect();
        assert_eq!(seen, [4, 3, 2, 1, 1, 1]);
    }

    #[test]
    fn a_sample_slower_than_the_timeout_is_a_drop() {
        let mut a = Aimd::new(AimdConfig {
            initial_limit: 20,
            timeout: Duration::from_millis(50),
            ..AimdConfig::default()
        })
        .unwrap();
        let slow = Sample {
            rtt: Duration::from_millis(51),
            inflight: 20,
            dropped: false,
        };
        assert_eq!(a.update(Instant::now(), &slow), 18);
    }

    #[test]
    fn stops_at_the_cap_and_refuses_bad_settings() {
        let mut a = Aimd::new(AimdConfig {
            initial_limit: 3,
            max_limit: 4,
            ..AimdConfig::default()
        })
        .unwrap();
        for _ in 0..5 {
            a.update(Instant::now(), &sample(4, false));
        }
        assert_eq!(a.limit(), 4);
        let bad = |c: AimdConfig| Aimd::new(c).unwrap_err().field();
        let d = AimdConfig::default();
        assert_eq!(
            bad(AimdConfig {
                backoff_ratio: 1.0,
                ..d
            }),
            "backoff_ratio"
        );
        assert_eq!(
            bad(AimdConfig {
                backoff_ratio: 0.4,
                ..d
            }),
            "backoff_ratio"
        );
        assert_eq!(
            bad(AimdConfig {
                timeout: Duration::ZERO,
                ..d
            }),
            "timeout"
        );
        assert_eq!(
            bad(AimdConfig {
                initial_limit: 0,
                ..d
            }),
            "initial_limit"
        );
    }
}
