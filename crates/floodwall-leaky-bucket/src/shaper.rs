use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use floodwall_ratelimit::{Denied, KeyedLimit, Limiter, Refund};
use floodwall_token_bucket::{KeyedTokenBucket, MAX_WAIT, Quota, TokenBucket};
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
/// use floodwall_token_bucket::Quota;
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
/// # Ok::<(), floodwall_token_bucket::QuotaError>(())
/// ```
pub struct LeakyShaper {
    bucket: TokenBucket,
    queue: u32,
    horizon: Duration,
}

/// `q·I`, the furthest ahead a start slot may be (at most
/// [`MAX_WAIT`], about 36 years).
fn horizon(rate: &Quota, queue: u32) -> Duration {
    rate.interval()
        .checked_mul(queue)
        .map_or(MAX_WAIT, |h| h.min(MAX_WAIT))
}

/// The rate with a burst of one: requests leave one interval apart. (A
/// burst of 1 is valid whenever the rate's own burst is.)
fn spaced(rate: Quota) -> Quota {
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
            horizon: horizon(&rate, queue),
            bucket: TokenBucket::with_epoch(rate, epoch),
            queue,
        }
    }

    /// Admits a request arriving at `now` and returns how long it must wait
    /// for its start slot (zero: start now).
    ///
    /// # Errors
    /// [`Denied::RateLimited`] when the queue is full, with the time until it
    /// will have room.
    pub fn admit(&self, now: Instant) -> Result<Duration, Denied> {
        match self.bucket.reserve(now, 1, self.horizon) {
            Ok(reservation) => Ok(reservation.wait()),
            Err(denied) => Err(self.queue_full(denied)),
        }
    }

    fn queue_full(&self, denied: Denied) -> Denied {
        match denied {
            Denied::RateLimited { retry_after } => Denied::RateLimited {
                retry_after: retry_after.saturating_sub(self.horizon),
            },
            other => other,
        }
    }

    /// How long a request arriving at `now` would wait for its slot if it
    /// were admitted; it is admitted only while this is at most
    /// [`horizon`](Self::horizon).
    pub fn delay(&self, now: Instant) -> Duration {
        self.bucket.time_to_full(now)
    }

    /// The longest wait the queue allows, `q·I` (capped at about 36 years).
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    /// Requests waiting at `now` for their start slot.
    pub fn queued(&self, now: Instant) -> u32 {
        queued(self.delay(now), self.bucket.quota().interval())
    }

    /// The queue's capacity.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The release rate.
    pub fn quota(&self) -> &Quota {
        self.bucket.quota()
    }
}

/// Waiters behind a delay of `delay` with slots `interval` apart.
fn queued(delay: Duration, interval: Duration) -> u32 {
    let slots = delay.as_nanos().div_ceil(interval.as_nanos().max(1));
    u32::try_from(slots.saturating_sub(1)).unwrap_or(u32::MAX)
}

impl fmt::Debug for LeakyShaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyShaper")
            .field("quota", self.quota())
            .field("queue", &self.queue)
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
    fn reserve(
        &self,
        _req: &Req,
        now: Instant,
        n: u32,
        _max_wait: Duration,
    ) -> Result<(Duration, ()), Denied> {
        match self.bucket.reserve(now, n, self.horizon) {
            Ok(reservation) => Ok((reservation.wait(), ())),
            Err(denied) => Err(self.queue_full(denied)),
        }
    }
}

/// A cancelled waiter's slot is not given back (see [`LeakyShaper`]).
impl Refund for LeakyShaper {
    type Permit = ();
}

/// One [`LeakyShaper`] per key, at most `capacity` keys remembered (see
/// [`KeyedTokenBucket`] for the eviction rule and memory per key).
pub struct KeyedLeakyShaper<K> {
    buckets: KeyedTokenBucket<K>,
    queue: u32,
    horizon: Duration,
}

impl<K: Hash + Eq> KeyedLeakyShaper<K> {
    /// Per-key shapers, remembering at most `capacity` keys, with the clock
    /// starting now.
    pub fn new(rate: Quota, queue: u32, capacity: usize) -> Self {
        Self::with_epoch(rate, queue, capacity, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(rate: Quota, queue: u32, capacity: usize, epoch: Instant) -> Self {
        let rate = spaced(rate);
        Self {
            horizon: horizon(&rate, queue),
            buckets: KeyedTokenBucket::with_epoch(rate, capacity, epoch),
            queue,
        }
    }

    pub(crate) fn with_metric_names(self, layer: &'static str, name: &str) -> Self {
        Self {
            buckets: self.buckets.with_metric_names(layer, name),
            ..self
        }
    }

    /// Admits a request for `key` arriving at `now`; returns its wait.
    ///
    /// # Errors
    /// As [`LeakyShaper::admit`].
    pub fn admit(&self, key: &K, now: Instant) -> Result<Duration, Denied>
    where
        K: Clone,
    {
        self.reserve(key, now, 1)
    }

    fn reserve(&self, key: &K, now: Instant, n: u32) -> Result<Duration, Denied>
    where
        K: Clone,
    {
        match self.buckets.reserve(key, now, n, self.horizon) {
            Ok(reservation) => Ok(reservation.wait()),
            Err(Denied::RateLimited { retry_after }) => Err(Denied::RateLimited {
                retry_after: retry_after.saturating_sub(self.horizon),
            }),
            Err(other) => Err(other),
        }
    }

    /// Requests waiting at `now` in `key`'s queue.
    pub fn queued(&self, key: &K, now: Instant) -> u32 {
        queued(
            self.buckets.time_to_full(key, now),
            self.buckets.quota().interval(),
        )
    }

    /// The per-key queues' capacity.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The longest wait a key's queue allows, `q·I`.
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    /// The per-key state (key count, memory, evictions).
    pub fn buckets(&self) -> &KeyedTokenBucket<K> {
        &self.buckets
    }
}

impl<K> fmt::Debug for KeyedLeakyShaper<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLeakyShaper")
            .field("buckets", &self.buckets)
            .field("queue", &self.queue)
            .finish()
    }
}

impl<K> KeyedLimit for KeyedLeakyShaper<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
    type Permit = ();

    #[inline]
    fn acquire_key(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied> {
        self.buckets.try_acquire(key, now, n)
    }

    /// A cancelled waiter's slot is not given back (see [`LeakyShaper`]).
    fn reserve_key(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        _max_wait: Duration,
    ) -> Result<(Duration, ()), Denied> {
        self.reserve(key, now, n).map(|wait| (wait, ()))
    }
}
