//! The retry layer's configuration.

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::config::check_duration;

use super::Backoff;
use crate::RetryBudget;

/// A [`RetryLayer`](crate::RetryLayer)'s configuration. With the `serde`
/// feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use floodwall_throttle::RetryConfig;
///
/// let config: RetryConfig = serde_json::from_str(r#"{
///     "max_attempts": 4,
///     "backoff": { "initial": "50ms", "max": "2s", "multiplier": 3 },
///     "budget": { "max_tokens": 20, "token_ratio": 0.2 }
/// }"#).unwrap();
/// assert_eq!(config.backoff.initial, Duration::from_millis(50));
/// assert_eq!(config.max_pushback, Duration::from_secs(30));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RetryConfig {
    /// Attempts per request, the first included; at least 1. Default 3.
    pub max_attempts: u32,
    /// The backoff between attempts. Default 100 ms × 2ⁿ up to 1 s.
    pub backoff: Backoff,
    /// The longest server pushback honoured; a longer one gives up. Default
    /// 30 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_pushback: Duration,
    /// The retry budget this layer makes for itself, unless the builder is
    /// given one to share ([`Builder::budget`](crate::RetryBuilder::budget)).
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_pushback: Duration::from_secs(30),
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for zero attempts, a backoff whose `initial` is zero
    /// or above `max` or whose multiplier is not finite and at least 1, or
    /// a budget [`RetryBudget::new`] refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1").with_value(0));
        }
        let b = &self.backoff;
        check_duration("backoff.max", b.max)?;
        check_duration("max_pushback", self.max_pushback)?;
        if b.initial.is_zero() || b.initial > b.max {
            return Err(
                ConfigError::new("backoff.initial", "must be > 0 and at most backoff.max")
                    .with_value(format_args!("{:?}", b.initial)),
            );
        }
        if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
            return Err(
                ConfigError::new("backoff.multiplier", "must be finite and at least 1")
                    .with_value(b.multiplier),
            );
        }
        self.budget.build().map(drop)
    }
}

/// The retry budget of gRPC proposal A6, as data: see [`RetryBudget::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BudgetConfig {
    /// The budget's size, in `(0, 1000]`. Default 10.
    pub max_tokens: f64,
    /// Tokens a success adds back, at least 0.001. Default 0.1.
    pub token_ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

impl BudgetConfig {
    /// A full budget.
    ///
    /// # Errors
    /// As [`RetryBudget::new`].
    pub fn build(&self) -> Result<RetryBudget, ConfigError> {
        RetryBudget::new(self.max_tokens, self.token_ratio)
    }
}
