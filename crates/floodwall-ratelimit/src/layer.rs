use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::RateLimitPolicy;
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use metrics::Counter;
use tower_layer::Layer;

use crate::{One, RateLimitService};

/// A Tower layer that asks a limiter `L` about every request: the shared
/// adapter behind floodwall's token-bucket, leaky-bucket and sliding-window
/// layers (each crate wraps it in its own named layer type).
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
pub struct RateLimitLayer<L, W = One> {
    shared: Arc<Shared<L, W>>,
}

impl<L, W> RateLimitLayer<L, W> {
    /// A cheap handle on the live limiter state.
    pub fn handle(&self) -> RateLimitHandle<L, W> {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<L> RateLimitLayer<L, One> {
    /// A builder for a layer around `limiter`, reporting `policy` (its name
    /// is the metric label) and metrics under `floodwall_<layer>_…`.
    pub fn builder(limiter: L, policy: RateLimitPolicy, layer: &'static str) -> Builder<L, One> {
        Builder {
            limiter,
            policy,
            layer,
            max_wait: Duration::ZERO,
            weigh: One,
        }
    }
}

impl<L, W> Clone for RateLimitLayer<L, W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<L: fmt::Debug, W> fmt::Debug for RateLimitLayer<L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.policy.name())
            .field("max_wait", &self.shared.max_wait)
            .field("limiter", &self.shared.limiter)
            .finish()
    }
}

impl<S, L, W> Layer<S> for RateLimitLayer<L, W> {
    type Service = RateLimitService<S, L, W>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::from_shared(inner, self.shared.clone())
    }
}

/// Builds a [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct Builder<L, W = One> {
    limiter: L,
    policy: RateLimitPolicy,
    layer: &'static str,
    max_wait: Duration,
    weigh: W,
}

impl<L, W> Builder<L, W> {
    /// Wait mode: a request the limiter can schedule within `max_wait` waits
    /// for its turn; others are refused at once. Zero (the default) never
    /// waits. What a waiter that gives up returns is the limiter's rule.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Charge each request `weigh(&request)` units instead of one.
    pub fn weigh<W2>(self, weigh: W2) -> Builder<L, W2> {
        Builder {
            limiter: self.limiter,
            policy: self.policy,
            layer: self.layer,
            max_wait: self.max_wait,
            weigh,
        }
    }

    /// The layer. Metric handles are registered now: install the `metrics`
    /// recorder first.
    pub fn build(self) -> RateLimitLayer<L, W> {
        RateLimitLayer {
            shared: Arc::new(Shared {
                metrics: Metrics::new(self.layer, self.policy.name()),
                limiter: self.limiter,
                policy: Arc::new(self.policy),
                max_wait: self.max_wait,
                weigh: self.weigh,
            }),
        }
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
