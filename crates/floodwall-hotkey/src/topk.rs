//! HeavyKeeper Top-K (Gong et al., USENIX ATC 2018): which keys are heavy,
//! in bounded memory, sans-IO, lock-free to count into.
//!
//! This file holds the sketch ([`HeavyKeeper`]): counting, the top-k list
//! and fading; `config.rs` its configuration and `bucket.rs` the pieces it
//! is built from (a bucket in one word, the key hash, the per-thread
//! decay draws).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use floodwall_core::ConfigError;
use parking_lot::Mutex;
use tokio::time::Instant;

mod bucket;
mod config;

use bucket::{MEMBER, Members, Seeded, count_of, draw, fingerprint, fingerprint_of, index, pack};
pub use config::TopKConfig;

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
