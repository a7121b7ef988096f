//! The GCRA per key: [`Tat`], the state a key's token bucket holds, and
//! [`KeyedTokenBucket`].

use floodwall_core::sync::{AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

use crate::Quota;
use crate::gcra::{Params, Reservation, max_wait_ns};
use crate::{Carry, Denied, KeyRule, KeyState, PerKey};

/// One token bucket per key (per client IP, user, room, ...), with a hard cap
/// on how many keys are remembered: a [`PerKey`] over [`Tat`].
///
/// Each key's state is one atomic TAT, decided exactly as in
/// [`TokenBucket`](crate::TokenBucket): a known key costs a shared read lock
/// on one shard and one CAS; only a key seen for the first time takes its
/// shard's write lock. A key whose bucket has refilled is indistinguishable
/// from an unknown key and is dropped without changing any decision; a key
/// forgotten while in debt may be admitted early by up to one burst. Give
/// `capacity` about twice the number of keys active within one burst window.
///
/// ```
/// use std::time::Duration;
/// use floodwall_ratelimit::{KeyedTokenBucket, Quota};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let per_user = KeyedTokenBucket::with_epoch(Quota::per_second(2)?, 10_000, t0);
/// per_user.try_acquire(&"alice", t0, 2).unwrap();
/// assert_eq!(per_user.remaining(&"alice", t0), 0);
/// // Wait mode: alice's next token is 500 ms away.
/// let (wait, reservation) = per_user.reserve(&"alice", t0, 1, Duration::from_secs(1)).unwrap();
/// assert_eq!(wait, Duration::from_millis(500));
/// per_user.refund(&"alice", reservation, t0); // cancelled: the token is back
/// assert_eq!(per_user.inspect(&"alice", t0, Tat::time_to_full), Some(Duration::from_secs(1)));
/// # use floodwall_ratelimit::Tat;
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub type KeyedTokenBucket<K> = PerKey<K, Tat>;

/// A token bucket's whole state: its theoretical arrival time (TAT), in
/// nanoseconds since the limiter's epoch, idle once it is in the past.
pub struct Tat(AtomicU64);

impl Tat {
    /// A full bucket.
    pub fn new() -> Self {
        Tat(AtomicU64::new(0))
    }

    /// Takes `n` tokens at `t` under `quota`, allowing a start up to
    /// `max_wait` later (see [`TokenBucket::reserve`](crate::TokenBucket::reserve)).
    ///
    /// # Errors
    /// As [`TokenBucket::reserve`](crate::TokenBucket::reserve).
    #[inline]
    pub fn reserve(
        &self,
        quota: &Quota,
        t: u64,
        n: u32,
        max_wait: Duration,
    ) -> Result<Reservation, Denied> {
        Params::of(quota).step(&self.0, t, n, max_wait_ns(max_wait))
    }

    /// Gives back `reservation`'s tokens if it is still the newest; returns
    /// whether it was (see [`TokenBucket::cancel`](crate::TokenBucket::cancel)).
    pub fn cancel(&self, quota: &Quota, reservation: Reservation, t: u64) -> bool {
        Params::of(quota).cancel(&self.0, reservation, t)
    }

    /// How long from `t` until the bucket is full again.
    pub fn time_to_full(&self, _quota: &Quota, t: u64) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed).saturating_sub(t))
    }

    /// Whole tokens available at `t`.
    pub fn available(&self, quota: &Quota, t: u64) -> u32 {
        Params::of(quota).available(self.0.load(Ordering::Relaxed), t)
    }
}

impl Default for Tat {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Tat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tat")
            .field(&self.0.load(Ordering::Relaxed))
            .finish()
    }
}

impl KeyState for Tat {
    type Params = Quota;

    fn fresh(_: &Quota) -> Self {
        Tat::new()
    }

    fn idle_at(&self, _: &Quota, _t: u64) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Carry for Tat {
    /// The tokens the key has at `t` carry over, capped at the new burst
    /// (SPECS.md, "Reconfiguration"; as
    /// [`TokenBucket::reconfigure`](crate::TokenBucket::reconfigure)).
    fn carry(&self, old: &Quota, new: &Quota, t: u64) {
        let tat = self.0.load(Ordering::Relaxed);
        let carried = Params::of(old).carry(Params::of(new), tat, t);
        self.0.store(carried, Ordering::Relaxed);
    }
}

impl KeyRule for Tat {
    type Permit = Reservation;

    #[inline]
    fn acquire(&self, quota: &Quota, t: u64, n: u32) -> Result<(), Denied> {
        Params::of(quota).step(&self.0, t, n, 0).map(|_| ())
    }

    fn reserve(
        &self,
        quota: &Quota,
        t: u64,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Reservation), Denied> {
        let reservation = Tat::reserve(self, quota, t, n, max_wait)?;
        Ok((reservation.wait(), reservation))
    }

    fn refund(&self, quota: &Quota, reservation: Reservation, t: u64) {
        self.cancel(quota, reservation, t);
    }

    fn remaining(state: Option<&Self>, quota: &Quota, t: u64) -> u32 {
        state.map_or(quota.burst(), |tat| tat.available(quota, t))
    }
}
