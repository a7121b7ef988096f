//! A [`HeavyKeeper`]'s configuration: `k`, the sketch's size, the decay
//! base and the fading period.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use floodwall_core::ConfigError;

#[cfg(doc)]
use super::HeavyKeeper;

/// A [`HeavyKeeper`]'s configuration (SPECS.md, "HeavyKeeper Top-K").
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TopKConfig {
    /// How many heavy keys are kept. Default 100.
    pub k: usize,
    /// Buckets per row. Default 2,048.
    pub width: usize,
    /// Rows: each key has one bucket per row. Default 4.
    pub depth: usize,
    /// The decay base `b`: a bucket holding another key with count `c`
    /// decays with probability `b^-c`. Default 1.08 (the paper's).
    pub decay: f64,
    /// Every count is halved this often, so heavy means heavy *now*: a key
    /// that stops arriving loses half its weight per period (the period is
    /// the view's half-life; a new key arriving as fast as an old one
    /// overtakes it within two periods). `None`: never. Default 500 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub fade_every: Option<Duration>,
}

impl Default for TopKConfig {
    fn default() -> Self {
        Self {
            k: 100,
            width: 2_048,
            depth: 4,
            decay: 1.08,
            fade_every: Some(Duration::from_millis(500)),
        }
    }
}

impl TopKConfig {
    /// aegis's parameters for `k`: width `1024 · ln k`, depth 4, decay
    /// probability `0.925^c` (base 1/0.925 ≈ 1.081), no fading.
    pub fn aegis(k: usize) -> Self {
        Self {
            k,
            width: ((1024.0 * (k.max(2) as f64).ln()) as usize).max(1),
            depth: 4,
            decay: 1.0 / 0.925,
            fade_every: None,
        }
    }

    /// The sketch's memory: `depth × width` buckets of 8 bytes (the
    /// top-k list adds `k` keys).
    pub fn sketch_bytes(&self) -> usize {
        self.depth * self.width * std::mem::size_of::<AtomicU64>()
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for a `k`, `width` or `depth` of 0 (or a depth over
    /// 16), a decay base not finite and above 1, or a zero fade period.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(ConfigError::new("k", "must be at least 1"));
        }
        if self.width == 0 {
            return Err(ConfigError::new("width", "must be at least 1"));
        }
        if !(1..=16).contains(&self.depth) {
            return Err(ConfigError::new("depth", "must be in 1..=16").with_value(self.depth));
        }
        if !(self.decay.is_finite() && self.decay > 1.0) {
            return Err(
                ConfigError::new("decay", "must be finite and above 1").with_value(self.decay)
            );
        }
        if self.fade_every.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("fade_every", "must be above zero"));
        }
        Ok(())
    }
}
