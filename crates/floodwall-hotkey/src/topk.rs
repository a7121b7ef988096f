//! HeavyKeeper Top-K (Gong et al., USENIX ATC 2018): which keys are heavy,
//! in bounded memory, sans-IO, lock-free to count into.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::ConfigError;
use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

/// A [`HeavyKeeper`]'s configuration (SPECS.md, "HeavyKeeper Top-K").
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TopKConfig {
    /// How many heavy keys are kept. Default 100.
    pub k: usize,
    /// Buckets per row. Default 2,048.
    pub width: usize,
    /// Rows: each key has one bucket per row. Default 4.
    pub depth: usize,
    /// The decay base `b`: a bucket holding another key with count `c`
    /// decays with probability `b^-c`. Default 1.08 (the paper's).
    pub decay: f64,
    /// Every count is halved this often, so heavy means heavy *now*: a key
    /// that stops arriving loses half its weight per period (the period is
    /// the view's half-life; a new key arriving as fast as an old one
    /// overtakes it within two periods). `None`: never. Default 500 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub fade_every: Option<Duration>,
}

impl Default for TopKConfig {
    fn default() -> Self {
        Self {
            k: 100,
            width: 2_048,
            depth: 4,
            decay: 1.08,
            fade_every: Some(Duration::from_millis(500)),
        }
    }
}

impl TopKConfig {
    /// aegis's parameters for `k`: width `1024 · ln k`, depth 4, decay
    /// probability `0.925^c` (base 1/0.925 ≈ 1.081), no fading.
    pub fn aegis(k: usize) -> Self {
        Self {
            k,
            width: ((1024.0 * (k.max(2) as f64).ln()) as usize).max(1),
            depth: 4,
            decay: 1.0 / 0.925,
            fade_every: None,
        }
    }

    /// The sketch's memory: `depth × width` buckets of 8 bytes (the
    /// top-k list adds `k` keys).
    pub fn sketch_bytes(&self) -> usize {
        self.depth * self.width * std::mem::size_of::<AtomicU64>()
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for a `k`, `width` or `depth` of 0 (or a depth over
    /// 16), a decay base not finite and above 1, or a zero fade period.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(ConfigError::new("k", "must be at least 1"));
        }
        if self.width == 0 {
            return Err(ConfigError::new("width", "must be at least 1"));
        }
        if !(1..=16).contains(&self.depth) {
            return Err(ConfigError::new("depth", "must be in 1..=16").with_value(self.depth));
        }
        if !(self.decay.is_finite() && self.decay > 1.0) {
            return Err(
                ConfigError::new("decay", "must be finite and above 1").with_value(self.decay)
            );
        }
        if self.fade_every.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("fade_every", "must be above zero"));
        }
        Ok(())
    }
}

/// A bucket in one `u64`: the fingerprint in the high 32 bits (its top bit
/// set while the key holding the bucket is in the top-k list), the count in
/// the low 32.
const MEMBER: u64 = 1 << 63;
const FP_MASK: u64 = 0x7FFF_FFFF << 32;

fn pack(fingerprint: u64, count: u64) -> u64 {
    fingerprint | count
}

fn count_of(bucket: u64) -> u64 {
    bucket & 0xFFFF_FFFF
}

fn fingerprint_of(bucket: u64) -> u64 {
    bucket & FP_MASK
}

/// A key's hash, mixed (the splitmix64 finalizer over a seeded FxHash-
/// style fold): the row indices and the fingerprint come from it.
#[derive(Debug, Clone, Copy)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        splitmix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517C_C1B7_2722_0A95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy)]
struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = Mix;

    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

/// Threads seeded one after another.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each thread's own generator for the decay draws: no shared line.
    static RNG: Cell<u64> = Cell::new(
        splitmix(THREADS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
    );
}

/// A uniform draw in `[0, 2^64)` (xorshift64*).
fn draw() -> u64 {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// The bucket of hash `h` in `row`: the hash re-mixed per row.
#[inline]
fn index(h: u64, row: usize, width: usize) -> usize {
    let z =
        (h ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (((z >> 32) * width as u64) >> 32) as usize
}

/// The top-k list: members by hash.
type Members<K> = HashMap<u64, K, std::hash::BuildHasherDefault<Identity>>;

/// Hashes already mixed: the members are keyed by them.
#[derive(Debug, Clone, Copy, Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The HeavyKeeper Top-K sketch (Gong et al., "HeavyKeeper: An Accurate
/// Algorithm for Finding Top-k Elephant Flows", USENIX ATC 2018).
///
/// - `depth` rows of `width` buckets (fingerprint, count); a key maps to
///   one bucket per row. Its own bucket counts it up; an empty one takes
///   it; a bucket held by another key **decays** with probability
///   `b^-count`, and the key takes it over at zero, so heavy keys keep
///   their buckets and light ones wear each other away. A key's estimate
///   is the largest count of a bucket holding its fingerprint: close to its
///   true count for heavy keys.
/// - The `k` keys with the largest estimates are kept; their estimates are
///   read from the buckets when the list is read.
/// - **Fading**: every `fade_every`, all counts are halved, so the top-k is
///   what is heavy now.
/// - **Lock-free counting**: each bucket is one `AtomicU64` updated by
///   compare-and-swap, and the decay draws come from a per-thread
///   generator, so concurrent adds never wait for a lock. The top-k list
///   is behind a lock taken only when a key that is not a member may enter
///   it (its estimate above the list's smallest): a member is known from a
///   bit in its buckets. (aegis takes one mutex around every add.)
///
/// Memory: [`TopKConfig::sketch_bytes`] (`depth × width × 8`), plus `k`
/// keys. Sans-IO: [`add`](Self::add) takes the instant.
///
/// ```
/// use floodwall_hotkey::{HeavyKeeper, TopKConfig};
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// let topk = HeavyKeeper::new(TopKConfig { k: 2, fade_every: None, ..TopKConfig::default() })?;
/// for room in [7u64, 7, 7, 3, 7, 3, 9] {
///     topk.add(&room, now);
/// }
/// assert_eq!(topk.top(), vec![(7, 4), (3, 2)]);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct HeavyKeeper<K> {
    config: TopKConfig,
    buckets: Box<[AtomicU64]>,
    /// `b^-c` in 2^-64 units, for every count it is not zero at.
    thresholds: Box<[u64]>,
    members: Mutex<Members<K>>,
    /// A lower bound of the smallest member's estimate while the list is
    /// full (0 while it is not): non-members at or under it stay out
    /// without taking the lock.
    admit_above: AtomicU32,
    hasher: Seeded,
    epoch: Instant,
    /// The next fade (ns since the epoch), `u64::MAX` for never.
    next_fade: AtomicU64,
}

impl<K> std::fmt::Debug for HeavyKeeper<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeavyKeeper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> HeavyKeeper<K> {
    /// An empty sketch; its fading clock starts now.
    ///
    /// # Errors
    /// As [`TopKConfig::validate`].
    pub fn new(config: TopKConfig) -> Result<Self, ConfigError> {
        Self::with_epoch(config, Instant::now(), 0x5EED_F10D_3A11_u64)
    }

    /// As [`new`](Self::new), with the fading clock starting at `epoch` and
    /// the hash seeded by `seed`.
    ///
    /// # Errors
    /// As [`TopKConfig::validate`].
    pub fn with_epoch(config: TopKConfig, epoch: Instant, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut thresholds = Vec::new();
        let mut p = 1.0f64;
        const TWO_64: f64 = 18_446_744_073_709_551_616.0;
        // b^-c as a fraction of 2^64, until it rounds to zero.
        while p * TWO_64 >= 1.0 {
            thresholds.push(if p >= 1.0 {
                u64::MAX
            } else {
                (p * TWO_64) as u64
            });
            p /= config.decay;
        }
        let next_fade = config.fade_every.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        });
        Ok(Self {
            config,
            buckets: (0..config.width * config.depth)
                .map(|_| AtomicU64::new(0))
                .collect(),
            thresholds: thresholds.into_boxed_slice(),
            members: Mutex::new(Members::default()),
            admit_above: AtomicU32::new(0),
            hasher: Seeded(seed),
            epoch,
            next_fade: AtomicU64::new(next_fade),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TopKConfig {
        &self.config
    }

    /// Counts one arrival of `key` at `now`; returns its estimate.
    pub fn add(&self, key: &K, now: Instant) -> u32 {
        self.fade_if_due(now);
        let h = self.hasher.hash_one(key);
        let fingerprint = fingerprint(h);
        let mut estimate = 0;
        let mut member = false;
        for row in 0..self.config.depth {
            let bucket = &self.buckets[row * self.config.width + index(h, row, self.config.width)];
            let (count, flagged) = self.step(bucket, fingerprint);
            estimate = estimate.max(count);
            member |= flagged;
        }
        let estimate = u32::try_from(estimate).unwrap_or(u32::MAX);
        if !member && estimate > self.admit_above.load(Ordering::Acquire) {
            self.offer(key, h, estimate);
        }
        estimate
    }

    /// One arrival at one bucket: count it, take it, or decay it. Returns
    /// the key's count there (0 if the bucket is another key's) and whether
    /// the bucket marks the key a member.
    #[inline]
    fn step(&self, bucket: &AtomicU64, fingerprint: u64) -> (u64, bool) {
        let mut old = bucket.load(Ordering::Relaxed);
        loop {
            let count = count_of(old);
            let new = if count == 0 {
                pack(fingerprint, 1)
            } else if fingerprint_of(old) == fingerprint {
                if count == 0xFFFF_FFFF {
                    return (count, old & MEMBER != 0);
                }
                old + 1
            } else {
                // Exponential weakening: decays with probability b^-count;
                // at zero the key takes the bucket over.
                let threshold = self.thresholds.get(count as usize).copied().unwrap_or(0);
                if threshold == 0 || draw() >= threshold {
                    return (0, false);
                }
                if count == 1 {
                    pack(fingerprint, 1)
                } else {
                    old - 1
                }
            };
            match bucket.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) if fingerprint_of(new) == fingerprint => {
                    return (count_of(new), new & MEMBER != 0);
                }
                Ok(_) => return (0, false),
                Err(actual) => old = actual,
            }
        }
    }

    /// The estimate of the key with hash `h`, read from its buckets.
    fn estimate(&self, h: u64) -> u32 {
        let fingerprint = fingerprint(h);
        (0..self.config.depth)
            .map(|row| {
                let b = self.buckets[row * self.config.width + index(h, row, self.config.width)]
                    .load(Ordering::Relaxed);
                if fingerprint_of(b) == fingerprint {
                    count_of(b)
                } else {
                    0
                }
            })
            .max()
            .map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX))
    }

    /// Sets (or clears) the member bit in the key's buckets.
    fn mark(&self, h: u64, member: bool) {
        let fingerprint = fingerprint(h);
        for row in 0..self.config.depth {
            let bucket = &self.buckets[row * self.config.width + index(h, row, self.config.width)];
            let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                (fingerprint_of(b) == fingerprint && count_of(b) > 0).then_some(if member {
                    b | MEMBER
                } else {
                    b & !MEMBER
                })
            });
        }
    }

    /// A key that is not marked a member, with an estimate above the
    /// admission bound: it may enter the list.
    #[cold]
    fn offer(&self, key: &K, h: u64, estimate: u32) {
        let mut members = self.members.lock();
        if let Some(held) = members.get(&h) {
            if held == key {
                // A member whose buckets lost the bit (taken over and won
                // back): mark them again.
                self.mark(h, true);
            }
            return;
        }
        if members.len() < self.config.k {
            members.insert(h, key.clone());
            self.mark(h, true);
            if members.len() == self.config.k {
                let smallest = self.smallest(&members).map_or(0, |(_, e)| e);
                self.admit_above.store(smallest, Ordering::Release);
            }
            return;
        }
        let Some((victim, smallest)) = self.smallest(&members) else {
            return;
        };
        if estimate > smallest {
            members.remove(&victim);
            self.mark(victim, false);
            members.insert(h, key.clone());
            self.mark(h, true);
        }
        let smallest = self.smallest(&members).map_or(0, |(_, e)| e);
        self.admit_above.store(smallest, Ordering::Release);
    }

    fn smallest(&self, members: &Members<K>) -> Option<(u64, u32)> {
        members
            .keys()
            .map(|&h| (h, self.estimate(h)))
            .min_by_key(|&(_, e)| e)
    }

    /// The heaviest keys now, heaviest first (at most `k`), with their
    /// estimates. Members whose estimate faded to zero are dropped.
    pub fn top(&self) -> Vec<(K, u32)> {
        let mut members = self.members.lock();
        let mut all: Vec<(K, u32)> = Vec::with_capacity(members.len());
        members.retain(|&h, key| {
            let e = self.estimate(h);
            if e > 0 {
                all.push((key.clone(), e));
            }
            e > 0
        });
        if members.len() < self.config.k {
            self.admit_above.store(0, Ordering::Release);
        }
        drop(members);
        all.sort_by_key(|e| std::cmp::Reverse(e.1));
        all
    }

    /// Halves every count now.
    pub fn fade(&self) {
        for bucket in self.buckets.iter() {
            let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                let half = count_of(b) / 2;
                Some(if half == 0 {
                    0
                } else {
                    (b & !0xFFFF_FFFF) | half
                })
            });
        }
        let admit = self.admit_above.load(Ordering::Acquire);
        self.admit_above.store(admit / 2, Ordering::Release);
    }

    fn fade_if_due(&self, now: Instant) {
        let next = self.next_fade.load(Ordering::Acquire);
        if next == u64::MAX {
            return;
        }
        let t =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if t < next {
            return;
        }
        let period = self.config.fade_every.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        });
        // Halve once per period passed (at most 32 times: all zero by then).
        let periods = ((t - next) / period + 1).min(32);
        let following = next.saturating_add(periods.saturating_mul(period));
        if self
            .next_fade
            .compare_exchange(next, following, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for _ in 0..periods {
                self.fade();
            }
        }
    }
}

/// A key's fingerprint from its hash: 31 bits, never zero, in the bucket's
/// high half.
fn fingerprint(h: u64) -> u64 {
    ((h >> 33) | 1) << 32
}
