//! Warm-up: a token bucket that ramps a cold limiter up to its rate, as
//! Guava's `SmoothWarmingUp` and Sentinel's `WarmUp` controller do
//! (SPECS.md, "Warm-up").

use std::fmt;
use std::time::Duration;

use floodwall_core::ConfigError;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::time::nanos_since;
use crate::{Denied, KeyRule, KeyState, Limiter, Quota, Refund, Remaining};

/// How a cold limiter warms up: over `period` of steady traffic it goes
/// from `rate / cold_factor` to its rate.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct WarmUp {
    /// The warm-up period `W`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub period: Duration,
    /// How many times slower than the stable interval a cold limiter
    /// admits (`C = S · cold_factor`). Default 3, as Guava and Sentinel.
    #[cfg_attr(feature = "serde", serde(default = "default_cold_factor"))]
    pub cold_factor: f64,
}

#[cfg(feature = "serde")]
fn default_cold_factor() -> f64 {
    WarmUp::DEFAULT_COLD_FACTOR
}

impl WarmUp {
    /// Guava's and Sentinel's cold factor.
    pub const DEFAULT_COLD_FACTOR: f64 = 3.0;

    /// A warm-up over `period` with the default cold factor.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            cold_factor: Self::DEFAULT_COLD_FACTOR,
        }
    }

    /// The same warm-up with another cold factor.
    pub fn cold_factor(mut self, cold_factor: f64) -> Self {
        self.cold_factor = cold_factor;
        self
    }
}

/// The warm-up curve of one quota, in nanoseconds and permits (SPECS.md):
/// stable interval `S = 1/rate`, cold interval `C = S · cold_factor`,
/// `threshold = 0.5 · W / S`, `max = threshold + 2 · W / (S + C)`,
/// `slope = (C − S) / (max − threshold)`; idle, the stored permits grow by
/// one every `W / max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmCurve {
    stable: f64,
    threshold: f64,
    max: f64,
    slope: f64,
    cool_down: f64,
    burst: u32,
}

impl WarmCurve {
    /// The curve of `quota` warming up as `warm` says.
    ///
    /// # Errors
    /// [`ConfigError`] for a period of zero or above
    /// [`MAX_DURATION`](floodwall_core::config::MAX_DURATION), or a cold
    /// factor that is not a finite number above 1.
    pub fn new(quota: &Quota, warm: WarmUp) -> Result<Self, ConfigError> {
        floodwall_core::config::check_duration("warm_up.period", warm.period)?;
        if warm.period.is_zero() {
            return Err(ConfigError::new("warm_up.period", "must be above zero"));
        }
        if !(warm.cold_factor.is_finite() && warm.cold_factor > 1.0) {
            return Err(
                ConfigError::new("warm_up.cold_factor", "must be a finite number above 1")
                    .with_value(warm.cold_factor),
            );
        }
        let stable = quota.interval().as_nanos() as f64;
        let cold = stable * warm.cold_factor;
        let period = warm.period.as_nanos() as f64;
        let threshold = 0.5 * period / stable;
        let max = threshold + 2.0 * period / (stable + cold);
        let slope = (cold - stable) / (max - threshold);
        Ok(Self {
            stable,
            threshold,
            max,
            slope,
            cool_down: period / max,
            burst: quota.burst(),
        })
    }

    /// Permits stored when cold (where a new limiter starts).
    pub fn max_permits(&self) -> f64 {
        self.max
    }

    /// Stored permits above which taking one costs more than `S`.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The interval a permit costs with `stored` permits stored:
    /// `S + slope · (stored − threshold)` above the threshold, `S` below.
    pub fn interval_at(&self, stored: f64) -> Duration {
        let above = (stored - self.threshold).max(0.0);
        Duration::from_nanos((self.stable + above * self.slope).round() as u64)
    }

    /// What taking `take` of `stored` permits costs, in nanoseconds: the
    /// area under `S + slope · x` for the part above the threshold, `S` per
    /// permit below it.
    fn stored_cost(&self, stored: f64, take: f64) -> f64 {
        let above = stored - self.threshold;
        let mut cost = 0.0;
        let mut take = take;
        if above > 0.0 {
            let from_above = above.min(take);
            let at = |p: f64| self.stable + p * self.slope;
            cost = from_above * (at(above) + at(above - from_above)) / 2.0;
            take -= from_above;
        }
        cost + self.stable * take
    }
}

/// One warming bucket's state: permits stored and the instant (ns since
/// the epoch) the next request may start.
#[derive(Debug, Clone, Copy)]
struct Warm {
    stored: f64,
    next_free: u64,
}

impl Warm {
    fn cold(curve: &WarmCurve) -> Self {
        Self {
            stored: curve.max,
            next_free: 0,
        }
    }

    /// Guava's `reserve`: brings the stored permits up to `t`, then admits
    /// the request if its start (`next_free`) is at most `max_wait` away,
    /// and charges its cost to the requests after it. Returns the wait.
    fn step(&mut self, curve: &WarmCurve, t: u64, n: u32, max_wait: u64) -> Result<u64, Denied> {
        if n > curve.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: curve.burst,
            });
        }
        if t > self.next_free {
            let idle = (t - self.next_free) as f64;
            self.stored = (self.stored + idle / curve.cool_down).min(curve.max);
            self.next_free = t;
        }
        let wait = self.next_free - t;
        if wait > max_wait {
            return Err(Denied::RateLimited {
                retry_after: Duration::from_nanos(wait - max_wait),
            });
        }
        let take = f64::from(n).min(self.stored);
        let fresh = f64::from(n) - take;
        let cost = curve.stored_cost(self.stored, take) + fresh * curve.stable;
        self.next_free = self.next_free.saturating_add(cost.round() as u64);
        self.stored -= take;
        Ok(wait)
    }

    /// When this state is cold again (as a fresh one), seen at `t`.
    fn cold_at(&self, curve: &WarmCurve) -> u64 {
        let missing = (curve.max - self.stored).max(0.0);
        self.next_free
            .saturating_add((missing * curve.cool_down).ceil() as u64)
    }
}

/// A token bucket that warms up (SPECS.md, "Warm-up"; Guava's
/// `SmoothWarmingUp`): a cold limiter admits one request per cold interval
/// `C = S · cold_factor` and speeds up as traffic uses its stored permits,
/// reaching its stable rate `1/S` after about the warm-up period of steady
/// traffic; idleness cools it again, one stored permit per `W / max`.
/// A new limiter starts cold.
///
/// As in Guava, a request that may start pays for itself *forward*: it is
/// admitted if its start (the instant the previous requests' cost has
/// elapsed) is now (or within the wait bound), and its own cost delays the
/// requests after it. The state is two numbers behind one lock.
///
/// ```
/// use std::time::Duration;
/// use floodwall_ratelimit::{Quota, WarmUp, WarmingBucket};
/// use tokio::time::Instant;
///
/// // 2/s, warming up over 4 s: cold, requests are 1.375 s, 1.125 s,
/// // 875 ms and 625 ms apart before the stable 500 ms.
/// let t0 = Instant::now();
/// let bucket = WarmingBucket::with_epoch(Quota::per_second(2)?, WarmUp::new(Duration::from_secs(4)), t0)?;
/// bucket.try_acquire(t0, 1).unwrap();
/// let refused = bucket.try_acquire(t0, 1).unwrap_err();
/// assert_eq!(refused.retry_after(), Some(Duration::from_millis(1375)));
/// bucket.try_acquire(t0 + Duration::from_millis(1375), 1).unwrap();
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct WarmingBucket {
    state: Mutex<Warm>,
    curve: WarmCurve,
    quota: Quota,
    warm: WarmUp,
    epoch: Instant,
}

impl WarmingBucket {
    /// A cold bucket whose clock starts now.
    ///
    /// # Errors
    /// As [`WarmCurve::new`].
    pub fn new(quota: Quota, warm: WarmUp) -> Result<Self, ConfigError> {
        Self::with_epoch(quota, warm, Instant::now())
    }

    /// A cold bucket whose clock starts at `epoch`.
    ///
    /// # Errors
    /// As [`WarmCurve::new`].
    pub fn with_epoch(quota: Quota, warm: WarmUp, epoch: Instant) -> Result<Self, ConfigError> {
        let curve = WarmCurve::new(&quota, warm)?;
        Ok(Self {
            state: Mutex::new(Warm::cold(&curve)),
            curve,
            quota,
            warm,
            epoch,
        })
    }

    /// Admits `n` units at `now` if the next start is now.
    ///
    /// # Errors
    /// [`Denied::RateLimited`] with the time until the next start;
    /// [`Denied::ExceedsBurst`] if `n` is above the quota's burst.
    pub fn try_acquire(&self, now: Instant, n: u32) -> Result<(), Denied> {
        let t = nanos_since(self.epoch, now);
        self.state.lock().step(&self.curve, t, n, 0).map(|_| ())
    }

    /// Admits `n` units at `now` for a start at most `max_wait` away;
    /// returns the wait.
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire), beyond `max_wait`.
    pub fn reserve(&self, now: Instant, n: u32, max_wait: Duration) -> Result<Duration, Denied> {
        let t = nanos_since(self.epoch, now);
        let max_wait = crate::gcra::max_wait_ns(max_wait);
        self.state
            .lock()
            .step(&self.curve, t, n, max_wait)
            .map(Duration::from_nanos)
    }

    /// Permits stored at `now` (the limiter is cold at
    /// [`WarmCurve::max_permits`], warm at or below
    /// [`WarmCurve::threshold`]).
    pub fn stored(&self, now: Instant) -> f64 {
        let t = nanos_since(self.epoch, now);
        let mut state = *self.state.lock();
        let _ = state.step(&self.curve, t, 0, u64::MAX);
        state.stored
    }

    /// The curve.
    pub fn curve(&self) -> &WarmCurve {
        &self.curve
    }

    /// The stable quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The warm-up.
    pub fn warm_up(&self) -> WarmUp {
        self.warm
    }
}

impl fmt::Debug for WarmingBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmingBucket")
            .field("quota", &self.quota)
            .field("warm_up", &self.warm)
            .field("state", &*self.state.lock())
            .finish()
    }
}

impl<Req> Limiter<Req> for WarmingBucket {
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }

    fn reserve(&self, _req: &Req, now: Instant, n: u32, max_wait: Duration) -> crate::Reserved<()> {
        WarmingBucket::reserve(self, now, n, max_wait).map(|wait| (wait, ()))
    }
}

/// Warm-up charges forward: nothing to give back.
impl Refund for WarmingBucket {
    type Permit = ();
}

impl Remaining for WarmingBucket {
    fn remaining(&self, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        let state = *self.state.lock();
        u32::from(state.next_free <= t)
    }
}

/// What every key of a keyed warming bucket shares: the quota and its
/// curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmParams {
    /// The stable quota.
    pub quota: Quota,
    /// The curve.
    pub curve: WarmCurve,
}

impl WarmParams {
    /// The parameters of `quota` warming up as `warm` says.
    ///
    /// # Errors
    /// As [`WarmCurve::new`].
    pub fn new(quota: Quota, warm: WarmUp) -> Result<Self, ConfigError> {
        Ok(Self {
            quota,
            curve: WarmCurve::new(&quota, warm)?,
        })
    }
}

/// One key's warming bucket (a [`PerKey`](crate::PerKey) state).
pub struct WarmState(Mutex<Warm>);

impl fmt::Debug for WarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WarmState").field(&*self.0.lock()).finish()
    }
}

impl KeyState for WarmState {
    type Params = WarmParams;

    fn fresh(params: &WarmParams) -> Self {
        WarmState(Mutex::new(Warm::cold(&params.curve)))
    }

    fn idle_at(&self, params: &WarmParams, _t: u64) -> u64 {
        self.0.lock().cold_at(&params.curve)
    }
}

impl KeyRule for WarmState {
    type Permit = ();

    fn admissible(params: &WarmParams, n: u32) -> Result<(), Denied> {
        if n > params.curve.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: params.curve.burst,
            });
        }
        Ok(())
    }

    fn acquire(&self, params: &WarmParams, t: u64, n: u32) -> Result<(), Denied> {
        self.0.lock().step(&params.curve, t, n, 0).map(|_| ())
    }

    fn reserve(
        &self,
        params: &WarmParams,
        t: u64,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, ()), Denied> {
        let max_wait = crate::gcra::max_wait_ns(max_wait);
        self.0
            .lock()
            .step(&params.curve, t, n, max_wait)
            .map(|wait| (Duration::from_nanos(wait), ()))
    }

    fn remaining(state: Option<&Self>, _params: &WarmParams, t: u64) -> u32 {
        state.map_or(1, |s| u32::from(s.0.lock().next_free <= t))
    }
}
