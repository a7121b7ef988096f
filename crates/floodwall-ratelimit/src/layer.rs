use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{ConfigError, RateLimitPolicy};
use metrics::{Counter, Gauge};
use parking_lot::RwLock;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::{Keyed, KeyedLimit, One, RateLimit, Reconfigure, Refund, key_capacity};

/// A rate-limiting algorithm as the shared layer builds it: its
/// configuration, its limiter, its per-key form.
///
/// Implemented once per algorithm crate by a marker type
/// (`floodwall_token_bucket::TokenBuckets`, ...); every rate limiter's
/// layer is then [`RateLimitLayer<A>`](RateLimitLayer) under its own name,
/// with the same constructors, builder, handle and service.
pub trait Algorithm: Sized + 'static {
    /// The configuration, plain data.
    type Config: Clone + fmt::Debug;
    /// One limiter for every request.
    type Limiter: Refund;
    /// One limiter per key.
    type PerKey<K: LimitKey>: KeyedLimit<Key = K>;

    /// The metric prefix: `floodwall_<prefix>_requests_total`.
    const METRIC_PREFIX: &'static str;

    /// The configuration's name (metric label, policy name) and key
    /// capacity, for the builder to set.
    fn name_and_capacity(config: &mut Self::Config) -> (&mut String, &mut usize);

    /// What `RateLimit` header fields advertise: the quota and its window.
    fn policy(config: &Self::Config) -> (u64, Duration);

    /// How long a request may wait for its turn; zero (the default: the
    /// algorithm never schedules) sheds at once.
    fn max_wait(config: &Self::Config) -> Duration {
        let _ = config;
        Duration::ZERO
    }

    /// The limiter for every request.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field.
    fn limiter(config: &Self::Config) -> Result<Self::Limiter, ConfigError>;

    /// One limiter per key, remembering at most `capacity` keys, reporting
    /// its key count under `floodwall_<prefix>_keys{name}`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field.
    fn per_key<K: LimitKey>(
        config: &Self::Config,
        capacity: usize,
    ) -> Result<Self::PerKey<K>, ConfigError>;
}

/// What a keyed layer's key must be: hashable, comparable, cheap to clone
/// and shareable across threads (an IP address, a user id, a room name).
pub trait LimitKey: Hash + Eq + Clone + Send + Sync + 'static {}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LimitKey for K {}

/// An [`Algorithm`] whose requests may wait for their turn (the token
/// bucket's wait mode).
pub trait Schedules: Algorithm {
    /// Sets the wait bound in `config`.
    fn set_max_wait(config: &mut Self::Config, max_wait: Duration);
}

/// How much a limiter would admit now: read through a layer's handle.
pub trait Remaining {
    /// Single units the limiter would admit at `now`.
    fn remaining(&self, now: Instant) -> u32;
}

/// The Tower layer behind every floodwall rate limiter: it asks a limiter
/// `L` about every request. Each algorithm crate names it
/// (`TokenBucketLayer`, `LeakyBucketLayer`, `SlidingWindowLayer`) with its
/// [`Algorithm`] `A`.
///
/// # Clone
/// The layer owns the limiter in an `Arc`: every service it builds, and
/// every clone of those services, shares it. One layer value is one limit.
///
/// # Shedding and waiting
/// A request the limiter refuses gets a ready error future in `call`
/// (readiness is the inner service's; nothing is held between `poll_ready`
/// and `call`). With a wait bound, a request the limiter can schedule within
/// the bound waits for its turn instead, holding no readiness of the inner
/// service while it waits.
pub struct RateLimitLayer<A, L = <A as Algorithm>::Limiter, W = One>
where
    A: Algorithm,
{
    shared: Arc<Shared<L, W>>,
    algorithm: PhantomData<fn() -> A>,
}

impl<A: Algorithm> RateLimitLayer<A> {
    /// A layer from `config`: one limiter for every request.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field.
    pub fn new(config: impl Into<A::Config>) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder to set the name, weights or keys.
    pub fn builder(config: impl Into<A::Config>) -> Builder<A> {
        Builder {
            config: config.into(),
            weigh: One,
        }
    }
}

impl<A: Algorithm, L, W> RateLimitLayer<A, L, W> {
    /// A cheap handle on the live limiter state.
    pub fn handle(&self) -> RateLimitHandle<L, W> {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<A: Algorithm, L, W> Clone for RateLimitLayer<A, L, W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            algorithm: PhantomData,
        }
    }
}

impl<A: Algorithm, L: fmt::Debug, W> fmt::Debug for RateLimitLayer<A, L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("layer", &A::METRIC_PREFIX)
            .field("name", &self.shared.name)
            .field("max_wait", &self.shared.max_wait)
            .field("limiter", &self.shared.limiter)
            .finish()
    }
}

impl<S, A: Algorithm, L, W> Layer<S> for RateLimitLayer<A, L, W> {
    type Service = RateLimit<S, L, W>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}

/// A layer with one limiter of algorithm `A` per key `K`, extracted by `X`.
pub type KeyedLayer<A, K, X, W = One> = RateLimitLayer<A, Keyed<<A as Algorithm>::PerKey<K>, X>, W>;

/// Builds a [`RateLimitLayer`]; from [`RateLimitLayer::builder`].
pub struct Builder<A: Algorithm, W = One> {
    config: A::Config,
    weigh: W,
}

impl<A: Algorithm, W: Clone> Clone for Builder<A, W> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            weigh: self.weigh.clone(),
        }
    }
}

impl<A: Algorithm, W> fmt::Debug for Builder<A, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<A: Algorithm, W> Builder<A, W> {
    /// The layer's name: the `name` label of its metrics and the policy name
    /// in `RateLimit` header fields.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        *A::name_and_capacity(&mut self.config).0 = name.into();
        self
    }

    /// Keyed layers: how many keys to remember (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        *A::name_and_capacity(&mut self.config).1 = capacity;
        self
    }

    /// Charge each request `weigh(&request)` units instead of one (a batch
    /// call of 50 items might cost 50). A request costing more than the
    /// limiter ever allows at once is refused with
    /// [`ExceedsBurst`](crate::error::ExceedsBurst).
    pub fn weigh<W2>(self, weigh: W2) -> Builder<A, W2> {
        Builder {
            config: self.config,
            weigh,
        }
    }

    /// One limiter for every request.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field.
    pub fn build(self) -> Result<RateLimitLayer<A, A::Limiter, W>, ConfigError> {
        floodwall_core::config::check_duration("max_wait", A::max_wait(&self.config))?;
        let limiter = A::limiter(&self.config)?;
        Ok(self.finish(limiter))
    }

    /// One limiter per key, `extract(&request)` giving the key, remembering
    /// at most [`capacity`](Self::capacity) keys (see
    /// [`KeyedMap`](crate::KeyedMap) for the eviction rule). Requests for
    /// which `extract` returns `None` are not limited.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the invalid field; `capacity` 0 is one.
    pub fn build_keyed<Req, K, X>(
        mut self,
        extract: X,
    ) -> Result<KeyedLayer<A, K, X, W>, ConfigError>
    where
        K: LimitKey,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        floodwall_core::config::check_duration("max_wait", A::max_wait(&self.config))?;
        let capacity = key_capacity(*A::name_and_capacity(&mut self.config).1)?;
        let limiters = A::per_key(&self.config, capacity)?;
        Ok(self.finish(Keyed::new(limiters, extract)))
    }

    /// A keyed layer over a per-key limiter made elsewhere — a
    /// [`TieredTokenBucket`](crate::TieredTokenBucket), or any
    /// [`KeyedLimit`] — with `extract(&request)` giving the key; the
    /// configuration gives the name, the wait bound and the policy the
    /// layer reports.
    ///
    /// # Errors
    /// A [`ConfigError`] for an invalid wait bound.
    pub fn build_keyed_with<Req, M, X>(
        self,
        limiter: M,
        extract: X,
    ) -> Result<RateLimitLayer<A, Keyed<M, X>, W>, ConfigError>
    where
        M: KeyedLimit,
        X: Fn(&Req) -> Option<M::Key> + Send + Sync + 'static,
    {
        floodwall_core::config::check_duration("max_wait", A::max_wait(&self.config))?;
        Ok(self.finish(Keyed::new(limiter, extract)))
    }

    fn finish<L>(mut self, limiter: L) -> RateLimitLayer<A, L, W> {
        let (quota, window) = A::policy(&self.config);
        let max_wait = A::max_wait(&self.config);
        let name: Arc<str> = Arc::from(A::name_and_capacity(&mut self.config).0.as_str());
        RateLimitLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(A::METRIC_PREFIX, &name, (quota, window)),
                limiter,
                policy: RwLock::new(Arc::new(RateLimitPolicy::new(name.clone(), quota, window))),
                name,
                max_wait,
                weigh: self.weigh,
            }),
            algorithm: PhantomData,
        }
    }
}

impl<A: Schedules, W> Builder<A, W> {
    /// Wait mode: a request the limiter can schedule within `max_wait`
    /// waits for its turn, holding no readiness of the inner service, and
    /// others are refused at once. Zero (the default) never waits. What a
    /// waiter that gives up returns is the limiter's rule.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        A::set_max_wait(&mut self.config, max_wait);
        self
    }
}

/// The state every service of one layer shares.
pub(crate) struct Shared<L, W> {
    pub(crate) limiter: L,
    pub(crate) weigh: W,
    pub(crate) name: Arc<str>,
    /// What refusals report; replaced by a reconfiguration.
    pub(crate) policy: RwLock<Arc<RateLimitPolicy>>,
    pub(crate) max_wait: Duration,
    pub(crate) metrics: Metrics,
}

impl<L, W> Shared<L, W> {
    /// The policy in force.
    pub(crate) fn policy(&self) -> Arc<RateLimitPolicy> {
        self.policy.read().clone()
    }
}

/// Metric handles, registered once when the layer is built:
/// `floodwall_<layer>_requests_total{name, outcome, reason}` (every refusal
/// is `rate_limited`), and `floodwall_<layer>_waited_total{name}` for the
/// requests admitted after waiting for their turn.
pub(crate) struct Metrics {
    pub(crate) requests: RequestCounters,
    pub(crate) waited: Counter,
    /// `floodwall_<layer>_reconfigurations_total{name}`.
    pub(crate) reconfigured: Counter,
    /// `floodwall_<layer>_limit{name}`: the configured limit, requests per
    /// second.
    pub(crate) limit: Gauge,
}

impl Metrics {
    fn new(layer: &'static str, name: &str, (quota, window): (u64, Duration)) -> Self {
        let metrics = Self {
            requests: RequestCounters::new(layer, name),
            waited: metrics::counter!(metric_name(layer, "waited_total"), LABEL_NAME => name.to_owned()),
            reconfigured: metrics::counter!(metric_name(layer, "reconfigurations_total"), LABEL_NAME => name.to_owned()),
            limit: metrics::gauge!(metric_name(layer, "limit"), LABEL_NAME => name.to_owned()),
        };
        metrics.set_limit(quota, window);
        metrics
    }

    fn set_limit(&self, quota: u64, window: Duration) {
        self.limit
            .set(quota as f64 / window.as_secs_f64().max(f64::MIN_POSITIVE));
    }
}

/// A cheap, cloneable view of a rate-limit layer's live state.
pub struct RateLimitHandle<L, W = One> {
    shared: Arc<Shared<L, W>>,
}

impl<L, W> RateLimitHandle<L, W> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The policy the layer reports in `RateLimit` header fields (the one
    /// in force: a reconfiguration replaces it).
    pub fn policy(&self) -> Arc<RateLimitPolicy> {
        self.shared.policy()
    }

    /// The limiter, to read its state (tokens available, keys remembered).
    pub fn limiter(&self) -> &L {
        &self.shared.limiter
    }

    /// Single requests the limiter would admit now (for a keyed layer, use
    /// `limiter().limiter().remaining(&key, now)`).
    pub fn remaining(&self) -> u32
    where
        L: Remaining,
    {
        self.shared.limiter.remaining(Instant::now())
    }
}

impl<L: Reconfigure, W> RateLimitHandle<L, W> {
    /// Changes the layer's limit while it serves: the next decision is made
    /// under `params` (a [`Quota`](crate::Quota) for token buckets, every
    /// key's at once for a keyed layer), with the state carried over by
    /// the algorithm's rule (SPECS.md, "Reconfiguration"; for token
    /// buckets, the tokens available now, capped at the new burst).
    /// Atomic for concurrent callers: each decision is wholly under the old
    /// limit or wholly under the new. The `RateLimit-Policy` the layer
    /// reports changes with it; `floodwall_<layer>_reconfigurations_total`
    /// counts the change and `floodwall_<layer>_limit` shows the new rate.
    /// A quota is valid once made ([`Quota::new`](crate::Quota::new)
    /// validates), so there is nothing left to refuse here. The example is
    /// on `floodwall_token_bucket::TokenBucketLayer`.
    pub fn reconfigure(&self, params: impl Into<L::Params>) {
        let params = params.into();
        let (quota, window) = L::policy(&params);
        let shared = &self.shared;
        let mut policy = shared.policy.write();
        shared.limiter.reconfigure(params, Instant::now());
        *policy = Arc::new(RateLimitPolicy::new(shared.name.clone(), quota, window));
        drop(policy);
        shared.metrics.reconfigured.increment(1);
        shared.metrics.set_limit(quota, window);
        tracing::info!(name = %shared.name, quota, ?window, "rate limit reconfigured");
    }
}

impl<L, W> Clone for RateLimitHandle<L, W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<L: fmt::Debug, W> fmt::Debug for RateLimitHandle<L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("name", &self.name())
            .field("limiter", &self.shared.limiter)
            .finish()
    }
}
