//! The hot-key layer: counts each request's key, knows the hot set, marks
//! hot requests and limits each hot key on its own quota.
//!
//! This file holds the state the layer shares (the sketch and the hot set
//! read from it), the layer, its builder and its handle; `config.rs` the
//! configuration, `set.rs` what the layer publishes (the hot set, the
//! request extensions, the changes) and `service.rs` the Tower service and
//! its response future.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{ConfigError, RateLimitPolicy};
use floodwall_ratelimit::KeyedTokenBucket;
use hashbrown::HashMap;
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::HeavyKeeper;

mod config;
mod service;
mod set;

pub use config::HotKeyConfig;
pub use service::{HotKey, HotKeyFuture};
pub use set::{Hot, HotChange, HotSet, Keyed};

/// The default name (metric label) of a [`HotKeyLayer`].
pub const HOT_KEY_NAME: &str = "hotkey";

/// The prefix of the hot-key layer's metric names:
/// `floodwall_hotkey_requests_total{name, outcome, reason}` (refused: a hot
/// key over its own quota), `floodwall_hotkey_marked_total{name}`
/// (requests marked hot), the gauge `floodwall_hotkey_keys{name}` (keys
/// hot now) and `floodwall_hotkey_changes_total{name}` (changes of the hot
/// set).
pub const HOT_KEY_METRIC_PREFIX: &str = "hotkey";

type Listener<K> = Box<dyn Fn(&HotChange<'_, K>) + Send + Sync>;

struct Shared<K> {
    name: Arc<str>,
    config: HotKeyConfig,
    sketch: HeavyKeeper<K>,
    hot: RwLock<Arc<HotSet<K>>>,
    tx: watch::Sender<Arc<HotSet<K>>>,
    listeners: Vec<Listener<K>>,
    epoch: Instant,
    /// The next scheduled read of the sketch (ns since the epoch).
    next_refresh: AtomicU64,
    /// The last read (ns since the epoch): an early read waits 1 ms after.
    last_refresh: AtomicU64,
    limiter: Option<(KeyedTokenBucket<K>, Arc<RateLimitPolicy>)>,
    requests: RequestCounters,
    hot_requests: Counter,
    hot_keys: Gauge,
    changes: Counter,
}

impl<K: Hash + Eq + Clone> Shared<K> {
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the sketch into the hot set if it is due (or `early` and the
    /// last read is over 1 ms old).
    fn refresh_if_due(&self, now: Instant, early: bool) {
        let t = self.nanos(now);
        let next = self.next_refresh.load(Ordering::Acquire);
        let due = t >= next
            || (early && t.saturating_sub(self.last_refresh.load(Ordering::Acquire)) >= 1_000_000);
        if !due {
            return;
        }
        let period = u64::try_from(self.config.refresh.as_nanos()).unwrap_or(u64::MAX);
        if self
            .next_refresh
            .compare_exchange(
                next,
                t.saturating_add(period),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return; // another caller reads it
        }
        self.last_refresh.store(t, Ordering::Release);
        self.refresh();
    }

    /// Reads the sketch: the top keys at or above `min_count` are hot.
    fn refresh(&self) {
        let keys: HashMap<K, u32> = self
            .sketch
            .top()
            .into_iter()
            .filter(|&(_, e)| e >= self.config.min_count)
            .collect();
        let old = self.hot.read().clone();
        let heated: Vec<K> = keys.keys().filter(|k| !old.contains(k)).cloned().collect();
        let cooled: Vec<K> = old
            .keys
            .keys()
            .filter(|k| !keys.contains_key(*k))
            .cloned()
            .collect();
        let set = Arc::new(HotSet { keys });
        *self.hot.write() = set.clone();
        self.hot_keys.set(set.len() as f64);
        if heated.is_empty() && cooled.is_empty() {
            return;
        }
        self.changes.increment(1);
        tracing::debug!(name = %self.name, heated = heated.len(), cooled = cooled.len(), "hot keys changed");
        let change = HotChange {
            heated: &heated,
            cooled: &cooled,
            hot: &set,
        };
        for listener in &self.listeners {
            listener(&change);
        }
        self.tx.send_replace(set);
    }
}

/// A Tower layer that finds the hot keys of the traffic and protects the
/// service from them (issue 29; the seeds' live-streaming backend, where
/// one popular room sends a node over the edge).
///
/// - Each request's key (`key(&request)`: a room id, a user id, anything)
///   is counted in a [`HeavyKeeper`] sketch; the hot set (the top `k` at or
///   above `min_count`) is read every `refresh`, and at once when a key
///   crosses `min_count`.
/// - The hot set is published through the handle
///   ([`HotKeyHandle::hot`]), a `watch` subscription
///   ([`HotKeyHandle::subscribe`]) and change callbacks
///   ([`HotKeyBuilder::on_change`]).
/// - A hot request gets a [`Hot`] extension (its key and estimate) for the
///   handler, or for [`HotCacheLayer`](crate::HotCacheLayer) below, to read.
/// - With `hot_limit`, each hot key has its own token bucket: a hot room is
///   refused over its quota (`RateLimited`, HTTP 429) instead of taking the
///   whole service; keys that are not hot are never limited by it.
///
/// ```
/// use floodwall_hotkey::{Hot, HotKeyConfig, HotKeyLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), floodwall_core::BoxError> {
/// let layer = HotKeyLayer::new(HotKeyConfig { min_count: 3, ..HotKeyConfig::default() }, |req: &http::Request<u64>| {
///     Some(*req.body())
/// })?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|req: http::Request<u64>| async move {
///     Ok::<_, floodwall_core::BoxError>(req.extensions().get::<Hot<u64>>().is_some())
/// }));
/// for _ in 0..2 {
///     assert!(!svc.clone().oneshot(http::Request::new(42)).await?, "not hot yet");
///     tokio::time::advance(std::time::Duration::from_millis(1)).await;
/// }
/// assert!(svc.clone().oneshot(http::Request::new(42)).await?, "the third makes room 42 hot");
/// assert!(handle.hot().contains(&42));
/// # Ok(())
/// # }
/// ```
pub struct HotKeyLayer<K, X> {
    shared: Arc<Shared<K>>,
    key: Arc<X>,
}

impl<K, X> Clone for HotKeyLayer<K, X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, X> fmt::Debug for HotKeyLayer<K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeyLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, X> HotKeyLayer<K, X> {
    /// A layer keyed by `key(&request)`, named [`HOT_KEY_NAME`].
    ///
    /// # Errors
    /// As [`HotKeyConfig::validate`].
    pub fn new(config: HotKeyConfig, key: X) -> Result<Self, ConfigError> {
        HotKeyLayer::builder(config, key).build()
    }

    /// A handle on the hot set.
    pub fn handle(&self) -> HotKeyHandle<K> {
        HotKeyHandle {
            shared: self.shared.clone(),
        }
    }
}

impl HotKeyLayer<(), ()> {
    /// A builder, to set the name and change callbacks.
    pub fn builder<K, X>(config: HotKeyConfig, key: X) -> HotKeyBuilder<K, X> {
        HotKeyBuilder {
            config,
            key,
            name: Arc::from(HOT_KEY_NAME),
            listeners: Vec::new(),
        }
    }
}

/// Builds a [`HotKeyLayer`]; from [`HotKeyLayer::builder`].
#[must_use = "call build()"]
pub struct HotKeyBuilder<K, X> {
    config: HotKeyConfig,
    key: X,
    name: Arc<str>,
    listeners: Vec<Listener<K>>,
}

impl<K, X> fmt::Debug for HotKeyBuilder<K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeyBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, X> HotKeyBuilder<K, X> {
    /// The layer's name (its metric label). Default [`HOT_KEY_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `listener` with every change of the hot set (in the request
    /// that read it: keep it short).
    pub fn on_change(
        mut self,
        listener: impl Fn(&HotChange<'_, K>) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`HotKeyConfig::validate`].
    pub fn build(self) -> Result<HotKeyLayer<K, X>, ConfigError> {
        self.config.validate()?;
        let name = self.name;
        let label = name.to_string();
        let epoch = Instant::now();
        let limiter = self.config.hot_limit.map(|quota| {
            let policy = Arc::new(RateLimitPolicy::new(
                format!("{name}:hot"),
                u64::from(quota.tokens()),
                quota.period(),
            ));
            // Only hot keys are limited: room for all of them, and as many
            // again that just cooled.
            (
                KeyedTokenBucket::with_epoch(quota, 2 * self.config.topk.k, epoch),
                policy,
            )
        });
        let (tx, _) = watch::channel(Arc::new(HotSet::default()));
        Ok(HotKeyLayer {
            shared: Arc::new(Shared {
                sketch: HeavyKeeper::new(self.config.topk)?,
                hot: RwLock::new(Arc::new(HotSet::default())),
                tx,
                listeners: self.listeners,
                epoch,
                next_refresh: AtomicU64::new(0),
                last_refresh: AtomicU64::new(0),
                limiter,
                requests: RequestCounters::new(HOT_KEY_METRIC_PREFIX, &name),
                hot_requests: metrics::counter!(metric_name(HOT_KEY_METRIC_PREFIX, "marked_total"), LABEL_NAME => label.clone()),
                hot_keys: metrics::gauge!(metric_name(HOT_KEY_METRIC_PREFIX, "keys"), LABEL_NAME => label.clone()),
                changes: metrics::counter!(metric_name(HOT_KEY_METRIC_PREFIX, "changes_total"), LABEL_NAME => label),
                config: self.config,
                name,
            }),
            key: Arc::new(self.key),
        })
    }
}

/// A cheap handle on a [`HotKeyLayer`]'s hot set.
pub struct HotKeyHandle<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for HotKeyHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for HotKeyHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeyHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> HotKeyHandle<K> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The hot set as last read.
    pub fn hot(&self) -> Arc<HotSet<K>> {
        self.shared.hot.read().clone()
    }

    /// A subscription to the hot set: it changes whenever a key heats or
    /// cools.
    pub fn subscribe(&self) -> watch::Receiver<Arc<HotSet<K>>> {
        self.shared.tx.subscribe()
    }

    /// The heaviest keys the sketch holds now (hot or not), heaviest first.
    pub fn top(&self) -> Vec<(K, u32)> {
        self.shared.sketch.top()
    }
}
