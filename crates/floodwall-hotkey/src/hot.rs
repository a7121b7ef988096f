//! The hot-key layer: counts each request's key, knows the hot set, marks
//! hot requests and limits each hot key on its own quota.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::config::check_duration;
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{BoxError, ConfigError, RateLimitPolicy, RejectKind, Rejected};
use floodwall_ratelimit::error::RateLimited;
use floodwall_ratelimit::{Denied, KeyedTokenBucket, Quota};
use hashbrown::HashMap;
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{HeavyKeeper, TopKConfig};

/// The default name (metric label) of a [`HotKeyLayer`].
pub const HOT_KEY_NAME: &str = "hotkey";

/// The prefix of the hot-key layer's metric names:
/// `floodwall_hotkey_requests_total{name, outcome, reason}` (refused: a hot
/// key over its own quota), `floodwall_hotkey_marked_total{name}`
/// (requests marked hot), the gauge `floodwall_hotkey_keys{name}` (keys
/// hot now) and `floodwall_hotkey_changes_total{name}` (changes of the hot
/// set).
pub const HOT_KEY_METRIC_PREFIX: &str = "hotkey";

/// A [`HotKeyLayer`]'s configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HotKeyConfig {
    /// The sketch counting the keys; its `k` bounds the hot set. Default
    /// `k` 20, the rest [`TopKConfig::default`] (64 KiB, halved every
    /// 500 ms).
    pub topk: TopKConfig,
    /// A key among the top `k` is hot while its estimate is at least this
    /// (arrivals over about the last two fading periods). Default 50.
    pub min_count: u32,
    /// How often the hot set is read from the sketch; a key that crosses
    /// `min_count` makes it read at once (at most once a millisecond).
    /// Default 100 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub refresh: Duration,
    /// Each hot key's own quota (a hot room cannot take the whole
    /// service); `None`: hot keys are only marked. Default `None`.
    pub hot_limit: Option<Quota>,
}

impl Default for HotKeyConfig {
    fn default() -> Self {
        Self {
            topk: TopKConfig {
                k: 20,
                ..TopKConfig::default()
            },
            min_count: 50,
            refresh: Duration::from_millis(100),
            hot_limit: None,
        }
    }
}

impl HotKeyConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// As [`TopKConfig::validate`]; a `min_count` of 0; a zero or
    /// out-of-range `refresh`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.topk.validate()?;
        if self.min_count == 0 {
            return Err(ConfigError::new("min_count", "must be at least 1"));
        }
        check_duration("refresh", self.refresh)?;
        if self.refresh.is_zero() {
            return Err(ConfigError::new("refresh", "must be above zero"));
        }
        Ok(())
    }
}

/// The hot keys at one instant, with their estimates.
#[derive(Debug, Clone)]
pub struct HotSet<K> {
    keys: HashMap<K, u32>,
}

impl<K> Default for HotSet<K> {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> HotSet<K> {
    /// Whether `key` is hot.
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains_key(key)
    }

    /// `key`'s estimate, if it is hot.
    pub fn estimate(&self, key: &K) -> Option<u32> {
        self.keys.get(key).copied()
    }

    /// The hot keys and their estimates (in no order).
    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.keys.iter().map(|(k, &e)| (k, e))
    }

    /// How many keys are hot.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is hot.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Put in a hot request's extensions: its key and estimate, for the
/// handler (and [`HotCacheLayer`](crate::HotCacheLayer)) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hot<K> {
    /// The request's key.
    pub key: K,
    /// Its estimate when the hot set was last read.
    pub estimate: u32,
}

/// Put in every counted request's extensions (hot or not): its key, for
/// [`HotCacheLayer`](crate::HotCacheLayer) to coalesce cold reads too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<K>(pub K);

/// A change of the hot set, as the change callbacks see it.
#[derive(Debug)]
pub struct HotChange<'a, K> {
    /// Keys hot now that were not.
    pub heated: &'a [K],
    /// Keys hot before that are not now.
    pub cooled: &'a [K],
    /// The hot set now.
    pub hot: &'a HotSet<K>,
}

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

impl<S, K, X> Layer<S> for HotKeyLayer<K, X> {
    type Service = HotKey<S, K, X>;

    fn layer(&self, inner: S) -> Self::Service {
        HotKey {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service a [`HotKeyLayer`] builds.
pub struct HotKey<S, K, X> {
    inner: S,
    shared: Arc<Shared<K>>,
    key: Arc<X>,
}

impl<S: Clone, K, X> Clone for HotKey<S, K, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, X> fmt::Debug for HotKey<S, K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKey")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        Refused { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`HotKey`]: the inner call, or a hot key's
    /// refusal ready at once.
    pub struct HotKeyFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> HotKeyFuture<F> {
    fn called(fut: F) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for HotKeyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Called { .. } => "HotKeyFuture::Called",
            State::Refused { .. } => "HotKeyFuture::Refused",
        })
    }
}

impl<F, T, E> Future for HotKeyFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after its end")))
            }
        }
    }
}

impl<S, B, K, X> Service<http::Request<B>> for HotKey<S, K, X>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&http::Request<B>) -> Option<K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HotKeyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let Some(key) = (self.key)(&req) else {
            shared.requests.admitted();
            return HotKeyFuture::called(self.inner.call(req));
        };
        let now = floodwall_core::clock::now();
        let estimate = shared.sketch.add(&key, now);
        let crossed = estimate >= shared.config.min_count && !shared.hot.read().contains(&key);
        shared.refresh_if_due(now, crossed);
        let hot = shared.hot.read().estimate(&key);
        if let Some(estimate) = hot {
            if let Some((limiter, policy)) = &shared.limiter
                && let Err(denied) = limiter.try_acquire(&key, now, 1)
            {
                let retry_after = match denied {
                    Denied::RateLimited { retry_after } => retry_after,
                    _ => Duration::ZERO,
                };
                shared.requests.rejected(RejectKind::RateLimited);
                return HotKeyFuture::refused(Rejected::boxed(RateLimited::new(
                    retry_after,
                    policy.clone(),
                )));
            }
            shared.hot_requests.increment(1);
            req.extensions_mut().insert(Hot {
                key: key.clone(),
                estimate,
            });
        }
        req.extensions_mut().insert(Keyed(key));
        shared.requests.admitted();
        HotKeyFuture::called(self.inner.call(req))
    }
}
