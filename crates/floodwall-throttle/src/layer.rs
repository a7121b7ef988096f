use std::fmt;
use std::sync::Arc;

use floodwall_admit::{Guarded, UntilBodyEndLayer};
use floodwall_core::{Criticality, ResultClassifier};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::policy::Metrics;
use crate::{
    AdaptiveThrottle, ConfigError, NoCriticality, Random, SplitMix, ThrottleConfig, ThrottlePolicy,
    ThrottleStats,
};

/// The default name of a throttle layer (metric label).
pub const DEFAULT_NAME: &str = "throttle";

/// The service a [`ThrottleLayer`] builds: the shared admission adapter
/// around the throttle.
pub type Throttle<S, C = ResultClassifier, X = NoCriticality> = Guarded<S, ThrottlePolicy<C, X>>;

/// The former name of [`Throttle`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `Throttle` (tower's naming: the service is the middleware's name)"
)]
pub type ThrottleService<S, C = ResultClassifier, X = NoCriticality> = Throttle<S, C, X>;

/// A Tower layer for client-side adaptive throttling (Google SRE, "Handling
/// Overload"): when the backend refuses, the client drops requests locally
/// with probability `max(0, (requests − K·accepts)/(requests + 1))` instead
/// of sending them. See [`AdaptiveThrottle`] for the statistics.
///
/// Put it on the client side of a call (around a hyper client, a tonic
/// channel). A response the classifier calls
/// [`Overloaded`](floodwall_core::Outcome::Overloaded) (HTTP 429/503, gRPC
/// `RESOURCE_EXHAUSTED`/`UNAVAILABLE` with the core classifiers) is not an
/// accept, nor is an error (no response came back: a transport failure, a
/// timeout, another layer's rejection); every other response is. Requests
/// dropped here fail with [`Throttled`](crate::Throttled) in a [`Rejected`](floodwall_core::Rejected)
/// (HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc).
///
/// # Clone
/// The statistics live in an `Arc`: every service built from one layer, and
/// every clone, shares them. Use one layer per backend.
///
/// ```
/// use floodwall_core::{BoxError, HttpClassifier};
/// use floodwall_throttle::{ThrottleConfig, ThrottleLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let throttle = ThrottleLayer::builder(ThrottleConfig::default())
///     .name("rooms")
///     .classify(HttpClassifier)
///     .build()?;
/// let handle = throttle.handle();
/// let client = throttle.layer(service_fn(|_: http::Request<()>| async {
///     Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap())
/// }));
/// for _ in 0..50 {
///     let _ = client.clone().oneshot(http::Request::new(())).await;
/// }
/// // Every response said "overloaded": the client now drops most requests.
/// assert!(handle.stats(None).probability > 0.9);
/// # Ok(())
/// # }
/// ```
pub struct ThrottleLayer<C = ResultClassifier, X = NoCriticality> {
    shared: Arc<ThrottlePolicy<C, X>>,
}

impl ThrottleLayer {
    /// A layer with `config`, named [`DEFAULT_NAME`], classifying every `Ok`
    /// response as accepted.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn new(config: ThrottleConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder for the name, classifier, criticality source and random
    /// source.
    pub fn builder(config: ThrottleConfig) -> Builder {
        Builder {
            config,
            name: Arc::from(DEFAULT_NAME),
            rng: None,
            classify: ResultClassifier,
            criticality: NoCriticality,
        }
    }
}

impl<C, X> ThrottleLayer<C, X> {
    /// A cheap handle on the live statistics.
    pub fn handle(&self) -> ThrottleHandle<C, X> {
        ThrottleHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> Clone for ThrottleLayer<C, X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> fmt::Debug for ThrottleLayer<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("name", &self.shared.name)
            .field("throttle", &self.shared.throttle)
            .finish_non_exhaustive()
    }
}

impl<S, C, X> Layer<S> for ThrottleLayer<C, X> {
    type Service = Throttle<S, C, X>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded::new(inner, self.shared.clone())
    }
}

impl<C, X> ThrottleLayer<C, X> {
    /// This throttle, reading each attempt when its response **body** ends
    /// (a stream that fails part-way is not accepted; one dropped before its
    /// end is taken back). Shares the statistics with `self`.
    pub fn until_body_end(&self) -> UntilBodyEndLayer<ThrottlePolicy<C, X>> {
        UntilBodyEndLayer::new(self.shared.clone())
    }
}

/// Builds a [`ThrottleLayer`].
pub struct Builder<C = ResultClassifier, X = NoCriticality> {
    config: ThrottleConfig,
    name: Arc<str>,
    rng: Option<Box<dyn Random>>,
    classify: C,
    criticality: X,
}

impl<C, X> fmt::Debug for Builder<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C, X> Builder<C, X> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The random source (seed it for deterministic tests). Default:
    /// [`SplitMix`] seeded from the clock.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// How responses are read: [`Outcome::Overloaded`](floodwall_core::Outcome::Overloaded) and `TimedOut` are not accepts.
    /// Use `floodwall_core::HttpClassifier` for HTTP clients,
    /// `GrpcClassifier` for gRPC channels.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, X> {
        Builder {
            config: self.config,
            name: self.name,
            rng: self.rng,
            classify,
            criticality: self.criticality,
        }
    }

    /// Where requests' criticality comes from: statistics are kept per
    /// class. Default: none.
    pub fn criticality<X2>(self, criticality: X2) -> Builder<C, X2> {
        Builder {
            config: self.config,
            name: self.name,
            rng: self.rng,
            classify: self.classify,
            criticality,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn build(self) -> Result<ThrottleLayer<C, X>, ConfigError> {
        let rng = self
            .rng
            .unwrap_or_else(|| Box::new(SplitMix::from_entropy()));
        let throttle = AdaptiveThrottle::with_rng(self.config, rng, Instant::now())?;
        Ok(ThrottleLayer {
            shared: Arc::new(ThrottlePolicy {
                metrics: Metrics::new(&self.name),
                throttle,
                classify: self.classify,
                criticality: self.criticality,
                name: self.name,
            }),
        })
    }
}

/// A live view of a [`ThrottleLayer`]'s statistics.
pub struct ThrottleHandle<C = ResultClassifier, X = NoCriticality> {
    shared: Arc<ThrottlePolicy<C, X>>,
}

impl<C, X> ThrottleHandle<C, X> {
    /// Requests, accepts and rejection probability now for `class`.
    pub fn stats(&self, class: Option<Criticality>) -> ThrottleStats {
        self.shared.throttle.stats(Instant::now(), class)
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration in force.
    pub fn config(&self) -> ThrottleConfig {
        self.shared.throttle.config()
    }

    /// Changes the throttle's configuration while it serves (see
    /// [`AdaptiveThrottle::reconfigure`]: K, the guards and the window),
    /// counted in `floodwall_throttle_reconfigurations_total{name}`.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`]: a refused configuration changes
    /// nothing.
    pub fn reconfigure(&self, config: ThrottleConfig) -> Result<(), ConfigError> {
        self.shared.throttle.reconfigure(config)?;
        metrics::counter!(
            floodwall_core::metrics::metric_name(crate::METRIC_PREFIX, "reconfigurations_total"),
            floodwall_core::metrics::LABEL_NAME => self.shared.name.to_string()
        )
        .increment(1);
        Ok(())
    }
}

impl<C, X> Clone for ThrottleHandle<C, X> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C, X> fmt::Debug for ThrottleHandle<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleHandle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}
