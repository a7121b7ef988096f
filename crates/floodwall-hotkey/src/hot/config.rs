//! A [`HotKeyLayer`]'s configuration: the sketch, what makes a key hot,
//! how often the hot set is read and each hot key's own quota.

use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::config::check_duration;
use floodwall_ratelimit::Quota;

use crate::TopKConfig;

#[cfg(doc)]
use super::HotKeyLayer;

/// A [`HotKeyLayer`]'s configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HotKeyConfig {
    /// The sketch counting the keys; its `k` bounds the hot set. Default
    /// `k` 20, the rest [`TopKConfig::default`] (64 KiB, halved every
    /// 500 ms).
    pub topk: TopKConfig,
    /// A key among the top `k` is hot while its estimate is at least this
    /// (arrivals over about the last two fading periods). Default 50.
    pub min_count: u32,
    /// How often the hot set is read from the sketch; a key that crosses
    /// `min_count` makes it read at once (at most once a millisecond).
    /// Default 100 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub refresh: Duration,
    /// Each hot key's own quota (a hot room cannot take the whole
    /// service); `None`: hot keys are only marked. Default `None`.
    pub hot_limit: Option<Quota>,
}

impl Default for HotKeyConfig {
    fn default() -> Self {
        Self {
            topk: TopKConfig {
                k: 20,
                ..TopKConfig::default()
            },
            min_count: 50,
            refresh: Duration::from_millis(100),
            hot_limit: None,
        }
    }
}

impl HotKeyConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// As [`TopKConfig::validate`]; a `min_count` of 0; a zero or
    /// out-of-range `refresh`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.topk.validate()?;
        if self.min_count == 0 {
            return Err(ConfigError::new("min_count", "must be at least 1"));
        }
        check_duration("refresh", self.refresh)?;
        if self.refresh.is_zero() {
            return Err(ConfigError::new("refresh", "must be above zero"));
        }
        Ok(())
    }
}
