//! Breakers per key: one circuit breaker per host, endpoint or any key,
//! in a bounded group.
//!
//! This file holds the group itself ([`BreakerGroup`], sans-IO): its
//! bounded table of per-key breakers and the metrics they share;
//! `config.rs` its configuration and `layer.rs` the Tower layer, the
//! admission policy it wires in and its handle.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use floodwall_core::ConfigError;
use floodwall_core::metrics::{LABEL_NAME, metric_name};
use hashbrown::HashMap;
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::{BreakerConfig, CircuitBreaker, State};

mod config;
mod layer;

pub use config::BreakerGroupConfig;
pub use layer::{
    BreakerGroupHandle, BreakerGroupLayer, BreakerGroupService, GroupBuilder, GroupPermit,
    GroupPolicy,
};

/// The default name (metric label) of a [`BreakerGroupLayer`].
pub const GROUP_NAME: &str = "breaker_group";

/// The prefix of a breaker group's metric names, one series per group
/// (never per key, so a million hosts make no million series):
/// `floodwall_breaker_group_requests_total{name, outcome, reason}`,
/// `floodwall_breaker_group_calls_total{name, outcome}`,
/// `floodwall_breaker_group_transitions_total{name, from, to}` (summed over
/// keys), the gauges `floodwall_breaker_group_keys{name}` and
/// `floodwall_breaker_group_open{name}` (keys not closed), and
/// `floodwall_breaker_group_evicted_total{name, reason}` (`idle`: a
/// closed breaker evicted for a new key; `overflow`: a new key sent to the
/// shared overflow breaker because every slot holds an open one).
pub const GROUP_METRIC_PREFIX: &str = "breaker_group";

/// One key's breaker in the group's table.
struct Slot<K> {
    key: K,
    breaker: Arc<CircuitBreaker>,
    /// Used since the clock hand last passed (second chance).
    referenced: AtomicBool,
    /// Evicted: its later transitions no longer count in the `open` gauge.
    detached: Arc<AtomicBool>,
}

/// The keys' breakers: an index into a slot array swept by a clock hand
/// (the CLOCK approximation of least-recently-used: amortized O(1) per new
/// key, whatever the number of keys).
struct Table<K> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K>>,
    hand: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// Removes slot `i`, moving the last slot into its place.
    fn remove(&mut self, i: usize) -> Slot<K> {
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.key);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
        slot
    }

    /// The next slot to evict: the hand skips breakers that are not closed
    /// and gives used ones a second chance. `None` after two full turns
    /// without one (every breaker open).
    fn victim(&mut self) -> Option<usize> {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let slot = &self.slots[i];
            if is_open(slot.breaker.state()) {
                continue;
            }
            if slot.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            return Some(i);
        }
        None
    }
}

/// Counts shared by every breaker of a group (one series per group).
struct GroupMetrics {
    keys: Gauge,
    open: Gauge,
    /// Breakers in the table that are not closed.
    open_count: AtomicI64,
    evicted_idle: Counter,
    overflowed: Counter,
    name: Arc<str>,
}

/// Whether a state counts as "not closed" for the `open` gauge.
fn is_open(state: State) -> bool {
    matches!(state, State::Open | State::HalfOpen | State::ForcedOpen)
}

/// A bounded group of circuit breakers, one per key (sans-IO: every method
/// that needs the time takes the instant). Each key's breaker is a [`CircuitBreaker`] with the
/// group's configuration, created on the key's first call.
///
/// **Bounded:** at most `max_keys` keys have a breaker. A new key over that
/// evicts a closed (or disabled) breaker not used recently, found by a
/// clock hand that gives used breakers a second chance (amortized O(1) per
/// new key, so a flood of distinct keys costs no scan of the table): a
/// closed breaker forgets only its window, which an idle key's is worth
/// little. Open, half-open and forced-open breakers are never evicted: a
/// host that failed stays refused until it recovers, whatever other keys
/// arrive. When every slot holds one of those, the new key shares one
/// overflow breaker with the other keys that found no slot.
///
/// ```
/// use floodwall_breaker::{BreakerConfig, BreakerGroup, BreakerGroupConfig, State};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let group = BreakerGroup::new(BreakerGroupConfig {
///     breaker: BreakerConfig::consecutive(2),
///     ..BreakerGroupConfig::default()
/// })?;
/// for _ in 0..2 {
///     let b = group.breaker(&"10.0.0.1", t0);
///     let permit = b.try_acquire(t0).unwrap();
///     b.on_failure(permit, t0);
/// }
/// assert_eq!(group.state(&"10.0.0.1"), Some(State::Open));
/// assert!(group.breaker(&"10.0.0.2", t0).try_acquire(t0).is_ok(), "another host serves");
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct BreakerGroup<K> {
    config: RwLock<BreakerGroupConfig>,
    map: RwLock<Table<K>>,
    overflow: Arc<CircuitBreaker>,
    metrics: Arc<GroupMetrics>,
}

impl<K> fmt::Debug for BreakerGroup<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerGroup")
            .field("name", &self.metrics.name)
            .field("keys", &self.map.read().slots.len())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> BreakerGroup<K> {
    /// An empty group, named [`GROUP_NAME`].
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn new(config: BreakerGroupConfig) -> Result<Self, ConfigError> {
        Self::named(GROUP_NAME, config)
    }

    /// As [`new`](Self::new), with a name (the metric label).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn named(
        name: impl Into<Arc<str>>,
        config: BreakerGroupConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let name: Arc<str> = name.into();
        let label = name.to_string();
        let evicted = |reason: &'static str| metrics::counter!(metric_name(GROUP_METRIC_PREFIX, "evicted_total"), LABEL_NAME => label.clone(), "reason" => reason);
        let metrics = Arc::new(GroupMetrics {
            keys: metrics::gauge!(metric_name(GROUP_METRIC_PREFIX, "keys"), LABEL_NAME => label.clone()),
            open: metrics::gauge!(metric_name(GROUP_METRIC_PREFIX, "open"), LABEL_NAME => label.clone()),
            open_count: AtomicI64::new(0),
            evicted_idle: evicted("idle"),
            overflowed: evicted("overflow"),
            name,
        });
        let epoch = Instant::now();
        // The overflow breaker is no key's: detached from the `open` gauge.
        let overflow = Arc::new(new_breaker(
            &config.breaker,
            epoch,
            &metrics,
            Arc::new(AtomicBool::new(true)),
        )?);
        Ok(Self {
            config: RwLock::new(config),
            map: RwLock::new(Table {
                index: HashMap::new(),
                slots: Vec::new(),
                hand: 0,
            }),
            overflow,
            metrics,
        })
    }

    /// The breaker for `key`, created if the key has none (see the type's
    /// docs for the bound). `now` is the new breaker's epoch.
    pub fn breaker(&self, key: &K, now: Instant) -> Arc<CircuitBreaker> {
        {
            let table = self.map.read();
            if let Some(&i) = table.index.get(key) {
                let slot = &table.slots[i];
                slot.referenced.store(true, Ordering::Relaxed);
                return slot.breaker.clone();
            }
        }
        self.insert(key, now)
    }

    #[cold]
    fn insert(&self, key: &K, now: Instant) -> Arc<CircuitBreaker> {
        let config = self.config.read().clone();
        let mut table = self.map.write();
        if let Some(&i) = table.index.get(key) {
            return table.slots[i].breaker.clone();
        }
        while table.slots.len() >= config.max_keys {
            let every_one_open =
                self.metrics.open_count.load(Ordering::Acquire) >= table.slots.len() as i64;
            match (!every_one_open).then(|| table.victim()).flatten() {
                Some(i) => {
                    let evicted = table.remove(i);
                    evicted.detached.store(true, Ordering::Release);
                    if is_open(evicted.breaker.state()) {
                        // Opened between the hand's look and now.
                        self.metrics.open_count.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.metrics.evicted_idle.increment(1);
                }
                None => {
                    self.metrics.overflowed.increment(1);
                    return self.overflow.clone();
                }
            }
        }
        let detached = Arc::new(AtomicBool::new(false));
        let breaker = Arc::new(
            new_breaker(&config.breaker, now, &self.metrics, detached.clone())
                .expect("the group's configuration was validated"),
        );
        let i = table.slots.len();
        table.slots.push(Slot {
            key: key.clone(),
            breaker: breaker.clone(),
            referenced: AtomicBool::new(false),
            detached,
        });
        table.index.insert(key.clone(), i);
        self.metrics.keys.set(table.slots.len() as f64);
        breaker
    }

    /// The state of `key`'s breaker, if it has one.
    pub fn state(&self, key: &K) -> Option<State> {
        self.get(key).map(|b| b.state())
    }

    /// `key`'s breaker, if it has one (not created, not marked used).
    pub fn get(&self, key: &K) -> Option<Arc<CircuitBreaker>> {
        let table = self.map.read();
        table
            .index
            .get(key)
            .map(|&i| table.slots[i].breaker.clone())
    }

    /// Keys with a breaker now.
    pub fn len(&self) -> usize {
        self.map.read().slots.len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key whose breaker is not closed, with its state.
    pub fn not_closed(&self) -> Vec<(K, State)> {
        self.map
            .read()
            .slots
            .iter()
            .filter_map(|slot| {
                let s = slot.breaker.state();
                is_open(s).then(|| (slot.key.clone(), s))
            })
            .collect()
    }

    /// The breaker shared by new keys that found no slot.
    pub fn overflow(&self) -> &Arc<CircuitBreaker> {
        &self.overflow
    }

    /// Changes every key's breaker (and the overflow's, and those created
    /// later) as [`CircuitBreaker::reconfigure`] does, state kept; a smaller
    /// `max_keys` applies as new keys arrive (nothing is evicted at once).
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`]: a refused change changes
    /// nothing.
    pub fn reconfigure(&self, config: BreakerGroupConfig, now: Instant) -> Result<(), ConfigError> {
        config.validate()?;
        let mut current = self.config.write();
        let table = self.map.read();
        for slot in &table.slots {
            slot.breaker.reconfigure(config.breaker, now)?;
        }
        self.overflow.reconfigure(config.breaker, now)?;
        *current = config;
        Ok(())
    }
}

/// A key's breaker, reporting its transitions to the group's series.
fn new_breaker(
    config: &BreakerConfig,
    epoch: Instant,
    metrics: &Arc<GroupMetrics>,
    detached: Arc<AtomicBool>,
) -> Result<CircuitBreaker, ConfigError> {
    let m = metrics.clone();
    Ok(
        CircuitBreaker::with_epoch(*config, epoch)?.on_state_change(move |c| {
            metrics::counter!(
                metric_name(GROUP_METRIC_PREFIX, "transitions_total"),
                LABEL_NAME => m.name.to_string(),
                "from" => c.from.as_str(),
                "to" => c.to.as_str()
            )
            .increment(1);
            let delta = i64::from(is_open(c.to)) - i64::from(is_open(c.from));
            if delta != 0 && !detached.load(Ordering::Acquire) {
                let open = m.open_count.fetch_add(delta, Ordering::AcqRel) + delta;
                m.open.set(open.max(0) as f64);
            }
        }),
    )
}
