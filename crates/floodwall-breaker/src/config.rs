use std::time::Duration;

pub use floodwall_core::ConfigError;
use floodwall_core::config::check_duration;

/// Which calls the closed state's failure and slow-call rates cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum WindowKind {
    /// The last N calls, exactly (a ring of N records).
    Count(u32),
    /// The calls of the last N seconds (one-second buckets).
    Time(u32),
}

/// Open durations that grow on repeated opens: the `k`-th consecutive open
/// (counting from 0) lasts `open_duration · multiplier^k`, at most `max`,
/// then spread by ±`jitter` (a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Growth {
    /// How much longer each repeated open lasts. At least 1.
    pub multiplier: f64,
    /// The longest open duration.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max: Duration,
    /// A random spread of ± this fraction, so that many clients do not probe
    /// at once. In `[0, 1)`.
    pub jitter: f64,
}

/// A circuit breaker's configuration. The defaults are resilience4j's
/// `CircuitBreakerConfig` defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BreakerConfig {
    /// The closed state's window. Default: the last 100 calls.
    pub window: WindowKind,
    /// No decision on rates before the window holds this many calls (for a
    /// count window, at most its size: a larger value is clamped to it, as
    /// resilience4j does). Default 100.
    pub minimum_calls: u32,
    /// Whether the failure and slow-call rates can open the breaker. Default
    /// true; [`consecutive`](Self::consecutive) turns them off.
    pub rates: bool,
    /// Opens when failures are at least this percentage of the window's
    /// calls. Default 50.
    pub failure_rate_threshold: f64,
    /// Opens when slow calls are at least this percentage. Default 100.
    pub slow_call_rate_threshold: f64,
    /// A call slower than this (strictly longer) is slow. Default 60 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub slow_call_duration: Duration,
    /// Whether to time calls at all. Default true; off saves two clock reads
    /// per call and disables the slow-call rate.
    pub detect_slow_calls: bool,
    /// How long the breaker stays open before probing. Default 60 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub open_duration: Duration,
    /// Growth of the open duration on repeated opens. Default: fixed.
    pub growth: Option<Growth>,
    /// Probes allowed in the half-open state (concurrently and in all),
    /// decided on their failure rate once all have finished. Default 10.
    pub half_open_calls: u32,
    /// Also open after this many failures in a row. Default: off.
    pub consecutive_failures: Option<u32>,
    /// After closing, admit a fraction of traffic growing linearly from
    /// [`ramp_start`](Self::ramp_start) to 1 over this long. Default: off.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ramp: Option<Duration>,
    /// The fraction admitted when a ramp starts. Default 0.1.
    pub ramp_start: f64,
    /// Move from open to half-open on a timer when the open duration ends,
    /// not on the next call (resilience4j's
    /// `automaticTransitionFromOpenToHalfOpenEnabled`): the state is right
    /// without traffic, for dashboards and health checks. The layer spawns
    /// one Tokio task for it (built inside a runtime). Default off.
    pub automatic_half_open: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count(100),
            minimum_calls: 100,
            rates: true,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            detect_slow_calls: true,
            open_duration: Duration::from_secs(60),
            growth: None,
            half_open_calls: 10,
            consecutive_failures: None,
            ramp: None,
            ramp_start: 0.1,
            automatic_half_open: false,
        }
    }
}

impl BreakerConfig {
    /// A breaker for interactive traffic: the last 20 calls, opening from
    /// 10 calls at 50 % failures, 10 s open growing to 2 min with 20 %
    /// jitter, 5 probes, and a 10 s ramp after closing.
    pub fn responsive() -> Self {
        Self {
            window: WindowKind::Count(20),
            minimum_calls: 10,
            open_duration: Duration::from_secs(10),
            growth: Some(Growth {
                multiplier: 2.0,
                max: Duration::from_secs(120),
                jitter: 0.2,
            }),
            half_open_calls: 5,
            ramp: Some(Duration::from_secs(10)),
            ..Self::default()
        }
    }

    /// A breaker that opens after `n` failures in a row and ignores rates.
    pub fn consecutive(n: u32) -> Self {
        Self {
            consecutive_failures: Some(n),
            rates: false,
            ..Self::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            WindowKind::Count(0) | WindowKind::Time(0) => {
                return Err(ConfigError::new(
                    "window",
                    "must cover at least 1 call or second",
                ));
            }
            WindowKind::Count(n) if n > 1_000_000 => {
                return Err(ConfigError::new(
                    "window",
                    "may hold at most 1,000,000 calls",
                ));
            }
            WindowKind::Time(n) if n > 86_400 => {
                return Err(ConfigError::new("window", "may cover at most a day"));
            }
            _ => {}
        }
        let percent = |v: f64| (0.0..=100.0).contains(&v) && v > 0.0;
        if !percent(self.failure_rate_threshold) {
            return Err(ConfigError::new(
                "failure_rate_threshold",
                "must be in (0, 100]",
            ));
        }
        if !percent(self.slow_call_rate_threshold) {
            return Err(ConfigError::new(
                "slow_call_rate_threshold",
                "must be in (0, 100]",
            ));
        }
        if self.half_open_calls == 0 {
            return Err(ConfigError::new("half_open_calls", "must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if let Some(g) = self.growth {
            if !(g.multiplier.is_finite() && g.multiplier >= 1.0) {
                return Err(ConfigError::new(
                    "growth.multiplier",
                    "must be finite and at least 1",
                ));
            }
            if !(0.0..1.0).contains(&g.jitter) {
                return Err(ConfigError::new("growth.jitter", "must be in [0, 1)"));
            }
        }
        if !(0.0..=1.0).contains(&self.ramp_start) {
            return Err(ConfigError::new("ramp_start", "must be in [0, 1]"));
        }
        check_duration("open_duration", self.open_duration)?;
        if let Some(g) = self.growth {
            check_duration("growth.max", g.max)?;
        }
        check_duration("slow_call_duration", self.slow_call_duration)?;
        if self.growth.is_some_and(|g| g.max < self.open_duration) {
            return Err(ConfigError::new(
                "growth.max",
                "must be at least open_duration",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if self.detect_slow_calls && self.slow_call_duration.is_zero() {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be longer than zero",
            ));
        }
        if let Some(ramp) = self.ramp {
            check_duration("ramp", ramp)?;
            if ramp.is_zero() {
                return Err(ConfigError::new("ramp", "must be longer than zero"));
            }
        }
        Ok(())
    }
}
