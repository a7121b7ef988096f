//! Breakers per key: one circuit breaker per host, endpoint or any key,
//! in a bounded group.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use floodwall_admit::{Admit, Guarded, Policy, Read};
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::outcome::{self, Verdict};
use floodwall_core::{BoxError, Classify, ConfigError, RejectKind, Rejected, ResultClassifier};
use hashbrown::HashMap;
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::policy::record;
use crate::{BreakerConfig, CircuitBreaker, CircuitOpen, Permit, State};

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

/// A [`BreakerGroup`]'s configuration.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BreakerGroupConfig {
    /// Every key's breaker. `automatic_half_open` must be off: a key's
    /// breaker moves to half-open on its next call.
    pub breaker: BreakerConfig,
    /// The most keys with a breaker of their own. Default 1,024.
    pub max_keys: usize,
}

impl Default for BreakerGroupConfig {
    fn default() -> Self {
        Self {
            breaker: BreakerConfig::default(),
            max_keys: 1_024,
        }
    }
}

impl BreakerGroupConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`]; a `max_keys` of 0; an
    /// `automatic_half_open` breaker.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.breaker.validate()?;
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.breaker.automatic_half_open {
            return Err(ConfigError::new(
                "breaker.automatic_half_open",
                "is not supported per key: a key's breaker half-opens on its next call",
            ));
        }
        Ok(())
    }
}

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

/// The group as an admission policy for the shared Tower adapter: the
/// key's breaker admits the call and records its outcome.
pub struct GroupPolicy<K, X, C> {
    group: BreakerGroup<K>,
    key: X,
    classify: C,
    requests: RequestCounters,
    success: Counter,
    failure: Counter,
    cancelled: Counter,
}

impl<K, X, C> fmt::Debug for GroupPolicy<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupPolicy")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<K, X, C> GroupPolicy<K, X, C> {
    /// The group.
    pub fn group(&self) -> &BreakerGroup<K> {
        &self.group
    }
}

/// A call's permit from its key's breaker (or none for a request without
/// a key).
#[derive(Debug)]
pub struct GroupPermit(Option<(Arc<CircuitBreaker>, Permit)>);

impl<K, X, C> Policy for GroupPolicy<K, X, C>
where
    K: Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    type Permit = GroupPermit;

    fn release(&self, permit: GroupPermit, verdict: Verdict) {
        if let Some((breaker, permit)) = permit.0 {
            record(
                &breaker,
                permit,
                verdict,
                [&self.success, &self.failure, &self.cancelled],
            );
        }
    }
}

impl<K, X, C, Req> Admit<Req> for GroupPolicy<K, X, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    fn admit(&self, req: &mut Req) -> Result<GroupPermit, BoxError> {
        let Some(key) = (self.key)(req) else {
            self.requests.admitted();
            return Ok(GroupPermit(None));
        };
        let breaker = self.group.breaker(&key, Instant::now());
        match breaker.try_acquire_with(Instant::now) {
            Ok(permit) => {
                self.requests.admitted();
                Ok(GroupPermit(Some((breaker, permit))))
            }
            Err(refused) => {
                self.requests.rejected(RejectKind::CircuitOpen);
                Err(Rejected::boxed(CircuitOpen::new(
                    refused.state,
                    refused.retry_after,
                )))
            }
        }
    }
}

impl<K, X, C, Res> Read<Res> for GroupPolicy<K, X, C>
where
    K: Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
{
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        outcome::judge(&self.classify, result, caller_limited)
    }
}

/// A Tower layer with a circuit breaker per key (host, endpoint, tenant):
/// one bad host is refused while the others serve. The group is bounded
/// ([`BreakerGroup`]); metrics are one series per group, and the per-key
/// state is in the handle.
///
/// Requests for which the key function returns `None` pass without a
/// breaker.
///
/// ```
/// use floodwall_breaker::{BreakerConfig, BreakerGroupConfig, BreakerGroupLayer, State};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let config = BreakerGroupConfig { breaker: BreakerConfig::consecutive(3), ..Default::default() };
/// // The key: the host the request goes to.
/// let layer = BreakerGroupLayer::new(config, |host: &&'static str| Some(*host))?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|host: &'static str| async move {
///     if host == "bad" { Err(BoxError::from("connection refused")) } else { Ok(host) }
/// }));
/// for _ in 0..3 {
///     let _ = svc.clone().oneshot("bad").await;
/// }
/// assert_eq!(handle.state(&"bad"), Some(State::Open));
/// assert!(svc.clone().oneshot("bad").await.unwrap_err().to_string().contains("circuit open"));
/// assert_eq!(svc.clone().oneshot("good").await?, "good");
/// # Ok(())
/// # }
/// ```
pub struct BreakerGroupLayer<K, X, C = ResultClassifier> {
    shared: Arc<GroupPolicy<K, X, C>>,
}

impl<K, X, C> Clone for BreakerGroupLayer<K, X, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, X, C> fmt::Debug for BreakerGroupLayer<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerGroupLayer")
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, X> BreakerGroupLayer<K, X> {
    /// A layer with a breaker per `key(&request)`, named [`GROUP_NAME`].
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn new(config: BreakerGroupConfig, key: X) -> Result<Self, ConfigError> {
        BreakerGroupLayer::builder(config, key).build()
    }
}

impl BreakerGroupLayer<(), ()> {
    /// A builder, to set the name and the classifier.
    pub fn builder<X>(config: BreakerGroupConfig, key: X) -> GroupBuilder<X> {
        GroupBuilder {
            config,
            key,
            classify: ResultClassifier,
            name: Arc::from(GROUP_NAME),
        }
    }
}

impl<K, X, C> BreakerGroupLayer<K, X, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    /// A handle on the group's per-key state.
    pub fn handle(&self) -> BreakerGroupHandle<K> {
        BreakerGroupHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`BreakerGroupLayer`]; from [`BreakerGroupLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct GroupBuilder<X, C = ResultClassifier> {
    config: BreakerGroupConfig,
    key: X,
    classify: C,
    name: Arc<str>,
}

impl<X, C> GroupBuilder<X, C> {
    /// The group's name (its metric label). Default [`GROUP_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How outcomes are read. Default [`ResultClassifier`].
    pub fn classify<C2>(self, classify: C2) -> GroupBuilder<X, C2> {
        GroupBuilder {
            config: self.config,
            key: self.key,
            classify,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn build<K: Hash + Eq + Clone>(self) -> Result<BreakerGroupLayer<K, X, C>, ConfigError> {
        let label = self.name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(metric_name(GROUP_METRIC_PREFIX, "calls_total"), LABEL_NAME => label.clone(), "outcome" => outcome);
        Ok(BreakerGroupLayer {
            shared: Arc::new(GroupPolicy {
                requests: RequestCounters::new(GROUP_METRIC_PREFIX, &self.name),
                success: calls("success"),
                failure: calls("failure"),
                cancelled: calls("cancelled"),
                group: BreakerGroup::named(self.name, self.config)?,
                key: self.key,
                classify: self.classify,
            }),
        })
    }
}

/// The service a [`BreakerGroupLayer`] builds: the shared admission
/// adapter around the group.
pub type BreakerGroupService<S, K, X, C = ResultClassifier> = Guarded<S, GroupPolicy<K, X, C>>;

impl<S, K, X, C> Layer<S> for BreakerGroupLayer<K, X, C> {
    type Service = BreakerGroupService<S, K, X, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded::new(inner, self.shared.clone())
    }
}

/// What a [`BreakerGroupHandle`] reads, whatever the key function and
/// classifier.
trait Target<K>: Send + Sync {
    fn group(&self) -> &BreakerGroup<K>;
}

impl<K, X, C> Target<K> for GroupPolicy<K, X, C>
where
    K: Send + Sync,
    X: Send + Sync,
    C: Send + Sync,
{
    fn group(&self) -> &BreakerGroup<K> {
        &self.group
    }
}

/// Reads and controls a [`BreakerGroupLayer`]'s breakers, per key.
pub struct BreakerGroupHandle<K> {
    shared: Arc<dyn Target<K>>,
}

impl<K> Clone for BreakerGroupHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for BreakerGroupHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerGroupHandle")
            .field("group", self.shared.group())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> BreakerGroupHandle<K> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.shared.group().metrics.name
    }

    /// The state of `key`'s breaker, if it has one.
    pub fn state(&self, key: &K) -> Option<State> {
        self.shared.group().state(key)
    }

    /// Keys with a breaker now.
    pub fn keys(&self) -> usize {
        self.shared.group().len()
    }

    /// Every key whose breaker is not closed, with its state.
    pub fn not_closed(&self) -> Vec<(K, State)> {
        self.shared.group().not_closed()
    }

    /// `key`'s breaker (created if it has none), to force it open, reset
    /// it or read its counts.
    pub fn breaker(&self, key: &K) -> Arc<CircuitBreaker> {
        self.shared.group().breaker(key, Instant::now())
    }

    /// Changes every key's breaker while the group serves (see
    /// [`BreakerGroup::reconfigure`]).
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn reconfigure(&self, config: BreakerGroupConfig) -> Result<(), ConfigError> {
        self.shared.group().reconfigure(config, Instant::now())
    }

    /// How long until `key`'s breaker probes again, if it is open.
    pub fn open_remaining(&self, key: &K) -> Option<Duration> {
        self.shared.group().get(key)?.open_remaining(Instant::now())
    }
}
