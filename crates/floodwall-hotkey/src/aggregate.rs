//! Write aggregation: many additive updates to one key within a window,
//! one downstream write.
//!
//! This file holds the configuration, the layer, its builder and its
//! handle, and the batches they share; `merge.rs` the updates and how
//! their deltas merge, `service.rs` the Tower service and the task that
//! writes each batch, and `error.rs` the errors callers see.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::config::check_duration;
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use hashbrown::HashMap;
use metrics::Counter;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

mod error;
mod merge;
mod service;

pub use error::{AggregateError, AggregateFull};
pub use merge::{Merge, Sum, Update};
pub use service::{Aggregate, AggregateFuture};

/// The default name (metric label) of an [`AggregateLayer`].
pub const AGGREGATE_NAME: &str = "aggregate";

/// The prefix of the aggregation layer's metric names:
/// `floodwall_aggregate_requests_total{name, outcome, reason}` (updates
/// accepted or refused), `floodwall_aggregate_writes_total{name, result}`
/// (downstream writes, `ok` or `failed`) and
/// `floodwall_aggregate_merged_total{name}` (updates merged into writes).
pub const AGGREGATE_METRIC_PREFIX: &str = "aggregate";

/// An [`AggregateLayer`]'s configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AggregateConfig {
    /// How long a key's batch gathers updates after its first one. Default
    /// 20 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// A batch of this many updates is written at once, before its window
    /// ends. Default 10,000.
    pub max_batch: usize,
    /// Keys with a batch gathering at once; an update for another key is
    /// refused over that ([`AggregateFull`]). Default 10,000.
    pub max_keys: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(20),
            max_batch: 10_000,
            max_keys: 10_000,
        }
    }
}

impl AggregateConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero or out-of-range window, or a `max_batch`
    /// or `max_keys` of 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("window", self.window)?;
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be above zero"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be at least 1"));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        Ok(())
    }
}

/// A batch's write, as every caller in it sees it: the downstream answer,
/// or its error shared.
type Landed<R> = Option<Result<R, AggregateError>>;

/// One key's batch while it gathers.
struct Batch<D, R> {
    /// Always `Some` while the batch gathers (taken to merge).
    delta: Option<D>,
    updates: u64,
    landed: watch::Sender<Landed<R>>,
    /// Tells the batch's timer to write it now.
    now: Option<oneshot::Sender<()>>,
    id: u64,
}

struct Shared<K, D, R, M> {
    name: Arc<str>,
    config: AggregateConfig,
    merge: M,
    batches: Mutex<HashMap<K, Batch<D, R>>>,
    next_id: AtomicU64,
    /// Writes started and not finished.
    writing: AtomicU64,
    requests: RequestCounters,
    writes_ok: Counter,
    writes_failed: Counter,
    merged: Counter,
}

/// A Tower layer that aggregates additive writes (SPECS.md, "Write
/// aggregation"): [`Update`]s for one key within `window` of its batch's
/// first are merged ([`Merge`], [`Sum`] by default) into **one** downstream
/// call, and every caller's future resolves with that write's answer (a
/// clone of the response, or its error shared as [`AggregateError`]).
///
/// - A batch is written when its window ends or when it holds `max_batch`
///   updates, whichever comes first.
/// - At most `max_keys` keys gather at once; an update for another key is
///   refused with [`AggregateFull`] (an `Overloaded` rejection): never
///   dropped silently.
/// - **An accepted update is written even if its caller goes away**: the
///   write runs in a task of its own. A caller that drops its future only
///   stops waiting for the answer.
/// - [`AggregateHandle::flush`] writes every gathering batch now and waits
///   for the writes (call it on shutdown).
///
/// The downstream service takes the merged `Update<K, D>`; it must be
/// `Clone` (each write calls a clone, polled ready first) and its response
/// `Clone`. One layer value is one set of batches: every service it builds,
/// and their clones, share them.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use floodwall_hotkey::{AggregateConfig, AggregateLayer, Update};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), floodwall_core::BoxError> {
/// let writes = Arc::new(Mutex::new(Vec::new()));
/// let w = writes.clone();
/// let store = service_fn(move |u: Update<&'static str, i64>| {
///     w.lock().unwrap().push(u);
///     async { Ok::<_, floodwall_core::BoxError>(()) }
/// });
/// let likes = AggregateLayer::new(AggregateConfig::default())?.layer(store);
/// let calls: Vec<_> = [1, 2, -1]
///     .into_iter()
///     .map(|delta| tokio::spawn(likes.clone().oneshot(Update { key: "post:7", delta })))
///     .collect();
/// for call in calls {
///     call.await??;
/// }
/// assert_eq!(*writes.lock().unwrap(), [Update { key: "post:7", delta: 2 }]);
/// # Ok(())
/// # }
/// ```
pub struct AggregateLayer<K, D, R, M = Sum> {
    shared: Arc<Shared<K, D, R, M>>,
}

impl<K, D, R, M> Clone for AggregateLayer<K, D, R, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, D, R, M> fmt::Debug for AggregateLayer<K, D, R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, D, R> AggregateLayer<K, D, R> {
    /// A layer summing deltas ([`Sum`]).
    ///
    /// # Errors
    /// As [`AggregateConfig::validate`].
    pub fn new(config: AggregateConfig) -> Result<Self, ConfigError> {
        AggregateLayer::builder(config).build()
    }
}

impl AggregateLayer<(), (), ()> {
    /// A builder, to set the name and the merge.
    pub fn builder(config: AggregateConfig) -> AggregateBuilder {
        AggregateBuilder {
            config,
            merge: Sum,
            name: Arc::from(AGGREGATE_NAME),
        }
    }
}

impl<K, D, R, M> AggregateLayer<K, D, R, M>
where
    K: Hash + Eq + Send + 'static,
    D: Send + 'static,
    R: Send + Sync + 'static,
    M: Send + Sync + 'static,
{
    /// A handle on the layer's batches.
    pub fn handle(&self) -> AggregateHandle {
        AggregateHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds an [`AggregateLayer`]; from [`AggregateLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct AggregateBuilder<M = Sum> {
    config: AggregateConfig,
    merge: M,
    name: Arc<str>,
}

impl<M> AggregateBuilder<M> {
    /// The layer's name (its metric label). Default [`AGGREGATE_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How deltas merge (associative). Default [`Sum`].
    pub fn merge<M2>(self, merge: M2) -> AggregateBuilder<M2> {
        AggregateBuilder {
            config: self.config,
            merge,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`AggregateConfig::validate`].
    pub fn build<K: Hash + Eq, D, R>(self) -> Result<AggregateLayer<K, D, R, M>, ConfigError> {
        self.config.validate()?;
        let name = self.name;
        let writes = |result: &'static str| metrics::counter!(metric_name(AGGREGATE_METRIC_PREFIX, "writes_total"), LABEL_NAME => name.to_string(), "result" => result);
        Ok(AggregateLayer {
            shared: Arc::new(Shared {
                config: self.config,
                merge: self.merge,
                batches: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                writing: AtomicU64::new(0),
                requests: RequestCounters::new(AGGREGATE_METRIC_PREFIX, &name),
                writes_ok: writes("ok"),
                writes_failed: writes("failed"),
                merged: metrics::counter!(metric_name(AGGREGATE_METRIC_PREFIX, "merged_total"), LABEL_NAME => name.to_string()),
                name,
            }),
        })
    }
}

/// What an [`AggregateHandle`] reaches, whatever the types.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn pending(&self) -> usize;
    fn writing(&self) -> u64;
    fn write_all_now(&self);
}

impl<K, D, R, M> Target for Shared<K, D, R, M>
where
    K: Send,
    D: Send,
    R: Send + Sync,
    M: Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn pending(&self) -> usize {
        self.batches.lock().len()
    }

    fn writing(&self) -> u64 {
        self.writing.load(Ordering::Acquire)
    }

    fn write_all_now(&self) {
        for batch in self.batches.lock().values_mut() {
            if let Some(now) = batch.now.take() {
                let _ = now.send(());
            }
        }
    }
}

/// A cheap handle on an [`AggregateLayer`]'s batches.
#[derive(Clone)]
pub struct AggregateHandle {
    shared: Arc<dyn Target>,
}

impl AggregateHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Keys with a batch gathering now.
    pub fn pending(&self) -> usize {
        self.shared.pending()
    }

    /// Writes every gathering batch now and waits until no batch gathers
    /// and no write runs (on shutdown: stop taking updates first).
    pub async fn flush(&self) {
        loop {
            self.shared.write_all_now();
            if self.shared.pending() == 0 && self.shared.writing() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl fmt::Debug for AggregateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateHandle")
            .field("name", &self.name())
            .field("pending", &self.pending())
            .finish()
    }
}
