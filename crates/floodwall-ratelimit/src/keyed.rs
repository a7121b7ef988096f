//! A sharded map from keys to limiter state with a hard capacity and
//! lossless idle eviction, shared by every keyed limiter.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, metric_name};
use hashbrown::{DefaultHashBuilder, HashTable};
use metrics::{Counter, Gauge};
use parking_lot::RwLock;

/// How many slots an insertion into a full shard inspects.
const EVICTION_SAMPLE: usize = 5;

/// Per-key limiter state that a [`KeyedMap`] can hold and evict.
///
/// The state is updated through `&self` (atomics), so known keys are decided
/// under a shared read lock.
pub trait KeyState: Send + Sync + 'static {
    /// What every key's state shares (a window length, a log size), held
    /// once by the map (a copy per shard, so a reconfiguration changes it
    /// shard by shard under the shard's lock).
    type Params: Clone + Send + Sync + 'static;

    /// A fresh state, equivalent to a key never seen.
    fn fresh(params: &Self::Params) -> Self;

    /// The instant (nanoseconds since the limiter's epoch) from which this
    /// state is again equivalent to a fresh one, as seen at `t`: a bucket's
    /// TAT, the end of a window count's relevance, the expiry of a log's
    /// newest entry. A key whose state is idle at `t` may be dropped without
    /// changing any decision; among keys still in debt, the one idle soonest
    /// is the cheapest to forget.
    fn idle_at(&self, params: &Self::Params, t: u64) -> u64;
}

/// Per-key state that can carry itself over to new parameters: what a
/// live reconfiguration of a keyed limiter does to every remembered key
/// (SPECS.md, "Reconfiguration").
pub trait Carry: KeyState {
    /// The parameters to put in force when `new` replaces `old` at `t`
    /// (an algorithm may anchor them to the change instant). By default,
    /// `new` itself.
    fn prepare(old: &Self::Params, new: Self::Params, t: u64) -> Self::Params {
        let _ = (old, t);
        new
    }

    /// Converts this state, held under `old`, to the state under `new`
    /// at `t`. Called with the key's shard locked for writing: no decision
    /// on the key runs meanwhile.
    fn carry(&self, old: &Self::Params, new: &Self::Params, t: u64);
}

/// Keys to limiter state, at most `capacity` keys, never more.
///
/// The map is split into shards behind read-write locks: a known key is
/// decided under its shard's shared read lock (no allocation, no exclusive
/// lock); only a key seen for the first time takes its shard's write lock,
/// briefly. The locks are `parking_lot`'s, which are fair: while a writer
/// waits, new readers of that shard wait too, so a flood of new keys slows
/// decisions for known keys in the same shard by the length of an insertion.
///
/// # Eviction
/// The capacity is split evenly over the shards. A key whose state is idle
/// ([`KeyState::idle_at`] ≤ now) is indistinguishable from an absent key, so
/// dropping it changes no decision. An insertion into a full shard samples a
/// few of its slots and drops the idle ones; if it finds none, and the shard
/// has not been swept for a quarter of its capacity's worth of insertions,
/// it sweeps the whole shard. Only when the shard is still full of keys in
/// debt does it forget the sampled key that would be idle soonest; that key
/// may then be allowed early by up to its remaining debt.
/// [`evicted_in_debt`](Self::evicted_in_debt) counts these. Give `capacity`
/// about twice the number of keys that can be in debt at the same moment
/// and it stays near zero.
pub struct KeyedMap<K, S: KeyState> {
    /// The parameters in force (each shard holds its own copy, changed
    /// with the shard's keys); held while reconfiguring.
    params: parking_lot::Mutex<S::Params>,
    shards: Box<[RwLock<Shard<K, S>>]>,
    shard_shift: u32,
    hasher: DefaultHashBuilder,
    capacity: usize,
    evicted_idle: AtomicU64,
    evicted_in_debt: AtomicU64,
    metrics: KeyedMetrics,
}

struct Shard<K, S: KeyState> {
    params: S::Params,
    table: HashTable<u32>,
    slots: Vec<Slot<K, S>>,
    capacity: usize,
    /// Insertions since the shard was last swept for idle keys.
    since_sweep: usize,
    rng: u64,
}

struct Slot<K, S> {
    key: K,
    state: S,
}

struct KeyedMetrics {
    keys: Gauge,
    evicted_idle: Counter,
    evicted_in_debt: Counter,
}

impl<K: Hash + Eq, S: KeyState> KeyedMap<K, S> {
    /// A map of at most `capacity` keys (at least 1) whose states share
    /// `params`.
    pub fn new(capacity: usize, params: S::Params) -> Self {
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
                    params: params.clone(),
                    table: HashTable::new(),
                    slots: Vec::new(),
                    capacity: base + usize::from(i < extra),
                    since_sweep: 0,
                    rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64),
                })
            })
            .collect();
        Self {
            params: parking_lot::Mutex::new(params),
            shard_shift: 64 - shards.len().trailing_zeros(),
            shards,
            hasher: DefaultHashBuilder::default(),
            capacity,
            evicted_idle: AtomicU64::new(0),
            evicted_in_debt: AtomicU64::new(0),
            metrics: KeyedMetrics {
                keys: Gauge::noop(),
                evicted_idle: Counter::noop(),
                evicted_in_debt: Counter::noop(),
            },
        }
    }

    /// Reports the key count (`floodwall_<layer>_keys`) and evictions
    /// (`floodwall_<layer>_evicted_total`), labelled `name`.
    pub fn with_metrics(mut self, layer: &'static str, name: &str) -> Self {
        let name = name.to_owned();
        self.metrics = KeyedMetrics {
            keys: metrics::gauge!(metric_name(layer, "keys"), LABEL_NAME => name.clone()),
            evicted_idle: metrics::counter!(
                metric_name(layer, "evicted_total"), LABEL_NAME => name.clone(), LABEL_REASON => "idle"
            ),
            evicted_in_debt: metrics::counter!(
                metric_name(layer, "evicted_total"), LABEL_NAME => name, LABEL_REASON => "capacity"
            ),
        };
        self
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard<K, S>> {
        // Bits just below hashbrown's 7-bit tag pick the shard; hashbrown
        // uses the low bits for the bucket.
        let idx = if self.shard_shift == 64 {
            0
        } else {
            ((hash << 7) >> self.shard_shift) as usize
        };
        &self.shards[idx]
    }

    /// Runs `decide` on the parameters and `key`'s state at `t`
    /// (nanoseconds since the limiter's epoch). For a key not in the map,
    /// `decide` runs on a fresh state, which is remembered only if it is no
    /// longer idle afterwards.
    #[inline]
    pub fn with<R>(&self, key: &K, t: u64, decide: impl Fn(&S::Params, &S) -> R) -> R
    where
        K: Clone,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        {
            let guard = shard.read();
            if let Some(&i) = guard
                .table
                .find(hash, |&i| guard.slots[i as usize].key == *key)
            {
                return decide(&guard.params, &guard.slots[i as usize].state);
            }
        }
        self.insert_slow(shard, hash, key, t, decide)
    }

    #[cold]
    fn insert_slow<R>(
        &self,
        shard: &RwLock<Shard<K, S>>,
        hash: u64,
        key: &K,
        t: u64,
        decide: impl Fn(&S::Params, &S) -> R,
    ) -> R
    where
        K: Clone,
    {
        let mut guard = shard.write();
        let shard = &mut *guard;
        if let Some(&i) = shard
            .table
            .find(hash, |&i| shard.slots[i as usize].key == *key)
        {
            return decide(&shard.params, &shard.slots[i as usize].state);
        }
        let state = S::fresh(&shard.params);
        let outcome = decide(&shard.params, &state);
        if state.idle_at(&shard.params, t) <= t {
            // Still equivalent to a fresh state: nothing to remember.
            return outcome;
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
            state,
        });
        shard.since_sweep += 1;
        let slots = &shard.slots;
        shard
            .table
            .insert_unique(hash, idx, |&i| self.hasher.hash_one(&slots[i as usize].key));
        self.metrics.keys.increment(1.0);
        outcome
    }

    /// Runs `inspect` on the parameters and `key`'s state if the key is
    /// remembered; never inserts.
    pub fn get<R>(&self, key: &K, inspect: impl FnOnce(&S::Params, &S) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let guard = self.shard(hash).read();
        guard
            .table
            .find(hash, |&i| guard.slots[i as usize].key == *key)
            .map(|&i| inspect(&guard.params, &guard.slots[i as usize].state))
    }

    /// Replaces the parameters by `params` at `t`, carrying every
    /// remembered key's state over ([`Carry`]). Shard by shard, each under
    /// its write lock: a decision on a key sees the old parameters and
    /// state or the new ones, never a mix; decisions on a shard wait while
    /// it is converted (about 10 ns per key it holds). Reconfigurations run
    /// one at a time.
    pub fn reconfigure(&self, params: S::Params, t: u64)
    where
        S: Carry,
    {
        let mut current = self.params.lock();
        let params = S::prepare(&current, params, t);
        for shard in self.shards.iter() {
            let mut guard = shard.write();
            let shard = &mut *guard;
            for slot in &shard.slots {
                slot.state.carry(&shard.params, &params, t);
            }
            shard.params = params.clone();
        }
        *current = params;
    }

    /// Makes room in a full shard: drops idle keys among a few sampled slots,
    /// else sweeps the shard if it has not been swept for a quarter of its
    /// capacity's worth of insertions, else forgets the sampled key that
    /// would be idle soonest.
    fn make_room(&self, shard: &mut Shard<K, S>, t: u64) {
        let mut victim: Option<(usize, u64)> = None;
        let mut dropped = false;
        for _ in 0..EVICTION_SAMPLE {
            if shard.slots.is_empty() {
                break;
            }
            let i = (next_random(&mut shard.rng) % shard.slots.len() as u64) as usize;
            let idle_at = shard.slots[i].state.idle_at(&shard.params, t);
            if idle_at <= t {
                self.remove_slot(shard, i);
                self.count_idle(1);
                dropped = true;
                // Indices past a removal may have moved.
                victim = None;
                continue;
            }
            if victim.is_none_or(|(_, best)| idle_at < best) {
                victim = Some((i, idle_at));
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
    fn remove_slot(&self, shard: &mut Shard<K, S>, i: usize) {
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
    fn sweep_shard(&self, shard: &mut Shard<K, S>, t: u64) -> usize {
        shard.since_sweep = 0;
        let before = shard.slots.len();
        let params = &shard.params;
        shard.slots.retain(|s| s.state.idle_at(params, t) > t);
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

    /// Drops every key whose state is idle at `t` and releases the memory
    /// they held. Decisions do not change. Takes each shard's write lock in
    /// turn.
    pub fn sweep(&self, t: u64) {
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

impl<K, S: KeyState> KeyedMap<K, S> {
    /// What every key's state shares, as last set.
    pub fn params(&self) -> S::Params {
        self.params.lock().clone()
    }

    /// Keys currently remembered (never more than [`capacity`](Self::capacity)).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().slots.len()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this map remembers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Heap bytes held right now: the slots (each a key and its state) and
    /// the hash tables. Heap owned by keys or states themselves (a
    /// `String`'s buffer, a log's ring) is not included.
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.slots.capacity() * std::mem::size_of::<Slot<K, S>>() + s.table.allocation_size()
            })
            .sum()
    }

    /// Keys dropped because their state was idle (lossless).
    pub fn evicted_idle(&self) -> u64 {
        self.evicted_idle.load(Ordering::Relaxed)
    }

    /// Keys forgotten while still in debt because their shard was full.
    pub fn evicted_in_debt(&self) -> u64 {
        self.evicted_in_debt.load(Ordering::Relaxed)
    }
}

impl<K, S: KeyState> fmt::Debug for KeyedMap<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedMap")
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
