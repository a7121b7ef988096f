use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use floodwall_core::RateLimitPolicy;
use floodwall_ratelimit::{Keyed, One, RateLimitHandle, RateLimitLayer, RateLimitService};
use tower_layer::Layer;

use crate::{KeyedSlidingLog, KeyedSlidingWindowCounter, SlidingLog, SlidingWindowCounter, Window};

/// The default name of a sliding-window layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "sliding_window";

/// The service a [`SlidingWindowLayer`] builds.
pub type SlidingWindowService<S, L = SlidingWindowCounter> = RateLimitService<S, L, One>;

/// A live view of a [`SlidingWindowLayer`]: `handle.limiter()` is the
/// counter or log (`estimate(now)`, `remaining(now)`, `count(now)`).
pub type SlidingWindowHandle<L = SlidingWindowCounter> = RateLimitHandle<L, One>;

/// A Tower layer that limits requests to `limit` per window: with the
/// two-window counter, the exact log, or a fixed window. Refusals happen in
/// `call` with the exact retry-after; nothing waits.
///
/// # Clone
/// The layer owns the limiter in an `Arc`: every service it builds, and
/// every clone of those, shares it. One layer value is one limit.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::{BoxError, Rejected};
/// use floodwall_sliding_window::{SlidingWindowLayer, Window};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = SlidingWindowLayer::log(Window::new(3, Duration::from_secs(60))?).build();
/// let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
/// for n in 0..3 {
///     svc.clone().oneshot(n).await?;
/// }
/// let err = svc.clone().oneshot(3).await.unwrap_err();
/// assert_eq!(Rejected::find(&*err).unwrap().retry_after(), Some(Duration::from_secs(60)));
/// # Ok(())
/// # }
/// ```
pub struct SlidingWindowLayer<L = SlidingWindowCounter> {
    inner: RateLimitLayer<L, One>,
}

impl SlidingWindowLayer<SlidingWindowCounter> {
    /// The two-window sliding counter: one `AtomicU64` per limit or key.
    pub fn counter(window: Window) -> Builder<Counter> {
        Builder::new(window, Counter { fixed: false })
    }

    /// A fixed window: the count resets at every window boundary.
    pub fn fixed(window: Window) -> Builder<Counter> {
        Builder::new(window, Counter { fixed: true })
    }

    /// The exact sliding log: `limit` timestamps per limit or key.
    pub fn log(window: Window) -> Builder<Log> {
        Builder::new(window, Log)
    }
}

impl<L> SlidingWindowLayer<L> {
    /// A cheap handle on the live limiter state.
    pub fn handle(&self) -> SlidingWindowHandle<L> {
        self.inner.handle()
    }
}

impl<L> Clone for SlidingWindowLayer<L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<L: fmt::Debug> fmt::Debug for SlidingWindowLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SlidingWindowLayer")
            .field(&self.inner)
            .finish()
    }
}

impl<S, L> Layer<S> for SlidingWindowLayer<L> {
    type Service = SlidingWindowService<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// Counter mode (sliding or fixed), for [`Builder`].
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    fixed: bool,
}

/// Log mode, for [`Builder`].
#[derive(Debug, Clone, Copy)]
pub struct Log;

/// Builds a [`SlidingWindowLayer`]; from [`SlidingWindowLayer::counter`],
/// [`fixed`](SlidingWindowLayer::fixed) or [`log`](SlidingWindowLayer::log).
#[derive(Debug, Clone)]
pub struct Builder<M> {
    window: Window,
    mode: M,
    name: Arc<str>,
}

impl<M> Builder<M> {
    fn new(window: Window, mode: M) -> Self {
        Self {
            window,
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

    fn finish<L>(self, limiter: L) -> SlidingWindowLayer<L> {
        let policy = RateLimitPolicy::new(
            self.name,
            u64::from(self.window.limit()),
            self.window.length(),
        );
        SlidingWindowLayer {
            inner: RateLimitLayer::builder(limiter, policy, crate::METRIC_PREFIX).build(),
        }
    }
}

impl Builder<Counter> {
    /// One counter for every request.
    pub fn build(self) -> SlidingWindowLayer<SlidingWindowCounter> {
        let counter = if self.mode.fixed {
            SlidingWindowCounter::fixed(self.window)
        } else {
            SlidingWindowCounter::new(self.window)
        };
        self.finish(counter)
    }

    /// One counter per key, `extract(&request)` giving the key, remembering
    /// at most `capacity` keys. Requests without a key are not limited.
    pub fn build_keyed<Req, K, X>(
        self,
        capacity: usize,
        extract: X,
    ) -> SlidingWindowLayer<Keyed<KeyedSlidingWindowCounter<K>, X>>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let counters = KeyedSlidingWindowCounter::with_epoch(
            self.window,
            capacity,
            tokio::time::Instant::now(),
            self.mode.fixed,
        )
        .with_metric_names(crate::METRIC_PREFIX, &self.name);
        self.finish(Keyed::new(counters, extract))
    }
}

impl Builder<Log> {
    /// One log for every request.
    pub fn build(self) -> SlidingWindowLayer<SlidingLog> {
        let log = SlidingLog::new(self.window);
        self.finish(log)
    }

    /// One log per key, `extract(&request)` giving the key, remembering at
    /// most `capacity` keys (each `limit × 8` bytes of timestamps). Requests
    /// without a key are not limited.
    pub fn build_keyed<Req, K, X>(
        self,
        capacity: usize,
        extract: X,
    ) -> SlidingWindowLayer<Keyed<KeyedSlidingLog<K>, X>>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let logs = KeyedSlidingLog::new(self.window, capacity)
            .with_metric_names(crate::METRIC_PREFIX, &self.name);
        self.finish(Keyed::new(logs, extract))
    }
}
