use std::fmt;
use std::time::Duration;

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
/// use floodwall_token_bucket::Quota;
///
/// let api = Quota::per_second(100)?.with_burst(10)?;
/// assert_eq!(api.interval(), Duration::from_millis(10));
/// assert_eq!(api.burst(), 10);
///
/// let slow = Quota::new(1, Duration::from_secs(2))?; // 0.5 per second
/// assert_eq!(slow.interval(), Duration::from_secs(2));
/// assert_eq!(Quota::per_second_f64(0.5)?, slow);
/// # Ok::<(), floodwall_token_bucket::QuotaError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    tokens: u32,
    period: Duration,
    burst: u32,
    interval_ns: u64,
}

impl Quota {
    /// `tokens` per `period`, burst `tokens`.
    ///
    /// # Errors
    /// [`QuotaError`] when `tokens` or `period` is zero, when the rate is
    /// above one token per nanosecond, or when the interval does not fit the
    /// nanosecond clock.
    pub fn new(tokens: u32, period: Duration) -> Result<Self, QuotaError> {
        if tokens == 0 {
            return Err(QuotaError::ZeroRate);
        }
        if period.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        let period_ns = u64::try_from(period.as_nanos()).map_err(|_| QuotaError::TooSlow)?;
        if period_ns < u64::from(tokens) {
            return Err(QuotaError::TooFast);
        }
        let interval_ns = period_ns.div_ceil(u64::from(tokens));
        Self {
            tokens,
            period,
            burst: tokens,
            interval_ns,
        }
        .checked()
    }

    /// `tokens` per second, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_second(tokens: u32) -> Result<Self, QuotaError> {
        Self::new(tokens, Duration::from_secs(1))
    }

    /// `tokens` per minute, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_minute(tokens: u32) -> Result<Self, QuotaError> {
        Self::new(tokens, Duration::from_secs(60))
    }

    /// `tokens` per hour, burst `tokens`.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn per_hour(tokens: u32) -> Result<Self, QuotaError> {
        Self::new(tokens, Duration::from_secs(3600))
    }

    /// One token every `interval`, burst 1.
    ///
    /// # Errors
    /// As [`Quota::new`].
    pub fn every(interval: Duration) -> Result<Self, QuotaError> {
        Self::new(1, interval)
    }

    /// A fractional rate in tokens per second, such as `0.5`. The interval is
    /// `1 / rate` seconds, rounded up to whole nanoseconds; the burst is the
    /// rate rounded up (at least 1); the advertised policy is the rate over
    /// the shortest whole-second window that makes it whole, if one of up to
    /// an hour exists, else one token per interval.
    ///
    /// # Errors
    /// [`QuotaError::ZeroRate`] for a rate that is zero, negative or not a
    /// number; otherwise as [`Quota::new`].
    pub fn per_second_f64(rate: f64) -> Result<Self, QuotaError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(QuotaError::ZeroRate);
        }
        if rate > 1e9 {
            return Err(QuotaError::TooFast);
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
            return Err(QuotaError::TooSlow);
        }
        let q = Self::new(1, Duration::from_nanos((interval_ns as u64).max(1)))?;
        q.with_burst((rate.ceil() as u32).max(1))
    }

    /// The same rate with a different burst (bucket capacity).
    ///
    /// # Errors
    /// [`QuotaError::ZeroBurst`] for a burst of 0, [`QuotaError::TooSlow`]
    /// when `burst × interval` does not fit the nanosecond clock.
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Self { burst, ..self }.checked()
    }

    fn checked(self) -> Result<Self, QuotaError> {
        // `burst × I` is the GCRA tolerance. Capping it (like the wait bound)
        // at ~36 years keeps `TAT + n·I` far from overflow.
        match u64::from(self.burst).checked_mul(self.interval_ns) {
            Some(tol) if tol <= crate::gcra::MAX_WAIT_NS => Ok(self),
            _ => Err(QuotaError::TooSlow),
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
        u64::from(self.burst) * self.interval_ns
    }
}

/// Why a [`Quota`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The rate has zero tokens (or a non-positive fractional rate).
    ZeroRate,
    /// The refill period is zero.
    ZeroPeriod,
    /// The burst is zero: no request could ever conform.
    ZeroBurst,
    /// More than one token per nanosecond: the clock cannot express it.
    TooFast,
    /// The interval, or burst × interval, is longer than about 36 years.
    TooSlow,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaError::ZeroRate => "rate must be positive (at least one token per period)",
            QuotaError::ZeroPeriod => "period must be longer than zero",
            QuotaError::ZeroBurst => "burst must be at least 1",
            QuotaError::TooFast => "rate is above one token per nanosecond",
            QuotaError::TooSlow => {
                "the interval, or burst × interval, is longer than the clock supports (about 36 years)"
            }
        })
    }
}

impl std::error::Error for QuotaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroRate));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod));
        assert_eq!(
            Quota::per_second(5).unwrap().with_burst(0),
            Err(QuotaError::ZeroBurst)
        );
        assert_eq!(
            Quota::new(10, Duration::from_nanos(5)),
            Err(QuotaError::TooFast)
        );
        assert_eq!(
            Quota::new(1, Duration::from_secs(u64::MAX)),
            Err(QuotaError::TooSlow)
        );
        assert_eq!(
            Quota::every(Duration::from_secs(86_400 * 365))
                .unwrap()
                .with_burst(u32::MAX),
            Err(QuotaError::TooSlow)
        );
        assert_eq!(Quota::per_second_f64(0.0), Err(QuotaError::ZeroRate));
        assert_eq!(Quota::per_second_f64(-1.0), Err(QuotaError::ZeroRate));
        assert_eq!(Quota::per_second_f64(f64::NAN), Err(QuotaError::ZeroRate));
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
