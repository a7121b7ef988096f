//! A [`BreakerGroup`]'s configuration: every key's breaker and the most
//! keys with one of their own.

use floodwall_core::ConfigError;

use crate::BreakerConfig;

#[cfg(doc)]
use super::BreakerGroup;

/// A [`BreakerGroup`]'s configuration.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BreakerGroupConfig {
    /// Every key's breaker. `automatic_half_open` must be off: a key's
    /// breaker moves to half-open on its next call.
    pub breaker: BreakerConfig,
    /// The most keys with a breaker of their own. Default 1,024.
    pub max_keys: usize,
}

impl Default for BreakerGroupConfig {
    fn default() -> Self {
        Self {
            breaker: BreakerConfig::default(),
            max_keys: 1_024,
        }
    }
}

impl BreakerGroupConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`]; a `max_keys` of 0; an
    /// `automatic_half_open` breaker.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.breaker.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.breaker.automatic_half_open {
            return Err(ConfigError::new(
                "breaker.automatic_half_open",
                "is not supported per key: a key's breaker half-opens on its next call",
            ));
        }
        Ok(())
    }
}
