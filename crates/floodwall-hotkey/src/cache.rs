//! The hot-key cache: hot keys answered from a bounded local cache with a
//! TTL, their misses coalesced, so a hot key reaches the backend at most
//! once per TTL.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::config::check_duration;
use floodwall_core::metrics::{LABEL_NAME, metric_name};
use floodwall_core::{BoxError, ConfigError};
use floodwall_tail::{Entry, Singleflight};
use hashbrown::HashMap;
use metrics::Counter;
use parking_lot::Mutex;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Hot, Keyed};

/// The default name (metric label) of a [`HotCacheLayer`].
pub const HOT_CACHE_NAME: &str = "hot_cache";

/// The prefix of the hot cache's metric names:
/// `floodwall_hot_cache_lookups_total{name, result}` (`hit`; `miss`, a call
/// made; `joined`, a miss answered by another's call; `bypass`, a request
/// not cached: not hot, denied, or over the bound of calls in flight).
pub const HOT_CACHE_METRIC_PREFIX: &str = "hot_cache";

/// A [`HotCacheLayer`]'s configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HotCacheConfig {
    /// How long a cached answer is served. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ttl: Duration,
    /// The most answers cached (and calls in flight). Default 1,000.
    pub max_entries: usize,
}

impl Default for HotCacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(1),
            max_entries: 1_000,
        }
    }
}

impl HotCacheConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero or out-of-range `ttl` or a `max_entries`
    /// of 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_duration("ttl", self.ttl)?;
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be above zero"));
        }
        if self.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        Ok(())
    }
}

type Rule<K> = Box<dyn Fn(&K) -> bool + Send + Sync>;

struct Shared<K, R> {
    name: Arc<str>,
    config: HotCacheConfig,
    entries: Mutex<HashMap<K, (R, Instant)>>,
    flights: Arc<Singleflight<K, R>>,
    allow: Option<Rule<K>>,
    deny: Option<Rule<K>>,
    hits: Counter,
    /// Requests answered from the cache, for the handle.
    hit_count: std::sync::atomic::AtomicU64,
    misses: Counter,
    joined: Counter,
    bypassed: Counter,
}

impl<K: Hash + Eq + Clone, R: Clone> Shared<K, R> {
    fn cacheable(&self, key: &K) -> bool {
        self.allow.as_ref().is_none_or(|allow| allow(key))
            && !self.deny.as_ref().is_some_and(|deny| deny(key))
    }

    fn lookup(&self, key: &K, now: Instant) -> Option<R> {
        let entries = self.entries.lock();
        let (answer, expires) = entries.get(key)?;
        (now < *expires).then(|| answer.clone())
    }

    /// Caches `answer` for `key` unless a fresh answer is cached already.
    fn store_if_absent(&self, key: K, answer: &R) {
        if self.lookup(&key, Instant::now()).is_none() {
            self.store(key, answer.clone());
        }
    }

    /// Caches `answer` for `key` until `ttl` from now; over `max_entries`,
    /// expired entries go first, then the one expiring soonest.
    fn store(&self, key: K, answer: R) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= self.config.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.config.max_entries
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(key, (answer, now + self.config.ttl));
    }
}

/// A Tower layer that answers **hot** requests (those a
/// [`HotKeyLayer`](crate::HotKeyLayer) above marked with [`Hot`]) from a
/// bounded local cache with a TTL, as aegis's hot-key cache does:
///
/// - a fresh cached answer is returned without calling the service;
/// - misses for one key are coalesced ([`floodwall_tail::Singleflight`]):
///   one call, every waiter answered with a clone of its response, a
///   **successful** (2xx) answer cached for `ttl`; so a hot key reaches the
///   backend **at most once per TTL** (error answers and errors are never
///   cached: a 504 one caller's short deadline caused is not served to the
///   next);
/// - allow and deny rules choose which hot keys may be cached
///   ([`HotCacheBuilder::allow`], [`HotCacheBuilder::deny`]);
/// - reads the hot-key layer counted but that are not hot (yet) are still
///   coalesced, not cached: a key turning hot reaches the backend once per
///   call in flight, not once per request, before it is detected;
/// - requests without a key pass through untouched.
///
/// Cache only what may be served `ttl` stale: reads.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use floodwall_hotkey::{HotCacheConfig, HotCacheLayer, HotKeyConfig, HotKeyLayer};
/// use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), floodwall_core::BoxError> {
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = calls.clone();
/// let rooms = ServiceBuilder::new()
///     .layer(HotKeyLayer::new(HotKeyConfig { min_count: 2, ..HotKeyConfig::default() }, |r: &http::Request<u64>| Some(*r.body()))?)
///     .layer(HotCacheLayer::<u64, http::Response<String>>::new(HotCacheConfig { ttl: Duration::from_secs(1), ..HotCacheConfig::default() })?)
///     .service(service_fn(move |r: http::Request<u64>| {
///         c.fetch_add(1, Ordering::SeqCst);
///         async move { Ok::<_, floodwall_core::BoxError>(http::Response::new(format!("room {}", r.body()))) }
///     }));
/// for _ in 0..100 {
///     assert_eq!(rooms.clone().oneshot(http::Request::new(7)).await?.body(), "room 7");
///     tokio::time::advance(Duration::from_millis(1)).await;
/// }
/// // One call before room 7 was hot, one to fill the cache.
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok(())
/// # }
/// ```
pub struct HotCacheLayer<K, R> {
    shared: Arc<Shared<K, R>>,
}

impl<K, R> Clone for HotCacheLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, R> fmt::Debug for HotCacheLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCacheLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<K, R> HotCacheLayer<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    /// A cache for `config`, named [`HOT_CACHE_NAME`].
    ///
    /// # Errors
    /// As [`HotCacheConfig::validate`].
    pub fn new(config: HotCacheConfig) -> Result<Self, ConfigError> {
        HotCacheLayer::builder(config).build()
    }

    /// A handle on the cache.
    pub fn handle(&self) -> HotCacheHandle {
        HotCacheHandle {
            shared: self.shared.clone(),
        }
    }
}

impl HotCacheLayer<(), ()> {
    /// A builder, to set the name and the allow and deny rules.
    pub fn builder<K>(config: HotCacheConfig) -> HotCacheBuilder<K> {
        HotCacheBuilder {
            config,
            name: Arc::from(HOT_CACHE_NAME),
            allow: None,
            deny: None,
        }
    }
}

/// Builds a [`HotCacheLayer`]; from [`HotCacheLayer::builder`].
#[must_use = "call build()"]
pub struct HotCacheBuilder<K> {
    config: HotCacheConfig,
    name: Arc<str>,
    allow: Option<Rule<K>>,
    deny: Option<Rule<K>>,
}

impl<K> fmt::Debug for HotCacheBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCacheBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<K> HotCacheBuilder<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// The layer's name (its metric label). Default [`HOT_CACHE_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Only hot keys `allow` accepts are cached.
    pub fn allow(mut self, allow: impl Fn(&K) -> bool + Send + Sync + 'static) -> Self {
        self.allow = Some(Box::new(allow));
        self
    }

    /// Hot keys `deny` accepts are never cached (it wins over `allow`).
    pub fn deny(mut self, deny: impl Fn(&K) -> bool + Send + Sync + 'static) -> Self {
        self.deny = Some(Box::new(deny));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`HotCacheConfig::validate`].
    pub fn build<R>(self) -> Result<HotCacheLayer<K, R>, ConfigError>
    where
        R: Clone + Send + Sync + 'static,
    {
        self.config.validate()?;
        let label = self.name.to_string();
        let lookups = |result: &'static str| metrics::counter!(metric_name(HOT_CACHE_METRIC_PREFIX, "lookups_total"), LABEL_NAME => label.clone(), "result" => result);
        Ok(HotCacheLayer {
            shared: Arc::new(Shared {
                name: self.name,
                config: self.config,
                entries: Mutex::new(HashMap::new()),
                flights: Arc::new(Singleflight::default()),
                allow: self.allow,
                deny: self.deny,
                hits: lookups("hit"),
                hit_count: std::sync::atomic::AtomicU64::new(0),
                misses: lookups("miss"),
                joined: lookups("joined"),
                bypassed: lookups("bypass"),
            }),
        })
    }
}

/// What a [`HotCacheHandle`] reads, whatever the types.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn cached(&self) -> usize;
    fn in_flight(&self) -> usize;
    fn hits(&self) -> u64;
    fn clear(&self);
}

impl<K: Send + Sync, R: Send + Sync> Target for Shared<K, R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn cached(&self) -> usize {
        self.entries.lock().len()
    }

    fn in_flight(&self) -> usize {
        self.flights.len()
    }

    fn hits(&self) -> u64 {
        self.hit_count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// A cheap handle on a [`HotCacheLayer`].
#[derive(Clone)]
pub struct HotCacheHandle {
    shared: Arc<dyn Target>,
}

impl HotCacheHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Answers cached now (expired ones included until they are replaced
    /// or swept).
    pub fn cached(&self) -> usize {
        self.shared.cached()
    }

    /// Requests answered from the cache so far (backend calls saved).
    pub fn hits(&self) -> u64 {
        self.shared.hits()
    }

    /// Keys whose answer is being fetched now (one call each).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Forgets every cached answer (after a write that must be seen at
    /// once).
    pub fn clear(&self) {
        self.shared.clear();
    }
}

impl fmt::Debug for HotCacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCacheHandle")
            .field("name", &self.name())
            .field("cached", &self.cached())
            .finish()
    }
}

impl<S, K, R> Layer<S> for HotCacheLayer<K, R> {
    type Service = HotCache<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        HotCache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`HotCacheLayer`] builds.
pub struct HotCache<S, K, R> {
    inner: S,
    shared: Arc<Shared<K, R>>,
}

impl<S: Clone, K, R> Clone for HotCache<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, K, R> fmt::Debug for HotCache<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCache")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The response future of [`HotCache`].
pub type HotCacheFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B, K, RB> Service<http::Request<B>> for HotCache<S, K, http::Response<RB>>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    RB: Clone + Send + Sync + 'static,
{
    type Response = http::Response<RB>;
    type Error = BoxError;
    type Future = HotCacheFuture<http::Response<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut inner = floodwall_core::service::take_ready(&mut self.inner);
        let shared = self.shared.clone();
        // Hot and cacheable: served from the cache. Any other counted read
        // (a `Keyed` one) is still coalesced, so a key about to turn hot
        // does not reach the backend once per request meanwhile.
        let (key, hot) = match (
            req.extensions().get::<Hot<K>>(),
            req.extensions().get::<Keyed<K>>(),
        ) {
            (Some(hot), _) if shared.cacheable(&hot.key) => (hot.key.clone(), true),
            (_, Some(Keyed(key))) => (key.clone(), false),
            _ => {
                shared.bypassed.increment(1);
                return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
            }
        };
        if hot && let Some(answer) = shared.lookup(&key, floodwall_core::clock::now()) {
            shared.hits.increment(1);
            shared
                .hit_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Box::pin(async move { Ok(answer) });
        }
        let deadline = floodwall_core::Deadline::effective(req.extensions());
        match shared.flights.enter(key.clone(), shared.config.max_entries) {
            Entry::Follower(follower) => {
                shared.joined.increment(1);
                Box::pin(async move {
                    let answer = follower.wait(deadline).await?.map_err(BoxError::from)?;
                    // A hot read that joined a call started while its key was
                    // cold: the answer fills the cache.
                    if hot && answer.status().is_success() {
                        shared.store_if_absent(key, &answer);
                    }
                    Ok(answer)
                })
            }
            Entry::Full => {
                shared.bypassed.increment(1);
                Box::pin(async move { inner.call(req).await.map_err(Into::into) })
            }
            Entry::Leader(leader) => {
                shared.misses.increment(1);
                let call = inner.call(req);
                let filler = shared.clone();
                // The answer is cached by the call itself, so a call that
                // goes on after its leader left still fills the cache. Only
                // a success is cached: an error answer (a 504 for a caller's
                // short deadline, a 503) is that call's alone.
                let lead = leader.run(Box::pin(async move {
                    let answer = call.await.map_err(Into::into)?;
                    if hot && answer.status().is_success() {
                        filler.store(key, answer.clone());
                    }
                    Ok(answer)
                }));
                Box::pin(async move { lead.await.map_err(BoxError::from) })
            }
        }
    }
}
