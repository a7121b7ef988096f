use std::fmt;
use std::sync::{Arc, Weak};

use floodwall_admit::{BackpressureLayer, Guarded, UntilBodyEndLayer};
use floodwall_core::ResultClassifier;
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::random::Random;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::{
    BreakerConfig, BreakerPolicy, CircuitBreaker, ConfigError, State, StateChange, WindowCounts,
};

/// The default name of a breaker layer (metric label).
pub const DEFAULT_NAME: &str = "breaker";

/// A Tower layer that stops calling a failing service for a while: the
/// [`CircuitBreaker`] state machine around every call.
///
/// A call the breaker refuses fails at once with [`CircuitOpen`](crate::CircuitOpen) in a
/// [`Rejected`](floodwall_core::Rejected) (HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc,
/// with the time until the next probe as retry-after) and is never counted
/// as a failure. A call let through is classified when it finishes (by
/// default: `Ok` succeeds, `Err` fails; `floodwall_core::HttpClassifier`
/// counts 5xx, `GrpcClassifier` server-fault codes); a response future
/// dropped before it finishes gives its permit back (a half-open probe
/// frees its slot) and decides nothing, and so does a call that a floodwall
/// layer below refused before it reached the dependency (any [`Rejected`](floodwall_core::Rejected)
/// error except `DeadlineExceeded`): a throttle or a shedding queue under
/// the breaker never opens it.
///
/// # Clone
/// The breaker lives in an `Arc`: every service built from one layer value,
/// and every clone, shares it. One layer value per dependency.
///
/// ```
/// use floodwall_breaker::{BreakerConfig, BreakerLayer, State, WindowKind};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let config = BreakerConfig { window: WindowKind::Count(10), minimum_calls: 10, ..Default::default() };
/// let layer = BreakerLayer::builder(config).name("rooms").build()?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|ok: bool| async move {
///     if ok { Ok(()) } else { Err(BoxError::from("backend down")) }
/// }));
/// for _ in 0..10 {
///     let _ = svc.clone().oneshot(false).await;
/// }
/// assert_eq!(handle.state(), State::Open);
/// let err = svc.clone().oneshot(true).await.unwrap_err();
/// assert!(err.to_string().contains("circuit open"));
/// # Ok(())
/// # }
/// ```
pub struct BreakerLayer<C = ResultClassifier> {
    shared: Arc<BreakerPolicy<C>>,
}

/// The service a [`BreakerLayer`] builds: the shared admission adapter
/// around the breaker.
pub type Breaker<S, C = ResultClassifier> = Guarded<S, BreakerPolicy<C>>;

/// The former name of [`Breaker`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `Breaker` (tower's naming: the service is the middleware's name)"
)]
pub type BreakerService<S, C = ResultClassifier> = Breaker<S, C>;

impl BreakerLayer {
    /// A builder for a breaker with `config`.
    pub fn builder(config: BreakerConfig) -> Builder {
        Builder {
            config,
            classify: ResultClassifier,
            name: Arc::from(DEFAULT_NAME),
            rng: None,
            listeners: Vec::new(),
        }
    }

    /// A breaker layer with `config`, named [`DEFAULT_NAME`].
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }
}

impl<C: Send + Sync + 'static> BreakerLayer<C> {
    /// A handle to read the state and control the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Clone for BreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for BreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("name", &self.shared.name)
            .field("breaker", &self.shared.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded::new(inner, self.shared.clone())
    }
}

impl<C> BreakerLayer<C> {
    /// This breaker, holding each call's permit until its response **body**
    /// ends (HTTP and gRPC streams count for their whole life): a stream
    /// that fails part-way is a failure, one dropped before its end a
    /// cancellation. Shares the breaker with `self`.
    pub fn until_body_end(&self) -> UntilBodyEndLayer<BreakerPolicy<C>> {
        UntilBodyEndLayer::new(self.shared.clone())
    }

    /// This breaker as backpressure: `poll_ready` is pending while the
    /// breaker is open (until its open time is over) and fails while it is
    /// forced open, and `call` uses the permit taken there. For use behind
    /// `tower::balance` or `Buffer`. Shares the breaker with `self`.
    pub fn backpressure(&self) -> BackpressureLayer<BreakerPolicy<C>>
    where
        C: Send + Sync + 'static,
    {
        BackpressureLayer::new(self.shared.clone())
    }
}

type Listener = Box<dyn Fn(&StateChange) + Send + Sync>;

/// Builds a [`BreakerLayer`].
pub struct Builder<C = ResultClassifier> {
    config: BreakerConfig,
    classify: C,
    name: Arc<str>,
    rng: Option<Box<dyn Random>>,
    listeners: Vec<Listener>,
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C> Builder<C> {
    /// The metric label. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How finished calls are read: [`Outcome::Success`](floodwall_core::Outcome::Success) succeeds;
    /// `Failure`, `Overloaded` and `TimedOut` fail. Whatever the
    /// classifier, calls are first read by floodwall's outcome rule
    /// ([`floodwall_core::outcome`]): a refusal by a floodwall layer below,
    /// a dropped response future and a timeout of a deadline the caller
    /// imposed (shorter than the call's budget) count neither way.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            classify,
            name: self.name,
            rng: self.rng,
            listeners: self.listeners,
        }
    }

    /// The random source for jitter and ramps.
    pub fn rng(mut self, rng: impl Random) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// Calls `listener` after every state change.
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn build(self) -> Result<BreakerLayer<C>, ConfigError>
    where
        C: Send + Sync + 'static,
    {
        let runtime = if self.config.automatic_half_open {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::new(
                    "automatic_half_open",
                    "needs a Tokio runtime when the layer is built",
                )
            })?)
        } else {
            None
        };
        let name = self.name.to_string();
        let transitions = name.clone();
        let state_gauge =
            metrics::gauge!(metric_name(crate::METRIC_PREFIX, "state"), LABEL_NAME => name.clone());
        state_gauge.set(0.0);
        let newest = std::sync::atomic::AtomicU64::new(0);
        let mut breaker = CircuitBreaker::new(self.config)?.on_state_change(move |c| {
            // Listeners may see two quick changes out of order: the gauge
            // keeps the newest generation's state.
            let prev = newest.fetch_max(c.generation, std::sync::atomic::Ordering::AcqRel);
            if c.generation > prev {
                state_gauge.set(c.to as u8 as f64);
            }
            metrics::counter!(
                metric_name(crate::METRIC_PREFIX, "transitions_total"),
                LABEL_NAME => transitions.clone(),
                "from" => c.from.as_str(),
                "to" => c.to.as_str()
            )
            .increment(1);
        });
        if let Some(rng) = self.rng {
            breaker = breaker.with_rng(rng);
        }
        for listener in self.listeners {
            breaker = breaker.on_state_change(listener);
        }
        let calls = |outcome: &'static str| metrics::counter!(metric_name(crate::METRIC_PREFIX, "calls_total"), LABEL_NAME => name.clone(), "outcome" => outcome);
        let layer = BreakerLayer {
            shared: Arc::new(BreakerPolicy {
                success: calls("success"),
                failure: calls("failure"),
                cancelled: calls("cancelled"),
                requests: RequestCounters::new(crate::METRIC_PREFIX, &name),
                breaker,
                classify: self.classify,
                name: self.name,
            }),
        };
        if let Some(runtime) = runtime {
            runtime.spawn(automatic_half_open(Arc::downgrade(&layer.shared)));
        }
        Ok(layer)
    }
}

/// Moves the breaker to half-open when each open duration ends; ends when
/// the breaker is dropped.
async fn automatic_half_open<C: Send + Sync + 'static>(policy: Weak<BreakerPolicy<C>>) {
    let Some(mut changes) = policy.upgrade().map(|p| p.breaker.subscribe()) else {
        return;
    };
    loop {
        let Some(wait) = policy
            .upgrade()
            .map(|p| p.breaker.open_remaining(Instant::now()))
        else {
            return;
        };
        match wait {
            Some(remaining) => {
                tokio::time::sleep(remaining).await;
                match policy.upgrade() {
                    Some(p) => {
                        p.breaker.half_open_if_due(Instant::now());
                    }
                    None => return,
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads and controls a [`BreakerLayer`]'s breaker.
pub struct BreakerHandle {
    shared: Arc<dyn Target>,
}

/// What a handle needs of the layer's shared state, whatever its classifier.
trait Target: Send + Sync {
    fn breaker(&self) -> &CircuitBreaker;
    fn name(&self) -> &str;
}

impl<C: Send + Sync> Target for BreakerPolicy<C> {
    fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl BreakerHandle {
    /// The layer's name (its metric label).
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.breaker().state()
    }

    /// Changes the breaker's configuration while it serves (see
    /// [`CircuitBreaker::reconfigure`]: state and generation kept, a
    /// smaller count window keeps the newest calls), and counts it in
    /// `floodwall_breaker_reconfigurations_total{name}`.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`](crate::BreakerConfig::validate): a
    /// refused configuration changes nothing.
    pub fn reconfigure(&self, config: crate::BreakerConfig) -> Result<(), ConfigError> {
        self.shared.breaker().reconfigure(config, Instant::now())?;
        metrics::counter!(
            floodwall_core::metrics::metric_name(crate::METRIC_PREFIX, "reconfigurations_total"),
            floodwall_core::metrics::LABEL_NAME => self.name().to_owned()
        )
        .increment(1);
        tracing::info!(name = self.name(), "breaker reconfigured");
        Ok(())
    }

    /// The closed state's window now.
    pub fn counts(&self) -> WindowCounts {
        self.shared.breaker().counts(Instant::now())
    }

    /// A receiver that sees every state the breaker enters.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.breaker().subscribe()
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared.breaker().force_open();
    }

    /// Lets every call through until [`reset`](Self::reset); outcomes are
    /// still counted (for metrics) but never trip the breaker.
    pub fn disable(&self) {
        self.shared.breaker().disable();
    }

    /// Closes with an empty window.
    pub fn reset(&self) {
        self.shared.breaker().reset();
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        self.shared.breaker()
    }
}

impl Clone for BreakerHandle {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.shared.name())
            .field("state", &self.state())
            .finish()
    }
}
