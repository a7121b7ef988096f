use std::fmt;

use floodwall_ratelimit::{Denied, Limiter, Quota, Refund, TokenBucket};
use tokio::time::Instant;

/// A leaky bucket as a meter: water drains at the rate, each request pours
/// in its units, and a request that would overflow the capacity is refused
/// (nothing waits).
///
/// The decisions are exactly those of a token bucket with the same rate and
/// a burst equal to the capacity (the two are the two faces of GCRA,
/// ITU-T I.371's continuous-state leaky bucket and virtual scheduling), so
/// the meter is built on [`TokenBucket`]: one `AtomicU64`, one CAS.
///
/// ```
/// use std::time::Duration;
/// use floodwall_leaky_bucket::LeakyMeter;
/// use floodwall_ratelimit::Quota;
/// use tokio::time::Instant;
///
/// // Drains 10 units a second, holds 5.
/// let t0 = Instant::now();
/// let meter = LeakyMeter::with_epoch(Quota::per_second(10)?.with_burst(5)?, t0);
/// for _ in 0..5 {
///     meter.try_acquire(t0, 1).unwrap();
/// }
/// assert_eq!(meter.level(t0), 5);
/// let overflow = meter.try_acquire(t0, 1).unwrap_err();
/// assert_eq!(overflow.retry_after(), Some(Duration::from_millis(100)));
/// assert_eq!(meter.level(t0 + Duration::from_millis(250)), 3);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct LeakyMeter {
    bucket: TokenBucket,
}

impl LeakyMeter {
    /// A meter draining at `rate`'s tokens per period, holding
    /// `rate.burst()` units; empty, with the clock starting now.
    pub fn new(rate: Quota) -> Self {
        Self::with_epoch(rate, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(rate: Quota, epoch: Instant) -> Self {
        Self {
            bucket: TokenBucket::with_epoch(rate, epoch),
        }
    }

    /// Pours `n` units in at `now` if they fit.
    ///
    /// # Errors
    /// [`Denied::RateLimited`] with the exact time until they would fit;
    /// [`Denied::ExceedsBurst`] if `n` is above the capacity.
    #[inline]
    pub fn try_acquire(&self, now: Instant, n: u32) -> Result<(), Denied> {
        self.bucket.try_acquire(now, n)
    }

    /// Units in the bucket at `now`, rounded up (0 to capacity).
    pub fn level(&self, now: Instant) -> u32 {
        self.capacity() - self.bucket.available(now)
    }

    /// How many units the bucket holds.
    pub fn capacity(&self) -> u32 {
        self.bucket.quota().burst()
    }

    /// The drain rate and capacity.
    pub fn quota(&self) -> Quota {
        self.bucket.quota()
    }

    /// Drains at `rate` and holds `rate.burst()` from `now` on, keeping the
    /// room left now (capped at the new capacity): a meter is a token
    /// bucket, reconfigured as
    /// [`TokenBucket::reconfigure`](floodwall_ratelimit::TokenBucket::reconfigure)
    /// is (SPECS.md, "Reconfiguration"). Atomic for concurrent deciders.
    pub fn reconfigure(&self, rate: Quota, now: Instant) {
        self.bucket.reconfigure(rate, now);
    }
}

impl fmt::Debug for LeakyMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyMeter")
            .field("quota", &self.quota())
            .finish_non_exhaustive()
    }
}

/// A meter never schedules ahead: it decides now.
impl<Req> Limiter<Req> for LeakyMeter {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }
}

impl Refund for LeakyMeter {
    type Permit = ();
}
