//! Per-key tiers: a keyed token bucket whose quota is chosen per key
//! (API plans: free, paid, internal), each tier's quota changeable live.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::sync::{AtomicU8, AtomicU64, Ordering};
use tokio::time::Instant;

use crate::gcra::{Params, Reservation, max_wait_ns};
use crate::time::nanos_since;
use crate::{Carry, Denied, KeyState, KeyedLimit, KeyedMap, Quota};

/// The tiers' names and quotas, in the order they were declared.
#[derive(Clone, PartialEq)]
pub struct Tiers {
    names: Arc<[String]>,
    quotas: Arc<[Quota]>,
}

impl Tiers {
    /// The tiers' names, in declaration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The quota of the tier named `name`.
    pub fn quota(&self, name: &str) -> Option<Quota> {
        self.index(name).map(|i| self.quotas[i])
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

impl fmt::Debug for Tiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.names.iter().zip(self.quotas.iter()))
            .finish()
    }
}

/// One key's bucket in a [`TieredTokenBucket`]: its TAT and the tier it
/// was last decided under.
pub struct TierTat {
    tat: AtomicU64,
    tier: AtomicU8,
}

impl fmt::Debug for TierTat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierTat")
            .field("tat", &self.tat.load(Ordering::Relaxed))
            .field("tier", &self.tier.load(Ordering::Relaxed))
            .finish()
    }
}

impl KeyState for TierTat {
    type Params = Tiers;

    fn fresh(_: &Tiers) -> Self {
        TierTat {
            tat: AtomicU64::new(0),
            tier: AtomicU8::new(0),
        }
    }

    fn idle_at(&self, _: &Tiers, _t: u64) -> u64 {
        self.tat.load(Ordering::Relaxed)
    }
}

impl Carry for TierTat {
    /// A key whose tier's quota changed keeps its tokens, capped at the
    /// new burst (the token bucket's rule); other keys are untouched.
    fn carry(&self, old: &Tiers, new: &Tiers, t: u64) {
        let tier = usize::from(self.tier.load(Ordering::Relaxed));
        let (Some(before), Some(after)) = (old.quotas.get(tier), new.quotas.get(tier)) else {
            return;
        };
        if before != after {
            let tat = self.tat.load(Ordering::Relaxed);
            let carried = Params::of(before).carry(Params::of(after), tat, t);
            self.tat.store(carried, Ordering::Relaxed);
        }
    }
}

type Classify<K> = dyn Fn(&K) -> usize + Send + Sync;

/// Resolves a classification against the declared tier names, at build.
type MakeClassify<K> = dyn Fn(&[String]) -> Result<Box<Classify<K>>, ConfigError>;

/// A keyed token bucket whose quota is chosen per key: each key belongs to
/// a tier (a table with a default, or any function of the key), each tier
/// has its quota, and a tier's quota can change while the limiter serves
/// ([`set_tier`](Self::set_tier)): every remembered key of that tier keeps
/// its tokens, capped at the new burst, atomically per key. Memory is
/// bounded and evicted as every keyed limiter's ([`KeyedMap`]): one entry
/// per remembered key, whatever its tier.
///
/// ```
/// use floodwall_ratelimit::{Quota, TieredTokenBucket};
/// use tokio::time::Instant;
///
/// # fn main() -> Result<(), floodwall_core::ConfigError> {
/// let plans = TieredTokenBucket::builder()
///     .tier("free", Quota::per_minute(60)?)
///     .tier("paid", Quota::per_second(100)?)
///     .tier("internal", Quota::per_second(10_000)?)
///     .classify(|api_key: &String| match api_key.split('_').next() {
///         Some("pk") => "paid",
///         Some("ik") => "internal",
///         _ => "free",
///     })
///     .capacity(100_000)
///     .build()?;
/// let now = Instant::now();
/// assert!(plans.try_acquire(&"pk_4711".to_owned(), now, 1).is_ok());
/// assert_eq!(plans.tier_of(&"pk_4711".to_owned()), "paid");
/// // The paid plan doubles, live: paid keys keep what they have.
/// plans.set_tier("paid", Quota::per_second(200)?, now)?;
/// # Ok(())
/// # }
/// ```
pub struct TieredTokenBucket<K> {
    map: KeyedMap<K, TierTat>,
    classify: Box<Classify<K>>,
    epoch: Instant,
}

impl<K> fmt::Debug for TieredTokenBucket<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredTokenBucket")
            .field("tiers", &self.map.params())
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TieredTokenBucket`].
#[must_use = "call build()"]
pub struct TiersBuilder<K> {
    names: Vec<String>,
    quotas: Vec<Quota>,
    classify: Option<Box<MakeClassify<K>>>,
    capacity: usize,
    epoch: Option<Instant>,
}

impl<K> fmt::Debug for TiersBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiersBuilder")
            .field("tiers", &self.names)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> TieredTokenBucket<K> {
    /// A builder: declare the tiers, then how keys map to them.
    pub fn builder() -> TiersBuilder<K> {
        TiersBuilder {
            names: Vec::new(),
            quotas: Vec::new(),
            classify: None,
            capacity: crate::DEFAULT_KEY_CAPACITY,
            epoch: None,
        }
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> TiersBuilder<K> {
    /// Declares a tier.
    pub fn tier(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.names.push(name.into());
        self.quotas.push(quota);
        self
    }

    /// Keys map to the tier `classify(key)` names.
    pub fn classify<F>(mut self, classify: F) -> Self
    where
        F: Fn(&K) -> &str + Send + Sync + Clone + 'static,
    {
        self.classify = Some(Box::new(move |names: &[String]| {
            let names: Arc<[String]> = names.into();
            let classify = classify.clone();
            let f: Box<Classify<K>> = Box::new(move |key: &K| {
                let name = classify(key);
                names.iter().position(|n| n == name).unwrap_or(0)
            });
            Ok(f)
        }));
        self
    }

    /// Keys in `table` map to the tier it names; every other key to
    /// `default`.
    pub fn table(mut self, table: HashMap<K, String>, default: impl Into<String>) -> Self
    where
        K: Clone,
    {
        let default = default.into();
        self.classify = Some(Box::new(move |names: &[String]| {
            let index = |name: &str| {
                names.iter().position(|n| n == name).ok_or_else(|| {
                    ConfigError::new("tiers.table", "names a tier that is not declared")
                        .with_value(name.to_owned())
                })
            };
            let default = index(&default)?;
            let mut resolved = HashMap::with_capacity(table.len());
            for (key, name) in &table {
                resolved.insert(key.clone(), index(name)?);
            }
            let f: Box<Classify<K>> =
                Box::new(move |key: &K| resolved.get(key).copied().unwrap_or(default));
            Ok(f)
        }));
        self
    }

    /// How many keys are remembered (at most). Default 100,000.
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// The instant the limiter's clock counts from (default: when built).
    pub fn epoch(mut self, epoch: Instant) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The limiter.
    ///
    /// # Errors
    /// [`ConfigError`] without tiers, with more than 255, with a name
    /// declared twice, without a classification, with a table naming an
    /// undeclared tier, or with a capacity of 0.
    pub fn build(self) -> Result<TieredTokenBucket<K>, ConfigError> {
        if self.names.is_empty() {
            return Err(ConfigError::new("tiers", "declare at least one tier"));
        }
        if self.names.len() > usize::from(u8::MAX) {
            return Err(ConfigError::new("tiers", "at most 255 tiers").with_value(self.names.len()));
        }
        for (i, name) in self.names.iter().enumerate() {
            if self.names[..i].contains(name) {
                return Err(
                    ConfigError::new("tiers", "a tier is declared twice").with_value(name.clone())
                );
            }
        }
        let capacity = crate::key_capacity(self.capacity)?;
        let classify = self
            .classify
            .ok_or_else(|| ConfigError::new("tiers.classify", "say how keys map to tiers"))?(
            &self.names,
        )?;
        let tiers = Tiers {
            names: self.names.into(),
            quotas: self.quotas.into(),
        };
        Ok(TieredTokenBucket {
            map: KeyedMap::new(capacity, tiers),
            classify,
            epoch: self.epoch.unwrap_or_else(Instant::now),
        })
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> TieredTokenBucket<K> {
    #[inline]
    fn decide(&self, key: &K, now: Instant, n: u32, max_wait: u64) -> Result<Reservation, Denied> {
        let tier = (self.classify)(key);
        let t = nanos_since(self.epoch, now);
        self.map.with(key, t, |tiers, state| {
            let quota = &tiers.quotas[tier.min(tiers.quotas.len() - 1)];
            state.tier.store(tier as u8, Ordering::Relaxed);
            Params::of(quota).step(&state.tat, t, n, max_wait)
        })
    }

    /// Takes `n` tokens from `key`'s bucket at `now`, under its tier's
    /// quota.
    ///
    /// # Errors
    /// [`Denied`] as the token bucket decides.
    pub fn try_acquire(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied> {
        self.decide(key, now, n, 0).map(|_| ())
    }

    /// Reserves `n` tokens for a start at most `max_wait` away.
    ///
    /// # Errors
    /// [`Denied`] as the token bucket decides.
    pub fn reserve(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<Reservation, Denied> {
        self.decide(key, now, n, max_wait_ns(max_wait))
    }

    /// Tokens `key` may take at `now` (its tier's full burst for a key
    /// not remembered).
    pub fn remaining(&self, key: &K, now: Instant) -> u32 {
        let t = nanos_since(self.epoch, now);
        let tier = (self.classify)(key);
        let tiers = self.map.params();
        let quota = tiers.quotas[tier.min(tiers.quotas.len() - 1)];
        self.map
            .get(key, |_, state| {
                Params::of(&quota).available(state.tat.load(Ordering::Relaxed), t)
            })
            .unwrap_or_else(|| quota.burst())
    }

    /// The tier `key` belongs to.
    pub fn tier_of(&self, key: &K) -> String {
        let tiers = self.map.params();
        tiers.names[(self.classify)(key).min(tiers.names.len() - 1)].clone()
    }

    /// The tiers and their quotas now.
    pub fn tiers(&self) -> Tiers {
        self.map.params()
    }

    /// Changes the quota of the tier `name` from `now` on: every
    /// remembered key of that tier keeps the tokens it has, capped at the
    /// new burst (SPECS.md, "Per-key tiers"); keys of other tiers are
    /// untouched. Shard by shard, as [`KeyedMap::reconfigure`].
    ///
    /// # Errors
    /// [`ConfigError`] if no tier is named `name`.
    pub fn set_tier(&self, name: &str, quota: Quota, now: Instant) -> Result<(), ConfigError> {
        let mut tiers = self.map.params();
        let i = tiers.index(name).ok_or_else(|| {
            ConfigError::new("tiers", "no tier of that name").with_value(name.to_owned())
        })?;
        let mut quotas = tiers.quotas.to_vec();
        quotas[i] = quota;
        tiers.quotas = quotas.into();
        self.map.reconfigure(tiers, nanos_since(self.epoch, now));
        Ok(())
    }

    /// The key map: count, capacity, memory, evictions.
    pub fn keys(&self) -> &KeyedMap<K, TierTat> {
        &self.map
    }

    /// Reports the key count and evictions as metrics (see
    /// [`KeyedMap::with_metrics`]).
    pub fn with_metrics(mut self, layer: &'static str, name: &str) -> Self {
        self.map = self.map.with_metrics(layer, name);
        self
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimit for TieredTokenBucket<K> {
    type Key = K;
    type Permit = ();

    fn acquire_key(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(key, now, n)
    }

    fn reserve_key(
        &self,
        key: &K,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, ()), Denied> {
        self.reserve(key, now, n, max_wait).map(|r| (r.wait(), ()))
    }
}
