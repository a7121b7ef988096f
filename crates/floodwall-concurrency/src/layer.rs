//! The Tower layer around a [`ConcurrencyLimiter`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use floodwall_admit::{BackpressureLayer, Guarded, UntilBodyEndLayer};
use floodwall_core::ResultClassifier;
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use tower_layer::Layer;

use crate::policy::Metrics;
use crate::{
    AdaptiveLimitPolicy, Algorithm, ConcurrencyLimiter, ConfigError, Estimates, IntoAlgorithm,
    OnCancel, Partitions, SingleClass,
};

/// The default name of an adaptive limit layer (metric label).
pub const DEFAULT_NAME: &str = "concurrency";

/// A Tower layer that limits how many requests are in flight to a limit an
/// [`Algorithm`] adapts from their latency.
///
/// The decision is made in `call` (readiness is the inner service's): a
/// request over the limit fails at once with [`LimitExceeded`](crate::LimitExceeded) in a
/// [`Rejected`](floodwall_core::Rejected) (kind `Overloaded`) and never reaches the inner service.
/// An admitted request is read when it finishes:
///
/// - the classifier says [`Outcome::Success`](floodwall_core::Outcome::Success): its RTT is a sample;
/// - `Outcome::Overloaded`, or a timeout of a call that had its full budget
///   (a deadline layer's `DeadlineExceeded`, HTTP 504, gRPC
///   `DEADLINE_EXCEEDED`): a *drop*, the loss signal;
/// - `Outcome::Failure`: ignored — a fast failure says nothing about load,
///   and its RTT would fool the no-load estimate;
/// - what floodwall's outcome rule ([`floodwall_core::outcome`]) calls
///   silent: a refusal by a floodwall layer below (rate limited, shed,
///   circuit open, …: it never reached the service), and a timeout of a
///   deadline the caller imposed that was shorter than the call's budget:
///   ignored;
/// - a response future dropped before the end (cancellation): ignored, or
///   a drop with [`OnCancel::Drop`](crate::OnCancel::Drop).
///
/// In every case the request's slot comes back.
///
/// # Clone
/// The limiter lives in an `Arc`: every service built from one layer value,
/// and every clone, shares one limit.
///
/// ```
/// use floodwall_concurrency::{AdaptiveLimitLayer, VegasConfig};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = AdaptiveLimitLayer::builder(VegasConfig::default())
///     .name("rooms")
///     .build()?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x * 2) }));
/// assert_eq!(svc.clone().oneshot(21).await?, 42);
/// assert_eq!(handle.limit(), 20);
/// assert_eq!(handle.in_flight(), 0);
/// # Ok(())
/// # }
/// ```
pub struct AdaptiveLimitLayer<A, C = ResultClassifier, P = SingleClass> {
    shared: Arc<AdaptiveLimitPolicy<A, C, P>>,
}

/// The service an [`AdaptiveLimitLayer`] builds: the shared admission
/// adapter around the limiter.
pub type AdaptiveLimit<S, A, C = ResultClassifier, P = SingleClass> =
    Guarded<S, AdaptiveLimitPolicy<A, C, P>>;

impl<A: Algorithm> AdaptiveLimitLayer<A> {
    /// A layer driven by the algorithm `config` describes (a
    /// [`VegasConfig`](crate::VegasConfig), a [`Gradient2Config`](crate::Gradient2Config), …,
    /// or an algorithm already built), with the defaults.
    ///
    /// # Errors
    /// The algorithm's [`ConfigError`].
    pub fn new(config: impl IntoAlgorithm<Algorithm = A>) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder for a layer driven by the algorithm `config` describes;
    /// an invalid config is reported by [`Builder::build`].
    pub fn builder(config: impl IntoAlgorithm<Algorithm = A>) -> Builder<A> {
        Builder {
            algorithm: config.into_algorithm(),
            classify: ResultClassifier,
            partition: SingleClass,
            partitions: Partitions::single(),
            name: Arc::from(DEFAULT_NAME),
            on_cancel: OnCancel::Ignore,
            listeners: Vec::new(),
        }
    }
}

impl<A: Algorithm, C: Send + Sync + 'static, P: Send + Sync + 'static> AdaptiveLimitLayer<A, C, P> {
    /// This limit, holding each request's slot until its response **body**
    /// ends (HTTP and gRPC streams count for their whole life, as Envoy
    /// counts streams). Shares the limiter with `self`.
    pub fn until_body_end(&self) -> UntilBodyEndLayer<AdaptiveLimitPolicy<A, C, P>> {
        UntilBodyEndLayer::new(self.shared.clone())
    }

    /// This limit as backpressure: `poll_ready` is pending until a slot is
    /// free (in class 0), and `call` uses it. For use behind
    /// `tower::balance` or `Buffer`. Shares the limiter with `self`.
    pub fn backpressure(&self) -> BackpressureLayer<AdaptiveLimitPolicy<A, C, P>> {
        BackpressureLayer::new(self.shared.clone())
    }

    /// A handle to read the live limit, in-flight count and RTT estimates.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, P> Clone for AdaptiveLimitLayer<A, C, P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, P> fmt::Debug for AdaptiveLimitLayer<A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("name", &self.shared.name)
            .field("limiter", &self.shared.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, A, C, P> Layer<S> for AdaptiveLimitLayer<A, C, P> {
    type Service = AdaptiveLimit<S, A, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded::new(inner, self.shared.clone())
    }
}

/// Builds an [`AdaptiveLimitLayer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<A, C = ResultClassifier, P = SingleClass> {
    algorithm: Result<A, ConfigError>,
    classify: C,
    partition: P,
    partitions: Partitions,
    name: Arc<str>,
    on_cancel: OnCancel,
    listeners: Vec<Box<dyn Fn(u32) + Send + Sync>>,
}

impl<A, C, P> fmt::Debug for Builder<A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl<A: Algorithm, C, P> Builder<A, C, P> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How finished calls are read (see [`AdaptiveLimitLayer`]). Default:
    /// [`ResultClassifier`] (`Ok` succeeds, `Err` is ignored unless it is
    /// a floodwall overload or deadline rejection); use
    /// `floodwall_core::HttpClassifier` to read 429/503 as drops.
    pub fn classify<C2>(self, classify: C2) -> Builder<A, C2, P> {
        Builder {
            algorithm: self.algorithm,
            classify,
            partition: self.partition,
            partitions: self.partitions,
            name: self.name,
            on_cancel: self.on_cancel,
            listeners: self.listeners,
        }
    }

    /// Shares the limit between priority classes (see [`Partitions`]);
    /// `partition` picks each request's class (e.g. [`ByCriticality`](crate::ByCriticality)).
    pub fn partitions<P2>(self, partitions: Partitions, partition: P2) -> Builder<A, C, P2> {
        Builder {
            algorithm: self.algorithm,
            classify: self.classify,
            partition,
            partitions,
            name: self.name,
            on_cancel: self.on_cancel,
            listeners: self.listeners,
        }
    }

    /// What a cancelled request tells the algorithm (see [`OnCancel`](crate::OnCancel)).
    /// Default [`OnCancel::Ignore`].
    pub fn on_cancel(mut self, on_cancel: OnCancel) -> Self {
        self.on_cancel = on_cancel;
        self
    }

    /// Calls `listener` with the first limit and every new one (see
    /// [`ConcurrencyLimiter::on_limit_change`]): e.g. a CoDel queue's
    /// `CodelHandle::set_workers`.
    pub fn on_limit_change(mut self, listener: impl Fn(u32) + Send + Sync + 'static) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// The algorithm's [`ConfigError`], when its config was invalid.
    pub fn build(self) -> Result<AdaptiveLimitLayer<A, C, P>, ConfigError> {
        let algorithm = self.algorithm?;
        let name = self.name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(metric_name(crate::METRIC_PREFIX, "calls_total"), LABEL_NAME => name.clone(), "outcome" => outcome);
        let rtt = |estimate: &'static str| metrics::gauge!(metric_name(crate::METRIC_PREFIX, "rtt_seconds"), LABEL_NAME => name.clone(), "estimate" => estimate);
        let metrics = Metrics {
            limit: metrics::gauge!(metric_name(crate::METRIC_PREFIX, "limit"), LABEL_NAME => name.clone()),
            in_flight: metrics::gauge!(metric_name(crate::METRIC_PREFIX, "in_flight"), LABEL_NAME => name.clone()),
            baseline: rtt("baseline"),
            latest: rtt("latest"),
            success: calls("success"),
            dropped: calls("dropped"),
            ignored: calls("ignored"),
            cancelled: calls("cancelled"),
            requests: RequestCounters::new(crate::METRIC_PREFIX, &name),
        };
        let mut limiter = ConcurrencyLimiter::partitioned(algorithm, self.partitions);
        let gauge = metrics.limit.clone();
        limiter = limiter.on_limit_change(move |l| gauge.set(f64::from(l)));
        for listener in self.listeners {
            limiter = limiter.on_limit_change(listener);
        }
        metrics.in_flight.set(0.0);
        Ok(AdaptiveLimitLayer {
            shared: Arc::new(AdaptiveLimitPolicy {
                limiter,
                classify: self.classify,
                partition: self.partition,
                on_cancel: self.on_cancel,
                name: self.name,
                metrics,
                released: OnceLock::new(),
            }),
        })
    }
}

/// Reads an [`AdaptiveLimitLayer`]'s live state.
#[derive(Clone)]
pub struct AdaptiveLimitHandle {
    shared: Arc<dyn Target>,
}

/// What a handle needs of the shared state, whatever its algorithm.
trait Target: Send + Sync {
    fn limit(&self) -> u32;
    fn in_flight(&self) -> u32;
    fn in_flight_in(&self, class: usize) -> u32;
    fn partitions(&self) -> Partitions;
    fn estimates(&self) -> Estimates;
    fn name(&self) -> &str;
    fn with_algorithm_any(&self, f: &mut dyn FnMut(&mut dyn std::any::Any));
}

impl<A: Algorithm, C: Send + Sync, P: Send + Sync> Target for AdaptiveLimitPolicy<A, C, P> {
    fn limit(&self) -> u32 {
        self.limiter.limit()
    }
    fn in_flight(&self) -> u32 {
        let n = self.limiter.in_flight();
        self.metrics.in_flight.set(f64::from(n));
        n
    }
    fn in_flight_in(&self, class: usize) -> u32 {
        self.limiter.in_flight_in(class)
    }
    fn partitions(&self) -> Partitions {
        *self.limiter.partitions()
    }
    fn estimates(&self) -> Estimates {
        let e = self.limiter.estimates();
        if let Some(b) = e.baseline {
            self.metrics.baseline.set(b.as_secs_f64());
        }
        if let Some(l) = e.latest {
            self.metrics.latest.set(l.as_secs_f64());
        }
        e
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn with_algorithm_any(&self, f: &mut dyn FnMut(&mut dyn std::any::Any)) {
        self.limiter.with_algorithm(|a| f(a));
    }
}

impl AdaptiveLimitHandle {
    /// Changes the algorithm's parameters while the layer serves (min and
    /// max limits, smoothing, thresholds…): `R` is the algorithm the layer
    /// runs (`Aimd`, `Vegas`, `Gradient2`, `EnvoyGradient`), `config` its
    /// configuration, validated as its constructor validates. The limit
    /// carries over, clamped to the new bounds, and is adopted at once
    /// (listeners such as a CoDel queue's worker count hear of it); the RTT
    /// estimates are kept.
    ///
    /// ```
    /// use floodwall_concurrency::{AdaptiveLimitLayer, Aimd, AimdConfig};
    ///
    /// # fn main() -> Result<(), floodwall_core::ConfigError> {
    /// let layer: AdaptiveLimitLayer<Aimd> = AdaptiveLimitLayer::new(AimdConfig::default())?;
    /// let handle = layer.handle();
    /// // Still validated as for a new limiter: initial_limit within the bounds.
    /// handle.reconfigure::<Aimd>(AimdConfig { initial_limit: 4, max_limit: 8, ..AimdConfig::default() })?;
    /// assert!(handle.limit() <= 8);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ConfigError`] as the algorithm's constructor, or (field
    /// `algorithm`) when the layer runs another algorithm; a refused
    /// configuration changes nothing.
    pub fn reconfigure<R: crate::Reconfigure>(&self, config: R::Config) -> Result<(), ConfigError> {
        let mut config = Some(config);
        let mut result = Err(ConfigError::new(
            "algorithm",
            "the layer runs another algorithm",
        ));
        self.shared.with_algorithm_any(&mut |any| {
            if let (Some(algorithm), Some(config)) = (any.downcast_mut::<R>(), config.take()) {
                result = algorithm.reconfigure(config);
            }
        });
        if result.is_ok() {
            metrics::counter!(
                floodwall_core::metrics::metric_name(crate::METRIC_PREFIX, "reconfigurations_total"),
                floodwall_core::metrics::LABEL_NAME => self.shared.name().to_owned()
            )
            .increment(1);
        }
        result
    }

    /// The limit now.
    pub fn limit(&self) -> u32 {
        self.shared.limit()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight()
    }

    /// Requests of priority class `class` in flight now.
    pub fn in_flight_in(&self, class: usize) -> u32 {
        self.shared.in_flight_in(class)
    }

    /// The classes the limit is shared between.
    pub fn partitions(&self) -> Partitions {
        self.shared.partitions()
    }

    /// The RTTs the algorithm steers by (briefly takes its lock; also
    /// refreshes the `floodwall_concurrency_rtt_seconds` gauges).
    pub fn estimates(&self) -> Estimates {
        self.shared.estimates()
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }
}

impl fmt::Debug for AdaptiveLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitHandle")
            .field("name", &self.name())
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
