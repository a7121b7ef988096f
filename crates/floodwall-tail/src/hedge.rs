//! Hedged requests (gRPC A6 hedging policy): a second attempt when the
//! first is slow, the first good answer wins.
//!
//! This file holds the layer, its builder and its handle, and the state
//! they share; `config.rs` the configuration, `call.rs` the sans-IO core
//! (one call's hedging plan) and `service.rs` the Tower service and its
//! response future.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, RequestCounters, metric_name};
use floodwall_throttle::{RetryBudget, RetryErrors};
use metrics::Counter;
use parking_lot::RwLock;
use tokio::time::Instant;

#[cfg(doc)]
use floodwall_throttle::Verdict;

use crate::latency::{LatencyWindow, Percentile};

mod call;
mod config;
mod service;

pub use call::{HedgeCall, HedgeSkip, HedgeStep};
pub use config::{HedgeConfig, HedgeDelay};
pub use service::{Hedge, HedgeFuture};

/// The most attempts A6 allows per call, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

/// The default name (metric label) of a [`HedgeLayer`].
pub const HEDGE_NAME: &str = "hedge";

/// The prefix of the hedging layer's metric names:
/// `floodwall_hedge_requests_total{name, outcome, reason}`,
/// `floodwall_hedge_attempts_total{name}` (hedges sent) and
/// `floodwall_hedge_skipped_total{name, reason}` (a hedge not sent:
/// `budget`, `deadline`, `pushback`).
pub const HEDGE_METRIC_PREFIX: &str = "hedge";

struct Live {
    max_attempts: u32,
    delay: HedgeDelay,
    max_pushback: Duration,
}

impl Live {
    fn from(config: &HedgeConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            delay: config.delay,
            max_pushback: config.max_pushback,
        }
    }
}

struct Shared<P> {
    name: Arc<str>,
    policy: P,
    budget: Arc<RetryBudget>,
    live: RwLock<Live>,
    latencies: LatencyWindow,
    requests: RequestCounters,
    hedges: Counter,
    skipped: [Counter; 3],
    reconfigurations: Counter,
}

impl<P> Shared<P> {
    /// The delay in force at `now`, and whether latencies are gathered.
    fn delay(&self, now: Instant) -> (Option<Duration>, Option<Percentile>, u32, Duration) {
        let live = self.live.read();
        match live.delay {
            HedgeDelay::Fixed(d) => (Some(d), None, live.max_attempts, live.max_pushback),
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                period,
            } => {
                let params = Percentile {
                    percentile,
                    min_samples,
                    period,
                };
                (
                    self.latencies.delay(now, params),
                    Some(params),
                    live.max_attempts,
                    live.max_pushback,
                )
            }
        }
    }

    fn skipped(&self, why: HedgeSkip) {
        self.skipped[why as usize].increment(1);
    }
}

/// A Tower layer that hedges calls (gRPC A6 hedging policy): when an
/// attempt has not answered after the hedging delay, another is sent, up
/// to `max_attempts`; the first good answer wins and every other attempt is
/// cancelled (its future dropped, so what it held goes back).
///
/// - The delay is fixed, or the percentile of recent latencies (tower
///   `Hedge` style; [`HedgeDelay`]).
/// - A non-fatal failure ([`Verdict::Failure`] under the policy,
///   [`RetryErrors`] by default, [`RetryHttp`](floodwall_throttle::RetryHttp)
///   for HTTP and gRPC answers) sends the next hedge at once; server
///   pushback delays it, or stops hedging when it says never.
/// - Hedges draw on the A6 retry budget, shared with retry layers through
///   [`HedgeBuilder::budget`]: none is sent while tokens are at or under
///   half the maximum, and a hedge sent because the delay passed takes one
///   token (a slow attempt counts as a failure would), so hedges add at most
///   `token_ratio` of the load of successful calls, plus half the budget,
///   however slow the dependency gets.
/// - A hedge is sent only while the deadline in scope
///   ([`floodwall_deadline::current`]: the server deadline layer puts each
///   request's deadline there for the calls its handler makes) leaves more
///   than the hedging delay.
/// - An answer marked "do not retry" stops hedging; an answer the layer
///   gives up on is marked so that layers above do not retry it.
///
/// Requests must be `Clone` (each attempt sends a clone); the inner service
/// must be `Clone`, and is polled ready before each hedge.
///
/// ```
/// use std::time::Duration;
/// use floodwall_tail::{HedgeConfig, HedgeDelay, HedgeLayer};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), floodwall_core::BoxError> {
/// let layer = HedgeLayer::new(HedgeConfig {
///     delay: HedgeDelay::Fixed(Duration::from_millis(20)),
///     ..HedgeConfig::default()
/// })?;
/// let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let a = attempts.clone();
/// let svc = layer.layer(service_fn(move |n: u64| {
///     // The first attempt is slow (1 s), the hedge quick (5 ms).
///     let first = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
///     async move {
///         tokio::time::sleep(Duration::from_millis(if first { 1_000 } else { 5 })).await;
///         Ok::<_, floodwall_core::BoxError>(n)
///     }
/// }));
/// let start = tokio::time::Instant::now();
/// assert_eq!(svc.oneshot(7).await?, 7);
/// assert_eq!(start.elapsed(), Duration::from_millis(25), "the hedge won");
/// # Ok(())
/// # }
/// ```
pub struct HedgeLayer<P = RetryErrors> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for HedgeLayer<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P> fmt::Debug for HedgeLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.shared.name)
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// A layer for `config`, reading answers with [`RetryErrors`], with a
    /// budget of its own.
    ///
    /// # Errors
    /// As [`HedgeConfig::validate`].
    pub fn new(config: HedgeConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name, the policy and a shared budget.
    pub fn builder(config: HedgeConfig) -> HedgeBuilder {
        HedgeBuilder {
            config,
            policy: RetryErrors,
            budget: None,
            name: Arc::from(HEDGE_NAME),
        }
    }
}

impl<P> HedgeLayer<P> {
    /// A cheap handle on the layer's live state and configuration.
    pub fn handle(&self) -> HedgeHandle
    where
        P: Send + Sync + 'static,
    {
        HedgeHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`HedgeLayer`]; from [`HedgeLayer::builder`].
#[must_use = "call build()"]
pub struct HedgeBuilder<P = RetryErrors> {
    config: HedgeConfig,
    policy: P,
    budget: Option<Arc<RetryBudget>>,
    name: Arc<str>,
}

impl<P> fmt::Debug for HedgeBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<P> HedgeBuilder<P> {
    /// The layer's name (its metric label). Default [`HEDGE_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Shares `budget` with retry layers (one per backend): hedges and
    /// retries draw from one budget, as A6 says.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How answers are read. Default [`RetryErrors`];
    /// [`RetryHttp`](floodwall_throttle::RetryHttp) reads HTTP and gRPC
    /// answers (non-fatal: 429, 502, 503, 504, `UNAVAILABLE`,
    /// `RESOURCE_EXHAUSTED`).
    pub fn policy<P2>(self, policy: P2) -> HedgeBuilder<P2> {
        HedgeBuilder {
            config: self.config,
            policy,
            budget: self.budget,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`HedgeConfig::validate`].
    pub fn build(self) -> Result<HedgeLayer<P>, ConfigError> {
        self.config.validate()?;
        let budget = match self.budget {
            Some(budget) => budget,
            None => Arc::new(self.config.budget.build()?),
        };
        let name = self.name;
        let period = match self.config.delay {
            HedgeDelay::Percentile { period, .. } => period,
            HedgeDelay::Fixed(_) => Duration::from_secs(10),
        };
        let skipped = |reason: &'static str| metrics::counter!(metric_name(HEDGE_METRIC_PREFIX, "skipped_total"), LABEL_NAME => name.to_string(), LABEL_REASON => reason);
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                policy: self.policy,
                budget,
                live: RwLock::new(Live::from(&self.config)),
                latencies: LatencyWindow::new(Instant::now(), period),
                requests: RequestCounters::new(HEDGE_METRIC_PREFIX, &name),
                hedges: metrics::counter!(metric_name(HEDGE_METRIC_PREFIX, "attempts_total"), LABEL_NAME => name.to_string()),
                skipped: [
                    skipped(HedgeSkip::Budget.label()),
                    skipped(HedgeSkip::Deadline.label()),
                    skipped(HedgeSkip::Pushback.label()),
                ],
                reconfigurations: metrics::counter!(metric_name(HEDGE_METRIC_PREFIX, "reconfigurations_total"), LABEL_NAME => name.to_string()),
                name,
            }),
        })
    }
}

/// What a [`HedgeHandle`] reads, whatever the policy.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn budget(&self) -> &Arc<RetryBudget>;
    fn delay(&self, now: Instant) -> Option<Duration>;
    fn config(&self) -> (u32, HedgeDelay, Duration);
    fn set(&self, config: &HedgeConfig);
}

impl<P: Send + Sync> Target for Shared<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    fn delay(&self, now: Instant) -> Option<Duration> {
        Shared::delay(self, now).0
    }

    fn config(&self) -> (u32, HedgeDelay, Duration) {
        let live = self.live.read();
        (live.max_attempts, live.delay, live.max_pushback)
    }

    fn set(&self, config: &HedgeConfig) {
        *self.live.write() = Live::from(config);
        self.reconfigurations.increment(1);
    }
}

/// A cheap, cloneable handle on a [`HedgeLayer`]: its budget, the delay
/// in force, and live reconfiguration.
#[derive(Clone)]
pub struct HedgeHandle {
    shared: Arc<dyn Target>,
}

impl HedgeHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The budget hedges draw on (shared with the layers given it).
    pub fn budget(&self) -> &Arc<RetryBudget> {
        self.shared.budget()
    }

    /// The hedging delay in force now (`None`: calls are not hedged, a
    /// percentile delay without enough samples yet).
    pub fn delay(&self) -> Option<Duration> {
        self.shared.delay(Instant::now())
    }

    /// `max_attempts`, `delay` and `max_pushback` in force (the budget is
    /// read through [`budget`](Self::budget)).
    pub fn config(&self) -> (u32, HedgeDelay, Duration) {
        self.shared.config()
    }

    /// Changes `max_attempts`, `delay` and `max_pushback` while the layer
    /// serves, validated as [`HedgeLayer::new`] validates (a refused change
    /// changes nothing). Calls under way keep their plan; the next call
    /// uses the new one. The latencies gathered are kept (a new period
    /// applies from the next one). The budget changes through
    /// [`RetryBudget::reconfigure`] on [`budget`](Self::budget), since it
    /// may be shared.
    ///
    /// # Errors
    /// As [`HedgeConfig::validate`].
    pub fn reconfigure(&self, config: &HedgeConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.shared.set(config);
        Ok(())
    }
}

impl fmt::Debug for HedgeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeHandle")
            .field("name", &self.name())
            .field("budget", self.budget())
            .finish_non_exhaustive()
    }
}
