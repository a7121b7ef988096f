//! One limiter per key, for every algorithm: [`PerKey`] over a [`KeyRule`].

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use floodwall_core::ConfigError;

use crate::time::nanos_since;
use crate::{Carry, Denied, KeyState, KeyedLimit, KeyedMap};

/// How one key is limited: the decision an algorithm makes on one key's
/// state, at `t` nanoseconds since the limiter's epoch.
///
/// Implemented by each algorithm's per-key state (a GCRA TAT, a window
/// counter, a log); [`PerKey`] does everything else (the key map, its
/// bound and eviction, the clock, the [`KeyedLimit`] wiring).
pub trait KeyRule: KeyState {
    /// What a request scheduled to start later holds, to give back if it is
    /// cancelled; `()` for rules that never schedule.
    type Permit: Send + Default + 'static;

    /// Refuses `n` units before any state is looked up or made for the key
    /// (a request no key could ever take, so a refused key costs no memory).
    /// By default every `n` may be tried.
    ///
    /// # Errors
    /// [`Denied`] for a request that can never conform.
    #[inline]
    fn admissible(params: &Self::Params, n: u32) -> Result<(), Denied> {
        let _ = (params, n);
        Ok(())
    }

    /// Takes `n` units for this key at `t` if the rule allows them now.
    ///
    /// # Errors
    /// [`Denied`] with the rule's retry-after.
    fn acquire(&self, params: &Self::Params, t: u64, n: u32) -> Result<(), Denied>;

    /// Schedules `n` units to start within `max_wait`; returns the wait. By
    /// default a rule does not schedule: it decides now.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    fn reserve(
        &self,
        params: &Self::Params,
        t: u64,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Self::Permit), Denied> {
        let _ = max_wait;
        self.acquire(params, t, n)
            .map(|()| (Duration::ZERO, Self::Permit::default()))
    }

    /// Gives back what a cancelled scheduled request held, if the rule can.
    fn refund(&self, params: &Self::Params, permit: Self::Permit, t: u64) {
        let _ = (params, permit, t);
    }

    /// How many single units the key may take at `t`; `state` is `None` for
    /// a key not remembered (a fresh key).
    fn remaining(state: Option<&Self>, params: &Self::Params, t: u64) -> u32;
}

/// One limiter per key (per client IP, user, room, ...) for any algorithm
/// `S`, remembering at most `capacity` keys.
///
/// The named keyed limiters are this type: `KeyedTokenBucket<K>` is
/// `PerKey<K, Tat>`, the sliding-window crate's keyed counter and log are
/// `PerKey<K, CounterState>` and `PerKey<K, LogState>`, and so on. Key
/// count, memory and evictions are read from [`keys`](Self::keys).
///
/// # Memory
/// At most `capacity` keys, never more (see [`KeyedMap`] for the eviction
/// rule). A key whose state is idle is indistinguishable from an unknown key
/// and is dropped without changing any decision; a key forgotten while in
/// debt (counted by [`KeyedMap::evicted_in_debt`]) may be admitted early by
/// up to its debt.
///
/// ```
/// use floodwall_ratelimit::{KeyedTokenBucket, Quota};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let per_user = KeyedTokenBucket::with_epoch(Quota::per_second(2)?, 10_000, t0);
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_ok());
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_ok());
/// assert!(per_user.try_acquire(&"alice", t0, 1).is_err());
/// assert!(per_user.try_acquire(&"bob", t0, 1).is_ok(), "bob has his own bucket");
/// assert_eq!(per_user.remaining(&"bob", t0), 1);
/// assert_eq!(per_user.keys().len(), 2);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct PerKey<K, S: KeyState> {
    map: KeyedMap<K, S>,
    epoch: Instant,
}

impl<K: Hash + Eq, S: KeyRule> PerKey<K, S> {
    /// Per-key limiters sharing `params`, remembering at most `capacity`
    /// keys (at least 1), with the clock starting now.
    pub fn new(params: impl Into<S::Params>, capacity: usize) -> Self {
        Self::with_epoch(params, capacity, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(params: impl Into<S::Params>, capacity: usize, epoch: Instant) -> Self {
        Self {
            map: KeyedMap::new(capacity, params.into()),
            epoch,
        }
    }

    /// Reports the key count and evictions as metrics
    /// `floodwall_<layer>_keys{name}` and
    /// `floodwall_<layer>_evicted_total{name, reason}`. The layers do this
    /// with their own prefix and name.
    pub fn with_metrics(mut self, layer: &'static str, name: &str) -> Self {
        self.map = self.map.with_metrics(layer, name);
        self
    }

    /// Takes `n` units for `key` at `now` if its limiter allows them.
    ///
    /// # Errors
    /// [`Denied`] as the algorithm decides.
    #[inline]
    pub fn try_acquire(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied>
    where
        K: Clone,
    {
        let t = nanos_since(self.epoch, now);
        self.map.with(key, t, |params, state| {
            S::admissible(params, n)?;
            state.acquire(params, t, n)
        })
    }

    /// Schedules `n` units for `key` to start within `max_wait` of `now`;
    /// returns the wait and what to hand back to [`refund`](Self::refund)
    /// if the request is cancelled before it starts.
    ///
    /// # Errors
    /// [`Denied`] as the algorithm decides.
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, S::Permit), Denied>
    where
        K: Clone,
    {
        let t = nanos_since(self.epoch, now);
        self.map.with(key, t, |params, state| {
            S::admissible(params, n)?;
            state.reserve(params, t, n, max_wait)
        })
    }

    /// Gives back a cancelled reservation of `key`'s, if the algorithm can
    /// and the key is still remembered.
    pub fn refund(&self, key: &K, permit: S::Permit, now: Instant) {
        let t = nanos_since(self.epoch, now);
        self.map
            .get(key, |params, state| state.refund(params, permit, t));
    }

    /// How many single units `key` may take at `now` (a fresh key's full
    /// allowance for a key not remembered).
    pub fn remaining(&self, key: &K, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        self.map
            .get(key, |params, state| S::remaining(Some(state), params, t))
            .unwrap_or_else(|| S::remaining(None, &self.map.params(), t))
    }

    /// Reads `key`'s state at `now` through `inspect(state, params, t)`;
    /// `None` for a key not remembered. For queries of one algorithm (a
    /// bucket's time to full, a shaper's queue length).
    pub fn inspect<R>(
        &self,
        key: &K,
        now: Instant,
        inspect: impl FnOnce(&S, &S::Params, u64) -> R,
    ) -> Option<R> {
        let t = nanos_since(self.epoch, now);
        self.map.get(key, |params, state| inspect(state, params, t))
    }

    /// Replaces the parameters (a quota, a window) by `params` from `now`
    /// on, carrying every remembered key's state over by the algorithm's
    /// rule ([`Carry`]; for token buckets, the tokens each key has now,
    /// capped at the new burst). Keys not remembered start fresh under
    /// the new parameters. See [`KeyedMap::reconfigure`] for what it costs
    /// deciders.
    pub fn reconfigure(&self, params: impl Into<S::Params>, now: Instant)
    where
        S: Carry,
    {
        self.map
            .reconfigure(params.into(), nanos_since(self.epoch, now));
    }

    /// Drops every key idle at `now`, releasing its memory. Decisions do not
    /// change.
    pub fn sweep(&self, now: Instant) {
        self.map.sweep(nanos_since(self.epoch, now));
    }
}

impl<K, S: KeyState> PerKey<K, S> {
    /// The key map: count, capacity, memory, evictions.
    pub fn keys(&self) -> &KeyedMap<K, S> {
        &self.map
    }

    /// What every key's limiter shares (a quota, a window), as last set.
    pub fn params(&self) -> S::Params {
        self.map.params()
    }

    /// The instant the limiter's clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }
}

impl<K, S> fmt::Debug for PerKey<K, S>
where
    S: KeyState,
    S::Params: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerKey")
            .field("params", &self.map.params())
            .field("map", &self.map)
            .finish()
    }
}

impl<K, S> KeyedLimit for PerKey<K, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: KeyRule,
{
    type Key = K;
    type Permit = S::Permit;

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
    ) -> Result<(Duration, S::Permit), Denied> {
        self.reserve(key, now, n, max_wait)
    }

    fn refund_key(&self, key: &K, permit: S::Permit, now: Instant) {
        self.refund(key, permit, now);
    }
}

/// How many keys a keyed rate-limit layer remembers unless told otherwise.
pub const DEFAULT_KEY_CAPACITY: usize = 100_000;

/// [`DEFAULT_KEY_CAPACITY`], for configurations' `serde(default = ..)`.
pub fn default_key_capacity() -> usize {
    DEFAULT_KEY_CAPACITY
}

/// A keyed layer's key capacity, validated: at least one key.
///
/// # Errors
/// A [`ConfigError`] for `capacity` when it is 0.
///
/// ```
/// assert_eq!(floodwall_ratelimit::key_capacity(10), Ok(10));
/// assert_eq!(floodwall_ratelimit::key_capacity(0).unwrap_err().field(), "capacity");
/// ```
pub fn key_capacity(capacity: usize) -> Result<usize, ConfigError> {
    match capacity {
        0 => Err(ConfigError::new("capacity", "must be at least 1 key")),
        n => Ok(n),
    }
}
