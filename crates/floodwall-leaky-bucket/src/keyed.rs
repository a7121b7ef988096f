//! One leaky bucket per key: [`KeyedLeakyBucket`], a
//! [`PerKey`](floodwall_ratelimit::PerKey) over [`Level`].

use std::time::Duration;

use floodwall_ratelimit::{Denied, KeyRule, KeyState, PerKey, Quota, Tat};

use crate::shaper::{horizon, queue_full, queued, spaced};

/// One leaky bucket per key (per client IP, user, room), meter or shaper,
/// remembering at most `capacity` keys (see
/// [`KeyedMap`](floodwall_ratelimit::KeyedMap) for the eviction rule). A
/// key's state is one `AtomicU64`; a drained key is dropped without
/// changing any decision.
///
/// ```
/// use std::time::Duration;
/// use floodwall_leaky_bucket::{KeyedLeakyBucket, LeakyParams, Level};
/// use floodwall_ratelimit::Quota;
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// // A shaper per key: one request every 100 ms, two may wait.
/// let queues = KeyedLeakyBucket::with_epoch(LeakyParams::shaper(Quota::per_second(10)?, 2), 1_000, t0);
/// let waits: Vec<_> = (0..3)
///     .map(|_| queues.reserve(&"alice", t0, 1, Duration::MAX).unwrap().0)
///     .collect();
/// assert_eq!(waits, [Duration::ZERO, Duration::from_millis(100), Duration::from_millis(200)]);
/// assert_eq!(queues.inspect(&"alice", t0, Level::queued), Some(2));
/// assert!(queues.reserve(&"alice", t0, 1, Duration::MAX).is_err(), "alice's queue is full");
/// assert!(queues.reserve(&"bob", t0, 1, Duration::MAX).is_ok());
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub type KeyedLeakyBucket<K> = PerKey<K, Level>;

/// What every key's leaky bucket shares: the rate, and for a shaper its
/// queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyParams {
    quota: Quota,
    /// `Some((queue, horizon))` for a shaper.
    shaper: Option<(u32, Duration)>,
}

impl LeakyParams {
    /// Meters draining at `rate`, each holding `rate.burst()` units.
    pub fn meter(rate: Quota) -> Self {
        Self {
            quota: rate,
            shaper: None,
        }
    }

    /// Shapers releasing `rate`'s tokens one interval apart, each with room
    /// for `queue` waiting requests.
    pub fn shaper(rate: Quota, queue: u32) -> Self {
        let quota = spaced(rate);
        Self {
            shaper: Some((queue, horizon(&quota, queue))),
            quota,
        }
    }

    /// The rate (and, for a meter, capacity).
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// A shaper's queue capacity; `None` for a meter.
    pub fn queue(&self) -> Option<u32> {
        self.shaper.map(|(queue, _)| queue)
    }

    /// The longest wait a shaper's queue allows (zero for a meter).
    pub fn horizon(&self) -> Duration {
        self.shaper.map_or(Duration::ZERO, |(_, horizon)| horizon)
    }
}

/// One key's leaky bucket: the GCRA [`Tat`] its level is read from.
#[derive(Debug, Default)]
pub struct Level(Tat);

impl Level {
    /// Units in the bucket at `t` (a meter's level, 0 to capacity).
    pub fn level(&self, params: &LeakyParams, t: u64) -> u32 {
        params.quota.burst() - self.0.available(&params.quota, t)
    }

    /// Requests waiting at `t` in a shaper's queue (0 for a meter).
    pub fn queued(&self, params: &LeakyParams, t: u64) -> u32 {
        match params.shaper {
            Some(_) => queued(
                self.0.time_to_full(&params.quota, t),
                params.quota.interval(),
            ),
            None => 0,
        }
    }
}

impl KeyState for Level {
    type Params = LeakyParams;

    fn fresh(params: &LeakyParams) -> Self {
        Level(Tat::fresh(&params.quota))
    }

    fn idle_at(&self, params: &LeakyParams, t: u64) -> u64 {
        self.0.idle_at(&params.quota, t)
    }
}

impl floodwall_ratelimit::Carry for Level {
    /// The mode (meter or shaper) is the limiter's own: new parameters
    /// take it from the old.
    fn prepare(old: &LeakyParams, new: LeakyParams, _t: u64) -> LeakyParams {
        match (old.shaper, new.shaper) {
            (Some(_), None) => LeakyParams::shaper(new.quota, old.queue().unwrap_or(0)),
            (None, Some(_)) => LeakyParams::meter(new.quota),
            _ => new,
        }
    }

    /// As a token bucket's (SPECS.md, "Reconfiguration"): a meter keeps the
    /// room it has, capped at the new capacity; a shaper's slots already
    /// given are kept and new ones follow the new interval.
    fn carry(&self, old: &LeakyParams, new: &LeakyParams, t: u64) {
        self.0.carry(&old.quota, &new.quota, t);
    }
}

impl KeyRule for Level {
    type Permit = ();

    #[inline]
    fn acquire(&self, params: &LeakyParams, t: u64, n: u32) -> Result<(), Denied> {
        self.0.acquire(&params.quota, t, n)
    }

    /// A shaper schedules within its queue (a cancelled waiter's slot is not
    /// given back: the waiters behind it keep their start times); a meter
    /// decides now.
    fn reserve(
        &self,
        params: &LeakyParams,
        t: u64,
        n: u32,
        _max_wait: Duration,
    ) -> Result<(Duration, ()), Denied> {
        match params.shaper {
            Some((_, horizon)) => match Tat::reserve(&self.0, &params.quota, t, n, horizon) {
                Ok(reservation) => Ok((reservation.wait(), ())),
                Err(denied) => Err(queue_full(denied, horizon)),
            },
            None => self
                .0
                .acquire(&params.quota, t, n)
                .map(|()| (Duration::ZERO, ())),
        }
    }

    fn remaining(state: Option<&Self>, params: &LeakyParams, t: u64) -> u32 {
        Tat::remaining(state.map(|level| &level.0), &params.quota, t)
    }
}
