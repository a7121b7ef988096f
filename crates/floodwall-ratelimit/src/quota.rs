use std::time::Duration;

use floodwall_core::ConfigError;

/// How fast tokens refill and how many the bucket holds.
///
/// A quota is `tokens` per `period` (so fractional rates such as one token
/// every two seconds, 0.5/s, are exact) and a `burst`: the bucket's capacity,
/// which defaults to `tokens`.
///
/// Internally the emission interval `I = period / tokens` is kept in whole
/// nanoseconds, **rounded up**, so the limiter never admits faster than
/// configured (for rates up to 1,000,000/s the rounding changes the rate by
/// less than one part in a thousand; for rates whose interval is a whole
/// number of nanoseconds it is exact).
///
/// ```
/// use std::time::Duration;
/// use floodwall_ratelimit::Quota;
///
/// let api = Quota::per_second(100)?.with_burst(10)?;
/// assert_eq!(api.interval(), Duration::from_millis(10));
/// assert_eq!(api.burst(), 10);
///
/// let slow = Quota::new(1, Duration::from_secs(2))?; // 0.5 per second
/// assert_eq!(slow.interval(), Duration::from_secs(2));
/// assert_eq!(Quota::per_second_f64(0.5)?, slow);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "QuotaSpec"))]
pub struct Quota {
    tokens: u32,
    period: Duration,
    burst: u32,
    interval_ns: u64,
    /// `burst × interval_ns`, the GCRA tolerance (kept: the keyed limiters
    /// read it on every decision).
    tolerance_ns: u64,
}

impl Quota {
    /// `tokens` per `period`, burst `tokens`.
    ///
    /// # Errors
    /// A [`ConfigError`] when `tokens` or `period` is zero, when the rate is
    /// above one token per nanosecond, or when the interval does not fit the
    /// nanosecond clock.
    pub fn new(tokens: u32, period: Duration) -> Result<Self, ConfigError> {
        if tokens == 0 {
            return Err(ZERO_RATE);
        }
        if period.is_zero() {
            return Err(ZERO_PERIOD);
        }
        floodwall_core::config::check_duration("per", period)?;
        let period_ns = u64::try_from(period.as_nanos()).map_err(|_| TOO_SLOW)?;
        if period_ns < u64::from(tokens) {
            return Err(TOO_FAST);
        }
        let interval_ns = period_ns.div_ceil(u64::from(tokens));
        Self {
            tokens,
            period,
            burst: tokens,
            interval_ns,
            tolerance_ns: 0,
        }
        .checked()
    }

    /// `tokens` per second, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_second(tokens: u32) -> Result<Self, ConfigError> {
        Self::new(tokens, Duration::from_secs(1))
    }

    /// `tokens` per minute, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_minute(tokens: u32) -> Result<Self, ConfigError> {
        Self::new(tokens, Duration::from_secs(60))
    }

    /// `tokens` per hour, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_hour(tokens: u32) -> Result<Self, ConfigError> {
        Self::new(tokens, Duration::from_secs(3600))
    }

    /// One token every `interval`, burst 1.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn every(interval: Duration) -> Result<Self, ConfigError> {
        Self::new(1, interval)
    }

    /// A fractional rate in tokens per second, such as `0.5`. The interval is
    /// `1 / rate` seconds, rounded up to whole nanoseconds; the burst is the
    /// rate rounded up (at least 1); the advertised policy is the rate over
    /// the shortest whole-second window that makes it whole, if one of up to
    /// an hour exists, else one token per interval.
    ///
    /// # Errors
    /// A [`ConfigError`] for `rate` when it is zero, negative or not a
    /// number; otherwise as [`Quota::new`].
    pub fn per_second_f64(rate: f64) -> Result<Self, ConfigError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(ZERO_RATE);
        }
        if rate > 1e9 {
            return Err(TOO_FAST);
        }
        // Prefer an exact whole-token-per-whole-second form (0.5 -> 1 per 2 s).
        for secs in 1..=3600u32 {
            let tokens = rate * f64::from(secs);
            if tokens >= 1.0 && tokens <= f64::from(u32::MAX) && tokens.fract() == 0.0 {
                let q = Self::new(tokens as u32, Duration::from_secs(u64::from(secs)))?;
                let burst = (rate.ceil() as u32).max(1);
                return q.with_burst(burst);
            }
        }
        // Round the interval up, never down: the limiter must not admit
        // faster than asked.
        let interval_ns = (1e9 / rate).ceil();
        if interval_ns >= u64::MAX as f64 {
            return Err(TOO_SLOW);
        }
        let q = Self::new(1, Duration::from_nanos((interval_ns as u64).max(1)))?;
        q.with_burst((rate.ceil() as u32).max(1))
    }

    /// The same rate with a different burst (bucket capacity).
    ///
    /// # Errors
    /// A [`ConfigError`] for `burst` when it is 0, and for `per` when
    /// `burst × interval` does not fit the nanosecond clock.
    pub fn with_burst(self, burst: u32) -> Result<Self, ConfigError> {
        if burst == 0 {
            return Err(ZERO_BURST);
        }
        Self { burst, ..self }.checked()
    }

    fn checked(self) -> Result<Self, ConfigError> {
        // `burst × I` is the GCRA tolerance. Capping it (like the wait bound)
        // at ~36 years keeps `TAT + n·I` far from overflow.
        match u64::from(self.burst).checked_mul(self.interval_ns) {
            Some(tolerance_ns) if tolerance_ns <= crate::gcra::MAX_WAIT_NS => Ok(Self {
                tolerance_ns,
                ..self
            }),
            _ => Err(TOO_SLOW),
        }
    }

    /// Tokens per [`period`](Self::period) as configured.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// The period the configured tokens refill over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The bucket's capacity: how many tokens an idle bucket holds.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval `I` (time for one token to refill), rounded up
    /// to whole nanoseconds.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub(crate) fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The GCRA tolerance `burst × I` in nanoseconds.
    pub(crate) fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }
}

/// A quota as configuration data: `{ "rate": 100, "per": "1s", "burst": 20 }`
/// (`per` defaults to one second, `burst` to `rate`), validated as
/// [`Quota::new`] and [`Quota::with_burst`] validate.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaSpec {
    rate: u32,
    #[serde(default = "one_second", with = "humantime_serde")]
    per: Duration,
    #[serde(default)]
    burst: Option<u32>,
}

#[cfg(feature = "serde")]
fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[cfg(feature = "serde")]
impl TryFrom<QuotaSpec> for Quota {
    type Error = ConfigError;

    fn try_from(spec: QuotaSpec) -> Result<Self, ConfigError> {
        let quota = Quota::new(spec.rate, spec.per)?;
        match spec.burst {
            Some(burst) => quota.with_burst(burst),
            None => Ok(quota),
        }
    }
}

const ZERO_RATE: ConfigError =
    ConfigError::new("rate", "must be positive (at least one token per period)");
const ZERO_PERIOD: ConfigError = ConfigError::new("per", "must be longer than zero");
const ZERO_BURST: ConfigError = ConfigError::new("burst", "must be at least 1");
const TOO_FAST: ConfigError = ConfigError::new("rate", "must be at most one token per nanosecond");
const TOO_SLOW: ConfigError = ConfigError::new(
    "per",
    "is too long: the interval, or burst × interval, must fit the clock (about 36 years)",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(Quota::per_second(0), Err(ZERO_RATE));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(ZERO_PERIOD));
        assert_eq!(Quota::per_second(5).unwrap().with_burst(0), Err(ZERO_BURST));
        assert_eq!(Quota::new(10, Duration::from_nanos(5)), Err(TOO_FAST));
        assert_eq!(
            Quota::new(1, Duration::from_secs(u64::MAX))
                .unwrap_err()
                .field(),
            "per"
        );
        assert_eq!(
            Quota::every(Duration::from_secs(86_400 * 365))
                .unwrap()
                .with_burst(u32::MAX),
            Err(TOO_SLOW)
        );
        assert_eq!(Quota::per_second_f64(0.0), Err(ZERO_RATE));
        assert_eq!(Quota::per_second_f64(-1.0), Err(ZERO_RATE));
        assert_eq!(Quota::per_second_f64(f64::NAN), Err(ZERO_RATE));
    }

    #[test]
    fn intervals_round_up() {
        let q = Quota::per_second(3).unwrap();
        assert_eq!(q.interval(), Duration::from_nanos(333_333_334));
        assert_eq!(q.burst(), 3);
        let q = Quota::per_second(100).unwrap().with_burst(10).unwrap();
        assert_eq!(q.interval(), Duration::from_millis(10));
        assert_eq!(q.tolerance_ns(), 100_000_000);
    }

    #[test]
    fn fractional_rates() {
        let half = Quota::per_second_f64(0.5).unwrap();
        assert_eq!(half.tokens(), 1);
        assert_eq!(half.period(), Duration::from_secs(2));
        assert_eq!(half.burst(), 1);
        let q = Quota::per_second_f64(2.5).unwrap();
        assert_eq!(
            (q.tokens(), q.period(), q.burst()),
            (5, Duration::from_secs(2), 3)
        );
        let odd = Quota::per_second_f64(1.0 / 7200.0).unwrap();
        assert_eq!(odd.interval(), Duration::from_secs(7200));
        // pi per second has no whole-second form: 318,309,886.18 ns rounds up.
        let pi = Quota::per_second_f64(std::f64::consts::PI).unwrap();
        assert_eq!(pi.interval(), Duration::from_nanos(318_309_887));
        assert_eq!(pi.burst(), 4);
    }
}
