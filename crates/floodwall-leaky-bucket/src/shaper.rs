use std::fmt;
use std::time::Duration;

use floodwall_ratelimit::{Denied, Limiter, MAX_WAIT, Quota, Refund, Reserved, TokenBucket};
use parking_lot::RwLock;
use tokio::time::Instant;

/// A leaky bucket as a shaper (a queue): requests leave one interval apart,
/// each waiting for its start slot; a request that would find the queue full
/// is refused at once and never waits.
///
/// With interval `I = 1/rate` and queue capacity `q`, a request at `t` is
/// given the start slot `s = max(TAT, t)`; it is admitted iff `s − t ≤ q·I`,
/// then `TAT = s + I` and it waits until `s`. So consecutive starts are at
/// least `I` apart, at most `q` requests wait at once beyond the one being
/// started, and a refused request learns exactly when the queue will have
/// room: `retry_after = s − q·I − t`. A waiting request that is cancelled
/// does not give its slot back (the slot simply passes unused, as in nginx's
/// `limit_req`): later starts keep their spacing.
///
/// This is GCRA with a burst of one and a scheduling horizon of `q·I`, so
/// it is built on [`TokenBucket`].
///
/// ```
/// use std::time::Duration;
/// use floodwall_leaky_bucket::LeakyShaper;
/// use floodwall_ratelimit::Quota;
/// use tokio::time::Instant;
///
/// // One request every 100 ms, at most 2 waiting.
/// let t0 = Instant::now();
/// let shaper = LeakyShaper::with_epoch(Quota::per_second(10)?, 2, t0);
/// let ms = Duration::from_millis;
/// assert_eq!(shaper.admit(t0), Ok(ms(0)));
/// assert_eq!(shaper.admit(t0), Ok(ms(100)));
/// assert_eq!(shaper.admit(t0), Ok(ms(200)));
/// // The queue is full until the first waiter starts, 100 ms from now.
/// assert_eq!(shaper.admit(t0).unwrap_err().retry_after(), Some(ms(100)));
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct LeakyShaper {
    bucket: TokenBucket,
    /// The queue's capacity and the horizon it gives, replaced by a
    /// reconfiguration (under the write lock, with the bucket); a decision
    /// reads them under the read lock.
    queue: RwLock<(u32, Duration)>,
}

/// `q·I`, the furthest ahead a start slot may be (at most
/// [`MAX_WAIT`], about 36 years).
pub(crate) fn horizon(rate: &Quota, queue: u32) -> Duration {
    rate.interval()
        .checked_mul(queue)
        .map_or(MAX_WAIT, |h| h.min(MAX_WAIT))
}

/// The rate with a burst of one: requests leave one interval apart. (A
/// burst of 1 is valid whenever the rate's own burst is.)
pub(crate) fn spaced(rate: Quota) -> Quota {
    rate.with_burst(1).unwrap_or(rate)
}

impl LeakyShaper {
    /// A shaper releasing `rate`'s tokens per period (its burst is
    /// ignored: starts are one interval apart) with room for `queue`
    /// waiting requests; the clock starts now.
    pub fn new(rate: Quota, queue: u32) -> Self {
        Self::with_epoch(rate, queue, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(rate: Quota, queue: u32, epoch: Instant) -> Self {
        let rate = spaced(rate);
        Self {
            queue: RwLock::new((queue, horizon(&rate, queue))),
            bucket: TokenBucket::with_epoch(rate, epoch),
        }
    }

    /// Admits a request arriving at `now` and returns how long it must wait
    /// for its start slot (zero: start now).
    ///
    /// # Errors
    /// [`Denied::RateLimited`] when the queue is full, with the time until it
    /// will have room.
    pub fn admit(&self, now: Instant) -> Result<Duration, Denied> {
        let queue = self.queue.read();
        let horizon = queue.1;
        match self.bucket.reserve(now, 1, horizon) {
            Ok(reservation) => Ok(reservation.wait()),
            Err(denied) => Err(queue_full(denied, horizon)),
        }
    }

    /// Releases at `rate` with room for `queue` waiters from `now` on
    /// (SPECS.md, "Reconfiguration"): requests already given a start slot
    /// keep it; new slots follow the new interval from the last one given.
    /// A queue longer than a new capacity keeps its waiters and refuses
    /// newcomers until it is under it. Atomic for concurrent deciders.
    pub fn reconfigure(&self, rate: Quota, queue: u32, now: Instant) {
        let rate = spaced(rate);
        let mut current = self.queue.write();
        self.bucket.reconfigure(rate, now);
        *current = (queue, horizon(&rate, queue));
    }

    /// How long a request arriving at `now` would wait for its slot if it
    /// were admitted; it is admitted only while this is at most
    /// [`horizon`](Self::horizon).
    pub fn delay(&self, now: Instant) -> Duration {
        self.bucket.time_to_full(now)
    }

    /// The longest wait the queue allows, `q·I` (capped at about 36 years).
    pub fn horizon(&self) -> Duration {
        self.queue.read().1
    }

    /// Requests waiting at `now` for their start slot.
    pub fn queued(&self, now: Instant) -> u32 {
        queued(self.delay(now), self.bucket.quota().interval())
    }

    /// The queue's capacity.
    pub fn queue(&self) -> u32 {
        self.queue.read().0
    }

    /// The release rate.
    pub fn quota(&self) -> Quota {
        self.bucket.quota()
    }
}

/// Waiters behind a delay of `delay` with slots `interval` apart.
pub(crate) fn queued(delay: Duration, interval: Duration) -> u32 {
    let slots = delay.as_nanos().div_ceil(interval.as_nanos().max(1));
    u32::try_from(slots.saturating_sub(1)).unwrap_or(u32::MAX)
}

impl fmt::Debug for LeakyShaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyShaper")
            .field("quota", &self.quota())
            .field("queue", &self.queue())
            .finish_non_exhaustive()
    }
}

impl<Req> Limiter<Req> for LeakyShaper {
    /// Only when the queue has no room at all (`q = 0`): start now or refuse.
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.bucket.try_acquire(now, n)
    }

    /// Every request gets the next slot if the queue has room; the layer's
    /// wait bound is the queue's.
    fn reserve(&self, _req: &Req, now: Instant, n: u32, _max_wait: Duration) -> Reserved<()> {
        let queue = self.queue.read();
        let horizon = queue.1;
        match self.bucket.reserve(now, n, horizon) {
            Ok(reservation) => Ok((reservation.wait(), ())),
            Err(denied) => Err(queue_full(denied, horizon)),
        }
    }
}

/// A cancelled waiter's slot is not given back (see [`LeakyShaper`]).
impl Refund for LeakyShaper {
    type Permit = ();
}

/// A refusal by a full queue: the retry-after is when the queue has room,
/// `horizon` earlier than when a slot would start.
pub(crate) fn queue_full(denied: Denied, horizon: Duration) -> Denied {
    match denied {
        Denied::RateLimited { retry_after } => Denied::RateLimited {
            retry_after: retry_after.saturating_sub(horizon),
        },
        other => other,
    }
}
