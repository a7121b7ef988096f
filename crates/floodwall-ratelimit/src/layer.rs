use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{ConfigError, RateLimitPolicy};
use metrics::Counter;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::{Keyed, KeyedLimit, One, RateLimit, Refund, key_capacity};

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
            .field("name", &self.shared.policy.name())
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

    fn finish<L>(mut self, limiter: L) -> RateLimitLayer<A, L, W> {
        let (quota, window) = A::policy(&self.config);
        let max_wait = A::max_wait(&self.config);
        let name: Arc<str> = Arc::from(A::name_and_capacity(&mut self.config).0.as_str());
        RateLimitLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(A::METRIC_PREFIX, &name),
                limiter,
                policy: Arc::new(RateLimitPolicy::new(name, quota, window)),
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
    pub(crate) policy: Arc<RateLimitPolicy>,
    pub(crate) max_wait: Duration,
    pub(crate) metrics: Metrics,
}

/// Metric handles, registered once when the layer is built:
/// `floodwall_<layer>_requests_total{name, outcome, reason}` (every refusal
/// is `rate_limited`), and `floodwall_<layer>_waited_total{name}` for the
/// requests admitted after waiting for their turn.
pub(crate) struct Metrics {
    pub(crate) requests: RequestCounters,
    pub(crate) waited: Counter,
}

impl Metrics {
    fn new(layer: &'static str, name: &str) -> Self {
        Self {
            requests: RequestCounters::new(layer, name),
            waited: metrics::counter!(metric_name(layer, "waited_total"), LABEL_NAME => name.to_owned()),
        }
    }
}

/// A cheap, cloneable view of a rate-limit layer's live state.
pub struct RateLimitHandle<L, W = One> {
    shared: Arc<Shared<L, W>>,
}

impl<L, W> RateLimitHandle<L, W> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.policy.name()
    }

    /// The policy the layer reports in `RateLimit` header fields.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.shared.policy
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
