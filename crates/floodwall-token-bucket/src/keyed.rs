use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, TOKEN_BUCKET_EVICTED, TOKEN_BUCKET_KEYS};
use hashbrown::{DefaultHashBuilder, HashTable};
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::bucket::params_of;
use crate::gcra::{Params, Reservation, max_wait_ns, nanos_since};
use crate::{Denied, Quota};

/// How many slots an insertion into a full shard inspects.
const EVICTION_SAMPLE: usize = 5;

/// One token bucket per key (per client IP, user, room, ...), with a hard cap
/// on how many keys are remembered.
///
/// Each key's state is one atomic TAT, exactly as in
/// [`TokenBucket`](crate::TokenBucket). The map is split into shards behind
/// read-write locks: a known key is decided under its shard's shared read
/// lock with one CAS (no allocation, no exclusive lock); only a key seen for
/// the first time takes its shard's write lock, briefly. The locks are
/// `parking_lot`'s, which are fair: while a writer waits, new readers of that
/// shard wait too, so a flood of new keys slows decisions for known keys in
/// the same shard by the length of an insertion.
///
/// # Memory
/// At most `capacity` keys are stored, never more; the capacity is split
/// evenly over the shards. A key whose bucket has refilled (TAT ≤ now) is
/// indistinguishable from an absent key, so dropping it changes no
/// decision. Every insertion into a full shard samples a few of its slots
/// and drops the idle ones; if it finds none, and the shard has not been
/// swept recently, it sweeps the whole shard for idle keys. Only when the
/// shard is still full of keys in debt does it forget the sampled key
/// closest to refilling; that key may then be admitted early by up to its
/// remaining debt (at most one burst). [`evicted_in_debt`](Self::evicted_in_debt)
/// counts these. Give `capacity` comfortable headroom (about twice the
/// number of keys that can be in debt at the same moment, that is keys
/// active within one burst window) and it stays at zero.
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
    shards: Box<[RwLock<Shard<K>>]>,
    shard_shift: u32,
    hasher: DefaultHashBuilder,
    epoch: Instant,
    params: Params,
    quota: Quota,
    capacity: usize,
    evicted_idle: AtomicU64,
    evicted_in_debt: AtomicU64,
    metrics: KeyedMetrics,
}

struct Shard<K> {
    table: HashTable<u32>,
    slots: Vec<Slot<K>>,
    capacity: usize,
    /// Insertions since the shard was last swept for idle keys.
    since_sweep: usize,
    rng: u64,
}

struct Slot<K> {
    key: K,
    tat: AtomicU64,
}

/// Metric handles of a keyed limiter (no-ops unless named by a layer).
struct KeyedMetrics {
    keys: Gauge,
    evicted_idle: Counter,
    evicted_in_debt: Counter,
}

impl KeyedMetrics {
    fn noop() -> Self {
        Self {
            keys: Gauge::noop(),
            evicted_idle: Counter::noop(),
            evicted_in_debt: Counter::noop(),
        }
    }

    fn named(name: &str) -> Self {
        let name = name.to_owned();
        Self {
            keys: metrics::gauge!(TOKEN_BUCKET_KEYS, LABEL_NAME => name.clone()),
            evicted_idle: metrics::counter!(
                TOKEN_BUCKET_EVICTED, LABEL_NAME => name.clone(), LABEL_REASON => "idle"
            ),
            evicted_in_debt: metrics::counter!(
                TOKEN_BUCKET_EVICTED, LABEL_NAME => name, LABEL_REASON => "capacity"
            ),
        }
    }
}

impl<K: Hash + Eq> KeyedTokenBucket<K> {
    /// Per-key buckets with `quota`, remembering at most `capacity` keys
    /// (at least 1), with the clock starting now.
    pub fn new(quota: Quota, capacity: usize) -> Self {
        Self::with_epoch(quota, capacity, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(quota: Quota, capacity: usize, epoch: Instant) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Enough shards that threads rarely meet on one lock, few enough that
        // each shard still holds a useful number of keys.
        let wanted = (parallelism * 8).next_power_of_two().min(256);
        let mut shards = 1usize;
        while shards * 2 <= wanted && capacity / (shards * 2) >= 64 {
            shards *= 2;
        }
        let base = capacity / shards;
        let extra = capacity % shards;
        let shards: Box<[_]> = (0..shards)
            .map(|i| {
                RwLock::new(Shard {
                    table: HashTable::new(),
                    slots: Vec::new(),
                    capacity: base + usize::from(i < extra),
                    since_sweep: 0,
                    rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64),
                })
            })
            .collect();
        Self {
            shard_shift: 64 - shards.len().trailing_zeros(),
            shards,
            hasher: DefaultHashBuilder::default(),
            epoch,
            params: params_of(&quota),
            quota,
            capacity,
            evicted_idle: AtomicU64::new(0),
            evicted_in_debt: AtomicU64::new(0),
            metrics: KeyedMetrics::noop(),
        }
    }

    /// Reports the key count and evictions as metrics labelled `name`
    /// (`floodwall_token_bucket_keys`, `floodwall_token_bucket_evicted_total`).
    /// Token-bucket layers do this with their own name.
    pub fn with_metrics(mut self, name: &str) -> Self {
        self.metrics = KeyedMetrics::named(name);
        self
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard<K>> {
        // Bits just below hashbrown's 7-bit tag pick the shard; hashbrown
        // uses the low bits for the bucket.
        let idx = if self.shard_shift == 64 {
            0
        } else {
            ((hash << 7) >> self.shard_shift) as usize
        };
        &self.shards[idx]
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
        self.step(key, now, n, 0).map(|_| ())
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
        self.step(key, now, n, max_wait_ns(max_wait))
    }

    fn step(&self, key: &K, now: Instant, n: u32, max_wait: u64) -> Result<Reservation, Denied>
    where
        K: Clone,
    {
        let t = nanos_since(self.epoch, now);
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        {
            let guard = shard.read();
            if let Some(&i) = guard
                .table
                .find(hash, |&i| guard.slots[i as usize].key == *key)
            {
                let cell = &guard.slots[i as usize].tat;
                return self.params.step(cell, t, n, max_wait);
            }
        }
        self.insert_slow(shard, hash, key, t, n, max_wait)
    }

    #[cold]
    fn insert_slow(
        &self,
        shard: &RwLock<Shard<K>>,
        hash: u64,
        key: &K,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Result<Reservation, Denied>
    where
        K: Clone,
    {
        let mut guard = shard.write();
        let shard = &mut *guard;
        if let Some(&i) = shard
            .table
            .find(hash, |&i| shard.slots[i as usize].key == *key)
        {
            let cell = &shard.slots[i as usize].tat;
            return self.params.step(cell, t, n, max_wait);
        }
        // An absent key has a full bucket: decide on a fresh cell.
        let cell = AtomicU64::new(0);
        let reservation = self.params.step(&cell, t, n, max_wait)?;
        if cell.load(Ordering::Relaxed) <= t {
            // Weight 0: the bucket is still full, so there is nothing to remember.
            return Ok(reservation);
        }
        if shard.slots.len() >= shard.capacity {
            self.make_room(shard, t);
        }
        let idx = shard.slots.len() as u32;
        if shard.slots.len() == shard.slots.capacity() {
            // Grow by doubling, but never past the shard's share of the cap.
            let target = (shard.slots.len() * 2).max(4).min(shard.capacity);
            shard
                .slots
                .reserve_exact(target.saturating_sub(shard.slots.len()).max(1));
        }
        shard.slots.push(Slot {
            key: key.clone(),
            tat: cell,
        });
        shard.since_sweep += 1;
        let slots = &shard.slots;
        shard
            .table
            .insert_unique(hash, idx, |&i| self.hasher.hash_one(&slots[i as usize].key));
        self.metrics.keys.increment(1.0);
        Ok(reservation)
    }

    /// Makes room in a full shard: drops idle keys among a few sampled slots,
    /// else sweeps the shard if it has not been swept for a quarter of its
    /// capacity's worth of insertions, else forgets the sampled key closest
    /// to refilling.
    fn make_room(&self, shard: &mut Shard<K>, t: u64) {
        let mut victim: Option<(usize, u64)> = None;
        let mut dropped = false;
        for _ in 0..EVICTION_SAMPLE {
            if shard.slots.is_empty() {
                break;
            }
            let i = (next_random(&mut shard.rng) % shard.slots.len() as u64) as usize;
            let tat = shard.slots[i].tat.load(Ordering::Relaxed);
            if tat <= t {
                self.remove_slot(shard, i);
                self.count_idle(1);
                dropped = true;
                // Indices past a removal may have moved.
                victim = None;
                continue;
            }
            if victim.is_none_or(|(_, best)| tat < best) {
                victim = Some((i, tat));
            }
        }
        if dropped || shard.slots.len() < shard.capacity {
            return;
        }
        if shard.since_sweep >= shard.capacity.div_ceil(4) && self.sweep_shard(shard, t) > 0 {
            return;
        }
        let i = match victim {
            Some((i, _)) => i,
            None => (next_random(&mut shard.rng) % shard.slots.len() as u64) as usize,
        };
        self.remove_slot(shard, i);
        self.evicted_in_debt.fetch_add(1, Ordering::Relaxed);
        self.metrics.evicted_in_debt.increment(1);
        self.metrics.keys.decrement(1.0);
    }

    fn count_idle(&self, n: usize) {
        self.evicted_idle.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.evicted_idle.increment(n as u64);
        self.metrics.keys.decrement(n as f64);
    }

    /// Removes slot `i`, moving the last slot into its place.
    fn remove_slot(&self, shard: &mut Shard<K>, i: usize) {
        let last = shard.slots.len() - 1;
        let hash = self.hasher.hash_one(&shard.slots[i].key);
        if let Ok(entry) = shard.table.find_entry(hash, |&j| j as usize == i) {
            entry.remove();
        }
        if i != last {
            let moved_hash = self.hasher.hash_one(&shard.slots[last].key);
            if let Some(j) = shard.table.find_mut(moved_hash, |&j| j as usize == last) {
                *j = i as u32;
            }
        }
        shard.slots.swap_remove(i);
    }

    /// Drops every idle key of one shard and rebuilds its table; returns how
    /// many were dropped.
    fn sweep_shard(&self, shard: &mut Shard<K>, t: u64) -> usize {
        shard.since_sweep = 0;
        let before = shard.slots.len();
        shard.slots.retain(|s| s.tat.load(Ordering::Relaxed) > t);
        let dropped = before - shard.slots.len();
        if dropped > 0 {
            shard.table.clear();
            let slots = &shard.slots;
            for (i, s) in slots.iter().enumerate() {
                let h = self.hasher.hash_one(&s.key);
                shard.table.insert_unique(h, i as u32, |&j| {
                    self.hasher.hash_one(&slots[j as usize].key)
                });
            }
            self.count_idle(dropped);
        }
        dropped
    }

    /// Gives back the tokens of `key`'s reservation if it is still that
    /// key's newest; returns whether it was. See
    /// [`TokenBucket::cancel`](crate::TokenBucket::cancel). Does nothing if
    /// the key has since been forgotten.
    pub fn cancel(&self, key: &K, reservation: Reservation, now: Instant) -> bool {
        let t = nanos_since(self.epoch, now);
        let hash = self.hasher.hash_one(key);
        let guard = self.shard(hash).read();
        guard
            .table
            .find(hash, |&i| guard.slots[i as usize].key == *key)
            .is_some_and(|&i| {
                self.params
                    .cancel(&guard.slots[i as usize].tat, reservation, t)
            })
    }

    /// Whole tokens available to `key` at `now` (the burst for an unknown key).
    pub fn available(&self, key: &K, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        let hash = self.hasher.hash_one(key);
        let guard = self.shard(hash).read();
        let tat = guard
            .table
            .find(hash, |&i| guard.slots[i as usize].key == *key)
            .map_or(0, |&i| guard.slots[i as usize].tat.load(Ordering::Relaxed));
        self.params.available(tat, t)
    }

    /// Drops every key whose bucket has refilled by `now` and releases the
    /// memory they held. Decisions do not change. Takes each shard's write
    /// lock in turn.
    pub fn sweep(&self, now: Instant) {
        let t = nanos_since(self.epoch, now);
        for shard in self.shards.iter() {
            let mut guard = shard.write();
            let shard = &mut *guard;
            if self.sweep_shard(shard, t) > 0 {
                shard.slots.shrink_to_fit();
                let slots = &shard.slots;
                shard
                    .table
                    .shrink_to_fit(|&j| self.hasher.hash_one(&slots[j as usize].key));
            }
        }
    }
}

impl<K> KeyedTokenBucket<K> {
    /// Keys currently remembered (never more than [`capacity`](Self::capacity)).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().slots.len()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this limiter remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Heap bytes held by the key map right now: the slots (each a key and
    /// an 8-byte TAT) and the hash tables. Heap owned by the keys themselves
    /// (a `String`'s buffer) is not included.
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.slots.capacity() * std::mem::size_of::<Slot<K>>() + s.table.allocation_size()
            })
            .sum()
    }

    /// Keys dropped because their bucket had refilled (lossless).
    pub fn evicted_idle(&self) -> u64 {
        self.evicted_idle.load(Ordering::Relaxed)
    }

    /// Keys forgotten while still in debt because their shard was full (each
    /// may be admitted early by up to its debt).
    pub fn evicted_in_debt(&self) -> u64 {
        self.evicted_in_debt.load(Ordering::Relaxed)
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
            .field("capacity", &self.capacity)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// xorshift64: cheap, and good enough to pick eviction samples.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
