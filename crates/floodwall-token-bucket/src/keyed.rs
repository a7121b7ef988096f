use floodwall_core::sync::{AtomicU64, Ordering};
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use floodwall_ratelimit::{Denied, KeyState, KeyedLimit, KeyedMap};
use tokio::time::Instant;

use crate::Quota;
use crate::bucket::params_of;
use crate::gcra::{Params, Reservation, max_wait_ns, nanos_since};

/// A key's bucket: its TAT, idle once the TAT is in the past.
struct Tat(AtomicU64);

impl KeyState for Tat {
    type Params = ();

    fn fresh((): &()) -> Self {
        Tat(AtomicU64::new(0))
    }

    fn idle_at(&self, (): &(), _t: u64) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One token bucket per key (per client IP, user, room, ...), with a hard cap
/// on how many keys are remembered.
///
/// Each key's state is one atomic TAT, decided exactly as in
/// [`TokenBucket`](crate::TokenBucket): a known key costs a shared read lock
/// on one shard and one CAS; only a key seen for the first time takes its
/// shard's write lock.
///
/// # Memory
/// At most `capacity` keys, never more (see
/// [`KeyedMap`](floodwall_ratelimit::KeyedMap) for the eviction rule). A key
/// whose bucket has refilled is indistinguishable from an unknown key and is
/// dropped without changing any decision; a key forgotten while in debt
/// ([`evicted_in_debt`](Self::evicted_in_debt)) may be admitted early by up
/// to one burst. Give `capacity` about twice the number of keys active within
/// one burst window.
///
/// ```
/// use floodwall_token_bucket::{KeyedTokenBucket, Quota};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let per_user = KeyedTokenBucket::with_epoch(Quota::per_second(2)?, 10_000, t0);
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_ok());
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_ok());
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_err());
/// assert!(per_user.try_acquire(&"bob", t0, 1).is_ok(), "bob has his own bucket");
/// assert_eq!(per_user.len(), 2);
/// # Ok::<(), floodwall_token_bucket::QuotaError>(())
/// ```
pub struct KeyedTokenBucket<K> {
    map: KeyedMap<K, Tat>,
    epoch: Instant,
    params: Params,
    quota: Quota,
}

impl<K: Hash + Eq> KeyedTokenBucket<K> {
    /// Per-key buckets with `quota`, remembering at most `capacity` keys
    /// (at least 1), with the clock starting now.
    pub fn new(quota: Quota, capacity: usize) -> Self {
        Self::with_epoch(quota, capacity, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(quota: Quota, capacity: usize, epoch: Instant) -> Self {
        Self {
            map: KeyedMap::new(capacity, ()),
            epoch,
            params: params_of(&quota),
            quota,
        }
    }

    /// Reports the key count and evictions as metrics labelled `name`
    /// (`floodwall_token_bucket_keys`, `floodwall_token_bucket_evicted_total`).
    /// Token-bucket layers do this with their own name.
    pub fn with_metrics(self, name: &str) -> Self {
        self.with_metric_names(crate::METRIC_PREFIX, name)
    }

    /// Reports the key count and evictions under other metric `names`
    /// (for limiters built on this one, such as the leaky bucket).
    pub fn with_metric_names(mut self, layer: &'static str, name: &str) -> Self {
        self.map = self.map.with_metrics(layer, name);
        self
    }

    /// Takes `n` tokens from `key`'s bucket at `now` if they are there.
    ///
    /// # Errors
    /// As [`TokenBucket::try_acquire`](crate::TokenBucket::try_acquire).
    #[inline]
    pub fn try_acquire(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied>
    where
        K: Clone,
    {
        let t = nanos_since(self.epoch, now);
        self.map
            .with(key, t, |tat| self.params.step(&tat.0, t, n, 0).map(|_| ()))
    }

    /// Reserves `n` tokens from `key`'s bucket, allowing a start up to
    /// `max_wait` later. See [`TokenBucket::reserve`](crate::TokenBucket::reserve).
    ///
    /// # Errors
    /// As [`TokenBucket::reserve`](crate::TokenBucket::reserve).
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<Reservation, Denied>
    where
        K: Clone,
    {
        let t = nanos_since(self.epoch, now);
        let max_wait = max_wait_ns(max_wait);
        self.map
            .with(key, t, |tat| self.params.step(&tat.0, t, n, max_wait))
    }

    /// Gives back the tokens of `key`'s reservation if it is still that
    /// key's newest; returns whether it was. See
    /// [`TokenBucket::cancel`](crate::TokenBucket::cancel). Does nothing if
    /// the key has since been forgotten.
    pub fn cancel(&self, key: &K, reservation: Reservation, now: Instant) -> bool {
        let t = nanos_since(self.epoch, now);
        self.map
            .get(key, |tat| self.params.cancel(&tat.0, reservation, t))
            .unwrap_or(false)
    }

    /// How long until `key`'s bucket is full again (zero for an unknown key).
    pub fn time_to_full(&self, key: &K, now: Instant) -> Duration {
        let t = nanos_since(self.epoch, now);
        let tat = self
            .map
            .get(key, |tat| tat.0.load(Ordering::Relaxed))
            .unwrap_or(0);
        Duration::from_nanos(tat.saturating_sub(t))
    }

    /// Whole tokens available to `key` at `now` (the burst for an unknown key).
    pub fn available(&self, key: &K, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        let tat = self
            .map
            .get(key, |tat| tat.0.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.params.available(tat, t)
    }

    /// Drops every key whose bucket has refilled by `now` and releases the
    /// memory they held. Decisions do not change.
    pub fn sweep(&self, now: Instant) {
        self.map.sweep(nanos_since(self.epoch, now));
    }
}

impl<K> KeyedTokenBucket<K> {
    /// Keys currently remembered (never more than [`capacity`](Self::capacity)).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most keys this limiter remembers.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Heap bytes held by the key map right now (keys, TATs, hash tables).
    pub fn memory_bytes(&self) -> usize {
        self.map.memory_bytes()
    }

    /// Keys dropped because their bucket had refilled (lossless).
    pub fn evicted_idle(&self) -> u64 {
        self.map.evicted_idle()
    }

    /// Keys forgotten while still in debt because their shard was full (each
    /// may be admitted early by up to its debt).
    pub fn evicted_in_debt(&self) -> u64 {
        self.map.evicted_in_debt()
    }

    /// The quota every key's bucket enforces.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }
}

impl<K> fmt::Debug for KeyedTokenBucket<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenBucket")
            .field("quota", &self.quota)
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl<K> KeyedLimit for KeyedTokenBucket<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
    type Permit = Reservation;

    #[inline]
    fn acquire_key(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(key, now, n)
    }

    fn reserve_key(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Reservation), Denied> {
        let reservation = self.reserve(key, now, n, max_wait)?;
        Ok((reservation.wait(), reservation))
    }

    fn refund_key(&self, key: &K, reservation: Reservation, now: Instant) {
        self.cancel(key, reservation, now);
    }
}
