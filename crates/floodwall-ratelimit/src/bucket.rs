use floodwall_core::sync::{AtomicU64, Mutex};
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Denied, Limiter, Refund, Remaining};

use crate::Quota;
use crate::gcra::{LiveParams, Params, Reservation, max_wait_ns, nanos_since};

/// A lock-free token bucket in GCRA form: the sans-IO core of the
/// token-bucket layer.
///
/// The whole state is one `AtomicU64`, the theoretical arrival time (TAT) in
/// nanoseconds since the bucket's epoch, updated with a compare-and-swap
/// loop. It never reads a clock, sleeps or spawns: every method takes the
/// current instant.
///
/// For a request of weight `n` at time `t`, with interval `I` and burst `b`:
/// `tat' = max(TAT, t) + n·I`; the request conforms iff `tat' − t ≤ b·I`, and
/// then `TAT = tat'`. A refused request changes nothing and learns
/// `retry_after = tat' − b·I − t`, exactly when it would conform. A request
/// with `n > b` can never conform and gets [`Denied::ExceedsBurst`]. The
/// bucket starts full and, however long it idles, holds at most `b` tokens.
///
/// ```
/// use std::time::Duration;
/// use floodwall_ratelimit::{Denied, Quota, TokenBucket};
/// use tokio::time::Instant;
///
/// let quota = Quota::per_second(100)?.with_burst(10)?;
/// let t0 = Instant::now();
/// let bucket = TokenBucket::with_epoch(quota, t0);
///
/// let admitted = (0..25).filter(|_| bucket.try_acquire(t0, 1).is_ok()).count();
/// assert_eq!(admitted, 10);
///
/// match bucket.try_acquire(t0, 1) {
///     Err(Denied::RateLimited { retry_after }) => {
///         assert_eq!(retry_after, Duration::from_millis(10))
///     }
///     other => panic!("{other:?}"),
/// }
/// assert!(bucket.try_acquire(t0 + Duration::from_millis(10), 1).is_ok());
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct TokenBucket {
    tat: AtomicU64,
    epoch: Instant,
    params: LiveParams,
    /// The quota enforced; held while reconfiguring, so reconfigurations
    /// run one at a time.
    quota: Mutex<Quota>,
}

impl TokenBucket {
    /// A full bucket whose clock starts now.
    pub fn new(quota: Quota) -> Self {
        Self::with_epoch(quota, Instant::now())
    }

    /// A full bucket whose clock starts at `epoch`. Instants before the epoch
    /// count as the epoch.
    pub fn with_epoch(quota: Quota, epoch: Instant) -> Self {
        Self {
            tat: AtomicU64::new(0),
            epoch,
            params: LiveParams::new(Params::of(&quota)),
            quota: Mutex::new(quota),
        }
    }

    /// Takes `n` tokens at `now` if they are there.
    ///
    /// # Errors
    /// [`Denied::RateLimited`] with the exact time until `n` tokens will be
    /// there; [`Denied::ExceedsBurst`] if `n` is above the burst.
    #[inline]
    pub fn try_acquire(&self, now: Instant, n: u32) -> Result<(), Denied> {
        let t = nanos_since(self.epoch, now);
        self.params.step(&self.tat, t, n, 0).map(|_| ())
    }

    /// Enforces `quota` from `now` on, keeping the tokens available now
    /// (capped at the new burst; SPECS.md, "Reconfiguration"): with `a`
    /// tokens available under the old quota, the bucket holds
    /// `min(a, b')` and refills at the new rate. Raising a quota grants
    /// nothing at once; lowering it takes away what exceeds the new burst.
    /// Reservations already made keep their start times; later ones queue
    /// behind them at the new interval.
    ///
    /// Atomic for concurrent deciders: each decision runs wholly under the
    /// old quota or wholly under the new one. Lock-free for them: while the
    /// bucket's one cell is converted (a few instructions), a decider
    /// spins.
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_ratelimit::{Quota, TokenBucket};
    /// use tokio::time::Instant;
    ///
    /// let t0 = Instant::now();
    /// let bucket = TokenBucket::with_epoch(Quota::per_second(10)?, t0);
    /// bucket.try_acquire(t0, 4).unwrap(); // 6 of 10 left
    /// bucket.reconfigure(Quota::per_second(100)?.with_burst(20)?, t0);
    /// assert_eq!(bucket.available(t0), 6); // carried over, not refilled
    /// assert_eq!(bucket.available(t0 + Duration::from_millis(50)), 11); // 100/s now
    /// # Ok::<(), floodwall_core::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, quota: Quota, now: Instant) {
        let t = nanos_since(self.epoch, now);
        let mut current = self.quota.lock();
        self.params.reconfigure(&self.tat, Params::of(&quota), t);
        *current = quota;
    }

    /// Reserves `n` tokens at `now`, allowing the request to start up to
    /// `max_wait` later (at most about 36 years). The reservation's
    /// [`wait`](Reservation::wait) says how long the caller must wait before
    /// it conforms (zero if it conforms now). Reserved tokens are spent at
    /// once, so later requests queue behind this one, one interval apart.
    /// If the caller gives up, [`cancel`](Self::cancel) gives them back.
    ///
    /// # Errors
    /// [`Denied::RateLimited`] if the wait would exceed `max_wait` (nothing is
    /// reserved); [`Denied::ExceedsBurst`] if `n` is above the burst.
    pub fn reserve(&self, now: Instant, n: u32, max_wait: Duration) -> Result<Reservation, Denied> {
        let t = nanos_since(self.epoch, now);
        self.params.step(&self.tat, t, n, max_wait_ns(max_wait))
    }

    /// Gives back the tokens of a reservation whose request never ran, if it
    /// is still the newest reservation; returns whether it was.
    ///
    /// Only the newest reservation can be undone: every later one was
    /// scheduled after it, so handing an earlier slot to a newcomer would
    /// start two requests where the rate allows one. An older cancelled
    /// slot simply goes unused; the bucket is whole again once its time has
    /// passed. Either way the bucket never admits more than its rate.
    pub fn cancel(&self, reservation: Reservation, now: Instant) -> bool {
        let t = nanos_since(self.epoch, now);
        self.params.cancel(&self.tat, reservation, t)
    }

    /// How long until the bucket is full again (zero if it is full): with a
    /// burst of 1, how long a request arriving now would wait for its slot.
    pub fn time_to_full(&self, now: Instant) -> Duration {
        let t = nanos_since(self.epoch, now);
        Duration::from_nanos(LiveParams::settled(&self.tat).saturating_sub(t))
    }

    /// Whole tokens available at `now` (0 to burst).
    pub fn available(&self, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        let tat = LiveParams::settled(&self.tat);
        self.params.load().available(tat, t)
    }

    /// The quota this bucket enforces.
    pub fn quota(&self) -> Quota {
        *self.quota.lock()
    }
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("quota", &self.quota())
            .field("tat_ns", &LiveParams::settled(&self.tat))
            .finish_non_exhaustive()
    }
}

impl<Req> Limiter<Req> for TokenBucket {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }

    fn reserve(
        &self,
        _req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Reservation), Denied> {
        let reservation = TokenBucket::reserve(self, now, n, max_wait)?;
        Ok((reservation.wait(), reservation))
    }
}

impl Refund for TokenBucket {
    type Permit = Reservation;

    fn refund(&self, reservation: Reservation, now: Instant) {
        self.cancel(reservation, now);
    }
}

impl Remaining for TokenBucket {
    fn remaining(&self, now: Instant) -> u32 {
        self.available(now)
    }
}
