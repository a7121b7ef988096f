use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::RateLimitPolicy;
use floodwall_ratelimit::{Keyed, One, RateLimitHandle, RateLimitLayer, RateLimitService};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::{KeyedTokenBucket, Quota, TokenBucket};

/// The default name of a token-bucket layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "token_bucket";

/// The service a [`TokenBucketLayer`] builds.
pub type TokenBucketService<S, L = TokenBucket, W = One> = RateLimitService<S, L, W>;

/// A cheap, cloneable view of a [`TokenBucketLayer`]'s live state.
pub struct TokenBucketHandle<L = TokenBucket, W = One> {
    inner: RateLimitHandle<L, W>,
}

impl<L, W> TokenBucketHandle<L, W> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The policy the layer reports in `RateLimit` header fields.
    pub fn policy(&self) -> &RateLimitPolicy {
        self.inner.policy()
    }

    /// The limiter: a [`TokenBucket`] or [`Keyed`] buckets.
    pub fn limiter(&self) -> &L {
        self.inner.limiter()
    }
}

impl<W> TokenBucketHandle<TokenBucket, W> {
    /// Whole tokens available now.
    pub fn available(&self) -> u32 {
        self.limiter().available(Instant::now())
    }
}

impl<K: Hash + Eq, X, W> TokenBucketHandle<Keyed<KeyedTokenBucket<K>, X>, W> {
    /// Whole tokens available now to `key`.
    pub fn available(&self, key: &K) -> u32 {
        self.limiter().limiter().available(key, Instant::now())
    }

    /// Keys currently remembered.
    pub fn keys(&self) -> usize {
        self.limiter().limiter().len()
    }
}

impl<L, W> Clone for TokenBucketHandle<L, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: fmt::Debug, W> fmt::Debug for TokenBucketHandle<L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenBucketHandle")
            .field(&self.inner)
            .finish()
    }
}

/// A Tower layer that rate-limits requests with a GCRA token bucket.
///
/// # Clone
/// The layer owns the limiter state in an `Arc`: every service it builds,
/// and every clone of those services, draws from the same bucket. Apply one
/// layer value to several routes and they share one limit; build one layer
/// per route for separate limits.
///
/// # Shedding and waiting
/// By default a request without a token is refused at once in `call` with a
/// [`RateLimited`](crate::error::RateLimited) error (readiness is the inner
/// service's: no permit is ever held between `poll_ready` and `call`). With
/// [`Builder::wait`] a request may instead wait up to a bound for its turn.
///
/// ```
/// use floodwall_core::{BoxError, Rejected, RejectKind};
/// use floodwall_token_bucket::{Quota, TokenBucketLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = TokenBucketLayer::new(Quota::per_second(2)?);
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|req: &'static str| async move { Ok::<_, BoxError>(req) }));
///
/// assert_eq!(svc.clone().oneshot("a").await?, "a");
/// assert_eq!(svc.clone().oneshot("b").await?, "b");
/// let err = svc.clone().oneshot("c").await.unwrap_err();
/// assert_eq!(Rejected::find(&*err).unwrap().kind(), RejectKind::RateLimited);
/// # Ok(())
/// # }
/// ```
pub struct TokenBucketLayer<L = TokenBucket, W = One> {
    inner: RateLimitLayer<L, W>,
}

impl TokenBucketLayer<TokenBucket> {
    /// A shedding layer with `quota`, named [`DEFAULT_NAME`].
    pub fn new(quota: Quota) -> Self {
        Self::builder(quota).build()
    }

    /// A builder to set the name, a wait bound, weights or keys.
    pub fn builder(quota: Quota) -> Builder {
        Builder {
            quota,
            name: Arc::from(DEFAULT_NAME),
            max_wait: Duration::ZERO,
            weigh: One,
        }
    }
}

impl<L, W> TokenBucketLayer<L, W> {
    /// A cheap handle on the live limiter state (tokens available, keys).
    pub fn handle(&self) -> TokenBucketHandle<L, W> {
        TokenBucketHandle {
            inner: self.inner.handle(),
        }
    }
}

impl<L, W> Clone for TokenBucketLayer<L, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: fmt::Debug, W> fmt::Debug for TokenBucketLayer<L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenBucketLayer")
            .field(&self.inner)
            .finish()
    }
}

impl<S, L, W> Layer<S> for TokenBucketLayer<L, W> {
    type Service = TokenBucketService<S, L, W>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// Builds a [`TokenBucketLayer`]; from [`TokenBucketLayer::builder`].
#[derive(Debug, Clone)]
pub struct Builder<W = One> {
    quota: Quota,
    name: Arc<str>,
    max_wait: Duration,
    weigh: W,
}

impl<W> Builder<W> {
    /// The layer's name: the `name` label of its metrics and the policy name
    /// in `RateLimit` header fields. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Wait mode: a request without a token waits for its turn if that comes
    /// within `max_wait` (capped at about 36 years), and is refused at once
    /// otherwise. Waiting requests queue in arrival order, one interval
    /// apart (each reserves its tokens when it arrives), and hold no
    /// readiness of the inner service while they wait. A waiter that is
    /// dropped never reaches the inner service and cancels its reservation:
    /// the newest waiter's tokens go back at once; an earlier waiter's slot
    /// goes unused, because the waiters behind it keep their start times.
    /// Zero (the default) means never wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_core::{BoxError, Rejected};
    /// use floodwall_token_bucket::{Quota, TokenBucketLayer};
    /// use tokio::time::Instant;
    /// use tower::{Layer, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), BoxError> {
    /// // One request every 100 ms; wait up to 250 ms for a turn.
    /// let layer = TokenBucketLayer::builder(Quota::per_second(10)?.with_burst(1)?)
    ///     .wait(Duration::from_millis(250))
    ///     .build();
    /// let t0 = Instant::now();
    /// let svc = layer.layer(service_fn(move |_: ()| async move {
    ///     Ok::<_, BoxError>(t0.elapsed())
    /// }));
    ///
    /// let calls: Vec<_> = (0..3).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
    /// tokio::task::yield_now().await;
    /// // A fourth would wait 300 ms: refused at once, told how long it would take.
    /// let err = svc.clone().oneshot(()).await.unwrap_err();
    /// assert_eq!(Rejected::find(&*err).unwrap().retry_after(), Some(Duration::from_millis(300)));
    ///
    /// let mut started = Vec::new();
    /// for call in calls {
    ///     started.push(call.await??);
    /// }
    /// let ms = Duration::from_millis;
    /// assert_eq!(started, [ms(0), ms(100), ms(200)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Charge each request `weigh(&request)` tokens instead of one (a batch
    /// call of 50 items might cost 50). A request costing more than the
    /// burst is refused with [`ExceedsBurst`](crate::error::ExceedsBurst).
    pub fn weigh<W2>(self, weigh: W2) -> Builder<W2> {
        Builder {
            quota: self.quota,
            name: self.name,
            max_wait: self.max_wait,
            weigh,
        }
    }

    /// One bucket shared by every request.
    pub fn build(self) -> TokenBucketLayer<TokenBucket, W> {
        let bucket = TokenBucket::new(self.quota);
        self.finish(bucket)
    }

    /// One bucket per key, `extract(&request)` giving the key, remembering at
    /// most `capacity` keys (see [`KeyedTokenBucket`] for the eviction rule).
    /// Requests for which `extract` returns `None` are not limited.
    pub fn build_keyed<Req, K, X>(
        self,
        capacity: usize,
        extract: X,
    ) -> TokenBucketLayer<Keyed<KeyedTokenBucket<K>, X>, W>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let buckets = KeyedTokenBucket::new(self.quota, capacity).with_metrics(&self.name);
        self.finish(Keyed::new(buckets, extract))
    }

    fn finish<L>(self, limiter: L) -> TokenBucketLayer<L, W> {
        let policy = RateLimitPolicy::new(
            self.name,
            u64::from(self.quota.tokens()),
            self.quota.period(),
        );
        let inner = RateLimitLayer::builder(limiter, policy, crate::METRIC_PREFIX)
            .wait(self.max_wait)
            .weigh(self.weigh)
            .build();
        TokenBucketLayer { inner }
    }
}
