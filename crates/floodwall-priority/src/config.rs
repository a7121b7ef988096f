use std::time::Duration;

pub use floodwall_core::ConfigError;

/// The admission controller's knobs (Zhou et al., "Overload Control for Scaling WeChat Microservices", SoCC 2018). The
/// defaults are DAGOR's: a window of 1 s or 2000 requests, overload at an
/// average queuing time above 20 ms, α = 5 %, β = 1 %.
///
/// ```
/// use std::time::Duration;
/// use floodwall_priority::AdmissionConfig;
///
/// let config = AdmissionConfig { threshold: Duration::from_millis(50), ..Default::default() };
/// config.validate()?;
/// assert!(AdmissionConfig { alpha: 1.5, ..Default::default() }.validate().is_err());
/// # Ok::<(), floodwall_priority::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AdmissionConfig {
    /// The longest a window lasts (default 1 s).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// A window also closes once this many requests arrived (default 2000;
    /// at most [`MAX_WINDOW_REQUESTS`](Self::MAX_WINDOW_REQUESTS)).
    pub window_requests: u32,
    /// Overloaded iff the window's average queuing time is above this
    /// (default 20 ms; at most [`MAX_THRESHOLD`](Self::MAX_THRESHOLD)).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub threshold: Duration,
    /// α: the fraction of last window's admitted requests to shed when
    /// overloaded (default 0.05).
    pub alpha: f64,
    /// β: the fraction of last window's arrivals to admit on top of the
    /// admitted ones when not overloaded (default 0.01).
    pub beta: f64,
}

impl AdmissionConfig {
    /// The largest [`window_requests`](Self::window_requests).
    pub const MAX_WINDOW_REQUESTS: u32 = 500_000;
    /// The largest [`threshold`](Self::threshold); queuing samples are
    /// clamped to it, which never changes a decision.
    pub const MAX_THRESHOLD: Duration = Duration::from_secs(16);

    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field: a zero window or window size, a window size
    /// above [`MAX_WINDOW_REQUESTS`](Self::MAX_WINDOW_REQUESTS), a threshold
    /// above [`MAX_THRESHOLD`](Self::MAX_THRESHOLD), α outside `(0, 1)` or β
    /// outside `(0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        floodwall_core::config::check_duration("window", self.window)?;
        floodwall_core::config::check_duration("threshold", self.threshold)?;
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be above zero"));
        }
        if self.window.as_nanos() >= u128::from(u64::MAX / 4) {
            return Err(ConfigError::new("window", "is too long"));
        }
        if self.window_requests == 0 {
            return Err(ConfigError::new("window_requests", "must be at least 1"));
        }
        if self.window_requests > Self::MAX_WINDOW_REQUESTS {
            return Err(ConfigError::new(
                "window_requests",
                "must be at most 500000",
            ));
        }
        if self.threshold > Self::MAX_THRESHOLD {
            return Err(ConfigError::new("threshold", "must be at most 16s"));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(ConfigError::new(
                "alpha",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            return Err(ConfigError::new("beta", "must be above 0 and at most 1"));
        }
        Ok(())
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            window_requests: 2000,
            threshold: Duration::from_millis(20),
            alpha: 0.05,
            beta: 0.01,
        }
    }
}
