//! A [`HedgeLayer`]'s configuration: how many attempts a call may make,
//! when each next hedge is sent ([`HedgeDelay`]) and the budget hedges
//! draw on.

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::config::check_duration;
use floodwall_throttle::BudgetConfig;

#[cfg(doc)]
use floodwall_throttle::RetryBudget;

use super::MAX_ATTEMPTS;
#[cfg(doc)]
use super::{HedgeBuilder, HedgeLayer};

/// When the next hedge is sent after an attempt starts.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum HedgeDelay {
    /// A fixed delay: A6's `hedgingDelay`.
    Fixed(#[cfg_attr(feature = "serde", serde(with = "humantime_serde"))] Duration),
    /// The `percentile` (in `(0, 1]`) of the attempts' latencies over the
    /// last full `period`, as tower's `Hedge` reads it; while that period
    /// held fewer than `min_samples` latencies, calls are not hedged.
    Percentile {
        /// The quantile, in `(0, 1]`: 0.95 for p95.
        percentile: f64,
        /// The fewest latencies a period needs for its percentile to be
        /// used.
        min_samples: u32,
        /// The period latencies are gathered over.
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        period: Duration,
    },
}

impl Default for HedgeDelay {
    /// The p95 of the last 10 s, once they hold 100 latencies.
    fn default() -> Self {
        Self::Percentile {
            percentile: 0.95,
            min_samples: 100,
            period: Duration::from_secs(10),
        }
    }
}

/// A [`HedgeLayer`]'s configuration (gRPC A6 hedging policy).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HedgeConfig {
    /// Attempts per call, the first included: 2 to [`MAX_ATTEMPTS`].
    /// Default 2.
    pub max_attempts: u32,
    /// When each next hedge is sent. Default [`HedgeDelay::default`].
    pub delay: HedgeDelay,
    /// The longest server pushback honoured: a longer one stops hedging for
    /// the call. Default 30 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_pushback: Duration,
    /// The budget this layer makes for itself, unless the builder is given
    /// one to share with retry layers ([`HedgeBuilder::budget`]).
    pub budget: BudgetConfig,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            delay: HedgeDelay::default(),
            max_pushback: Duration::from_secs(30),
            budget: BudgetConfig::default(),
        }
    }
}

impl HedgeConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for `max_attempts` outside `2..=5`, a zero or
    /// out-of-range delay or period, a percentile outside `(0, 1]`, or a
    /// budget [`RetryBudget::new`] refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(
                ConfigError::new("max_attempts", "must be in 2..=5 (gRPC A6)")
                    .with_value(self.max_attempts),
            );
        }
        check_duration("max_pushback", self.max_pushback)?;
        match self.delay {
            HedgeDelay::Fixed(d) => check_duration("delay", d)?,
            HedgeDelay::Percentile {
                percentile, period, ..
            } => {
                if !(percentile > 0.0 && percentile <= 1.0) {
                    return Err(ConfigError::new("delay.percentile", "must be in (0, 1]")
                        .with_value(percentile));
                }
                check_duration("delay.period", period)?;
                if period.is_zero() {
                    return Err(ConfigError::new("delay.period", "must be above zero"));
                }
            }
        }
        self.budget.build().map(drop)
    }
}
