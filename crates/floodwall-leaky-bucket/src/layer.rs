use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::RateLimitPolicy;
use floodwall_ratelimit::{Keyed, One, RateLimitHandle, RateLimitLayer, RateLimitService};
use floodwall_token_bucket::Quota;
use tower_layer::Layer;

use crate::{KeyedLeakyMeter, KeyedLeakyShaper, LeakyMeter, LeakyShaper};

/// The default name of a leaky-bucket layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "leaky_bucket";

/// The service a [`LeakyBucketLayer`] builds.
pub type LeakyBucketService<S, L = LeakyMeter> = RateLimitService<S, L, One>;

/// A live view of a [`LeakyBucketLayer`]: `handle.limiter()` is the meter
/// or shaper (`level(now)`, `queued(now)`).
pub type LeakyBucketHandle<L = LeakyMeter> = RateLimitHandle<L, One>;

/// A Tower layer that limits requests with a leaky bucket, as a meter
/// (overflow is refused) or as a shaper (requests wait for start slots one
/// interval apart; a full queue is refused).
///
/// # Clone
/// The layer owns the bucket in an `Arc`: every service it builds, and
/// every clone of those, shares it. One layer value is one limit.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::BoxError;
/// use floodwall_leaky_bucket::LeakyBucketLayer;
/// use floodwall_token_bucket::Quota;
/// use tokio::time::Instant;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// // Release one request every 50 ms; up to 10 may wait.
/// let shaper = LeakyBucketLayer::shaper(Quota::per_second(20)?, 10).build();
/// let t0 = Instant::now();
/// let svc = shaper.layer(service_fn(move |_: ()| async move {
///     Ok::<_, BoxError>(t0.elapsed())
/// }));
/// let calls: Vec<_> = (0..3).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
/// let mut starts = Vec::new();
/// for call in calls {
///     starts.push(call.await??);
/// }
/// let ms = Duration::from_millis;
/// assert_eq!(starts, [ms(0), ms(50), ms(100)]);
/// # Ok(())
/// # }
/// ```
pub struct LeakyBucketLayer<L = LeakyMeter> {
    inner: RateLimitLayer<L, One>,
}

impl LeakyBucketLayer<LeakyMeter> {
    /// A meter draining at `rate`'s tokens per period and holding
    /// `rate.burst()` units: a request that would overflow is refused.
    pub fn meter(rate: Quota) -> Builder<Meter> {
        Builder::new(rate, Meter)
    }

    /// A shaper releasing `rate`'s tokens per period one interval apart,
    /// with room for `queue` waiting requests.
    pub fn shaper(rate: Quota, queue: u32) -> Builder<Shaper> {
        Builder::new(rate, Shaper { queue })
    }
}

impl<L> LeakyBucketLayer<L> {
    /// A cheap handle on the live bucket state.
    pub fn handle(&self) -> LeakyBucketHandle<L> {
        self.inner.handle()
    }
}

impl<L> Clone for LeakyBucketLayer<L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: fmt::Debug> fmt::Debug for LeakyBucketLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LeakyBucketLayer")
            .field(&self.inner)
            .finish()
    }
}

impl<S, L> Layer<S> for LeakyBucketLayer<L> {
    type Service = LeakyBucketService<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// Meter mode, for [`Builder`].
#[derive(Debug, Clone, Copy)]
pub struct Meter;

/// Shaper mode with its queue capacity, for [`Builder`].
#[derive(Debug, Clone, Copy)]
pub struct Shaper {
    queue: u32,
}

/// Builds a [`LeakyBucketLayer`]; from [`LeakyBucketLayer::meter`] or
/// [`LeakyBucketLayer::shaper`].
#[derive(Debug, Clone)]
pub struct Builder<M> {
    rate: Quota,
    mode: M,
    name: Arc<str>,
}

impl<M> Builder<M> {
    fn new(rate: Quota, mode: M) -> Self {
        Self {
            rate,
            mode,
            name: Arc::from(DEFAULT_NAME),
        }
    }

    /// The layer's name: the `name` label of its metrics and the policy name
    /// in `RateLimit` header fields. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    fn finish<L>(self, limiter: L, max_wait: Duration) -> LeakyBucketLayer<L> {
        let policy =
            RateLimitPolicy::new(self.name, u64::from(self.rate.tokens()), self.rate.period());
        LeakyBucketLayer {
            inner: RateLimitLayer::builder(limiter, policy, crate::METRIC_PREFIX)
                .wait(max_wait)
                .build(),
        }
    }
}

impl Builder<Meter> {
    /// One meter for every request.
    pub fn build(self) -> LeakyBucketLayer<LeakyMeter> {
        let meter = LeakyMeter::new(self.rate);
        self.finish(meter, Duration::ZERO)
    }

    /// One meter per key, `extract(&request)` giving the key, remembering at
    /// most `capacity` keys. Requests without a key are not limited.
    pub fn build_keyed<Req, K, X>(
        self,
        capacity: usize,
        extract: X,
    ) -> LeakyBucketLayer<Keyed<KeyedLeakyMeter<K>, X>>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let meters = KeyedLeakyMeter::new(self.rate, capacity)
            .with_metric_names(crate::METRIC_PREFIX, &self.name);
        self.finish(Keyed::new(meters, extract), Duration::ZERO)
    }
}

impl Builder<Shaper> {
    /// One queue for every request.
    pub fn build(self) -> LeakyBucketLayer<LeakyShaper> {
        let shaper = LeakyShaper::new(self.rate, self.mode.queue);
        let horizon = shaper.horizon();
        self.finish(shaper, horizon)
    }

    /// One queue per key, `extract(&request)` giving the key, remembering at
    /// most `capacity` keys. Requests without a key are not limited.
    pub fn build_keyed<Req, K, X>(
        self,
        capacity: usize,
        extract: X,
    ) -> LeakyBucketLayer<Keyed<KeyedLeakyShaper<K>, X>>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let shapers = KeyedLeakyShaper::new(self.rate, self.mode.queue, capacity)
            .with_metric_names(crate::METRIC_PREFIX, &self.name);
        let horizon = shapers.horizon();
        self.finish(Keyed::new(shapers, extract), horizon)
    }
}
