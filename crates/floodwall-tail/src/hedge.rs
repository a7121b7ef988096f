//! Hedged requests (gRPC A6 hedging policy): a second attempt when the
//! first is slow, the first good answer wins.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::config::check_duration;
use floodwall_core::metrics::{LABEL_NAME, LABEL_REASON, RequestCounters, metric_name};
use floodwall_core::{BoxError, ConfigError};
use floodwall_throttle::{
    BudgetConfig, RetryBudget, RetryErrors, RetryHint, RetryPolicy, Verdict, mark_given_up,
};
use metrics::Counter;
use parking_lot::RwLock;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::latency::{LatencyWindow, Percentile};

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

/// When the next hedge is sent after an attempt starts.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum HedgeDelay {
    /// A fixed delay: A6's `hedgingDelay`.
    Fixed(#[cfg_attr(feature = "serde", serde(with = "humantime_serde"))] Duration),
    /// The `percentile` (in `(0, 1]`) of the attempts' latencies over the
    /// last full `period`, as tower's `Hedge` reads it; while that period
    /// held fewer than `min_samples` latencies, calls are not hedged.
    Percentile {
        /// The quantile, in `(0, 1]`: 0.95 for p95.
        percentile: f64,
        /// The fewest latencies a period needs for its percentile to be
        /// used.
        min_samples: u32,
        /// The period latencies are gathered over.
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        period: Duration,
    },
}

impl Default for HedgeDelay {
    /// The p95 of the last 10 s, once they hold 100 latencies.
    fn default() -> Self {
        Self::Percentile {
            percentile: 0.95,
            min_samples: 100,
            period: Duration::from_secs(10),
        }
    }
}

/// A [`HedgeLayer`]'s configuration (gRPC A6 hedging policy).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HedgeConfig {
    /// Attempts per call, the first included: 2 to [`MAX_ATTEMPTS`].
    /// Default 2.
    pub max_attempts: u32,
    /// When each next hedge is sent. Default [`HedgeDelay::default`].
    pub delay: HedgeDelay,
    /// The longest server pushback honoured: a longer one stops hedging for
    /// the call. Default 30 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_pushback: Duration,
    /// The budget this layer makes for itself, unless the builder is given
    /// one to share with retry layers ([`HedgeBuilder::budget`]).
    pub budget: BudgetConfig,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            max_attempts: 2,
            delay: HedgeDelay::default(),
            max_pushback: Duration::from_secs(30),
            budget: BudgetConfig::default(),
        }
    }
}

impl HedgeConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for `max_attempts` outside `2..=5`, a zero or
    /// out-of-range delay or period, a percentile outside `(0, 1]`, or a
    /// budget [`RetryBudget::new`] refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(
                ConfigError::new("max_attempts", "must be in 2..=5 (gRPC A6)")
                    .with_value(self.max_attempts),
            );
        }
        check_duration("max_pushback", self.max_pushback)?;
        match self.delay {
            HedgeDelay::Fixed(d) => check_duration("delay", d)?,
            HedgeDelay::Percentile {
                percentile, period, ..
            } => {
                if !(percentile > 0.0 && percentile <= 1.0) {
                    return Err(ConfigError::new("delay.percentile", "must be in (0, 1]")
                        .with_value(percentile));
                }
                check_duration("delay.period", period)?;
                if period.is_zero() {
                    return Err(ConfigError::new("delay.period", "must be above zero"));
                }
            }
        }
        self.budget.build().map(drop)
    }
}

// ------------------------------------------------------------ sans-IO core

/// What a call does after one of its attempts answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeStep {
    /// Return this answer; cancel every other attempt.
    Commit,
    /// Return this answer, marked as given up on (no layer above retries
    /// it): no attempt is left and no hedge will be sent.
    GiveUp,
    /// Keep this answer as the last one and wait for the other attempts or
    /// the next hedge.
    Continue,
}

/// Why a due hedge was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeSkip {
    /// The retry budget is at or under half its tokens.
    Budget,
    /// The deadline in scope leaves less than the hedging delay.
    Deadline,
    /// The server said not to retry, or pushed back longer than allowed.
    Pushback,
}

impl HedgeSkip {
    fn label(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Deadline => "deadline",
            Self::Pushback => "pushback",
        }
    }
}

/// One call's hedging plan (sans-IO): how many attempts are out, when the
/// next hedge is due, and whether hedging stopped. Every method takes the
/// instant; the [`Hedge`] service drives it.
///
/// ```
/// use std::time::Duration;
/// use floodwall_tail::{HedgeCall, HedgeStep};
/// use floodwall_throttle::{RetryHint, Verdict};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let ms = Duration::from_millis;
/// let mut call = HedgeCall::new(t0, 3, Some(ms(10)), ms(500));
/// assert_eq!(call.next_hedge(), Some(t0 + ms(10)));
/// // The hedge went out at 10 ms: the next one is due 10 ms later.
/// assert!(call.hedge_sent(t0 + ms(10)), "sent by the delay: it takes a token");
/// assert_eq!(call.next_hedge(), Some(t0 + ms(20)));
/// // A non-fatal failure sends the next hedge at once...
/// assert_eq!(call.on_answer(t0 + ms(12), Verdict::Failure(RetryHint::Retry)), HedgeStep::Continue);
/// assert_eq!(call.next_hedge(), Some(t0 + ms(12)));
/// // ...and a success commits.
/// assert_eq!(call.on_answer(t0 + ms(13), Verdict::Success), HedgeStep::Commit);
/// ```
#[derive(Debug, Clone)]
pub struct HedgeCall {
    max_attempts: u32,
    sent: u32,
    outstanding: u32,
    delay: Option<Duration>,
    max_pushback: Duration,
    next: Option<Instant>,
    /// Whether `next` was set by an answer (a non-fatal failure or
    /// pushback) rather than by the hedging delay.
    by_answer: bool,
    stopped: Option<HedgeSkip>,
}

impl HedgeCall {
    /// A call whose first attempt started at `now`; `delay` is the hedging
    /// delay in force (`None`: no hedge is sent on a timer).
    pub fn new(
        now: Instant,
        max_attempts: u32,
        delay: Option<Duration>,
        max_pushback: Duration,
    ) -> Self {
        Self {
            max_attempts,
            sent: 1,
            outstanding: 1,
            delay,
            max_pushback,
            next: delay.filter(|_| max_attempts > 1).map(|d| now + d),
            by_answer: false,
            stopped: None,
        }
    }

    /// When the next hedge is due, if one is planned.
    pub fn next_hedge(&self) -> Option<Instant> {
        if self.stopped.is_some() || self.sent >= self.max_attempts {
            return None;
        }
        self.next
    }

    /// Attempts still running.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Attempts sent, the first included.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Why hedging stopped, if it did.
    pub fn stopped(&self) -> Option<HedgeSkip> {
        self.stopped
    }

    /// Whether a hedge due at `now` may be sent: `budget_allows` is the
    /// retry budget's word, `deadline` the deadline in scope (a hedge needs
    /// at least the hedging delay before it). A refusal stops hedging.
    pub fn may_send(
        &mut self,
        now: Instant,
        budget_allows: bool,
        deadline: Option<Instant>,
    ) -> Result<(), HedgeSkip> {
        let needs = self.delay.unwrap_or(Duration::ZERO);
        let skip = if !budget_allows {
            Some(HedgeSkip::Budget)
        } else if deadline.is_some_and(|d| d.saturating_duration_since(now) <= needs) {
            Some(HedgeSkip::Deadline)
        } else {
            None
        };
        match skip {
            Some(skip) => {
                self.stopped = Some(skip);
                Err(skip)
            }
            None => Ok(()),
        }
    }

    /// A hedge went out at `now`. Returns whether the hedging delay sent
    /// it (a slow attempt: it takes a budget token) rather than an answer
    /// (whose failure already took one).
    pub fn hedge_sent(&mut self, now: Instant) -> bool {
        let by_timer = !self.by_answer;
        self.by_answer = false;
        self.sent += 1;
        self.outstanding += 1;
        self.next = self.delay.map(|d| now + d);
        by_timer
    }

    /// Stops hedging (the service could not take another attempt).
    pub fn stop(&mut self, why: HedgeSkip) {
        self.stopped.get_or_insert(why);
    }

    /// An attempt answered at `now` with `verdict`; says what the call does.
    ///
    /// - A success or a fatal answer commits.
    /// - A non-fatal failure (A6 "non-fatal status code") sends the next
    ///   hedge at once; with server pushback, after it (a pushback over
    ///   `max_pushback`, or one saying never, stops hedging).
    /// - With nothing left running and no hedge to come, the answer is
    ///   given up on.
    pub fn on_answer(&mut self, now: Instant, verdict: Verdict) -> HedgeStep {
        self.outstanding = self.outstanding.saturating_sub(1);
        let hint = match verdict {
            Verdict::Success => return HedgeStep::Commit,
            Verdict::Fatal => return HedgeStep::GiveUp,
            Verdict::Failure(hint) | Verdict::Refused(hint) => hint,
        };
        match hint {
            RetryHint::Retry => {
                self.next = Some(now);
                self.by_answer = true;
            }
            RetryHint::RetryAfter(d) if d <= self.max_pushback => {
                self.next = Some(now + d);
                self.by_answer = true;
            }
            RetryHint::RetryAfter(_) | RetryHint::DoNotRetry => self.stop(HedgeSkip::Pushback),
        }
        if self.outstanding == 0 && self.next_hedge().is_none() {
            HedgeStep::GiveUp
        } else {
            HedgeStep::Continue
        }
    }

    /// Whether nothing runs and nothing more will be sent: the last answer
    /// is all there is.
    pub fn exhausted(&self) -> bool {
        self.outstanding == 0 && self.next_hedge().is_none()
    }
}

// -------------------------------------------------------------- the layer

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

impl<S, P> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`HedgeLayer`] builds.
pub struct Hedge<S, P = RetryErrors> {
    inner: S,
    shared: Arc<Shared<P>>,
}

impl<S: Clone, P> Clone for Hedge<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Hedge<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Hedge<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response>,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The instance polled ready makes the first attempt and is kept for
        // hedges (polled ready again before each); a clone stays behind.
        let mut svc = floodwall_core::service::take_ready(&mut self.inner);
        let now = Instant::now();
        let (delay, gather, max_attempts, max_pushback) = self.shared.delay(now);
        self.shared.requests.admitted();
        let first = svc.call(req.clone());
        let deadline = floodwall_deadline::current().map(|d| d.instant());
        HedgeFuture {
            first: Attempt::Running {
                fut: first,
                started: now,
            },
            hedges: Vec::new(),
            sleep: None,
            svc,
            req,
            shared: self.shared.clone(),
            call: HedgeCall::new(now, max_attempts, delay, max_pushback),
            gather,
            deadline,
            last: None,
        }
    }
}

pin_project! {
    #[project = AttemptProj]
    enum Attempt<F> {
        Running { #[pin] fut: F, started: Instant },
        Done,
    }
}

type Answer<R> = Result<R, BoxError>;

pin_project! {
    /// The response future of [`Hedge`].
    pub struct HedgeFuture<S, Req, P>
    where
        S: Service<Req>,
    {
        #[pin]
        first: Attempt<S::Future>,
        hedges: Vec<(Pin<Box<S::Future>>, Instant)>,
        #[pin]
        sleep: Option<Sleep>,
        svc: S,
        req: Req,
        shared: Arc<Shared<P>>,
        call: HedgeCall,
        gather: Option<Percentile>,
        deadline: Option<Instant>,
        last: Option<Answer<S::Response>>,
    }
}

impl<S, Req, P> fmt::Debug for HedgeFuture<S, Req, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl<S, Req, P> Future for HedgeFuture<S, Req, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response>,
    Req: Clone,
{
    type Output = Answer<S::Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            // 1. Answers, the first attempt's then the hedges'.
            let mut answered = None;
            if let AttemptProj::Running { fut, started } = this.first.as_mut().project()
                && let Poll::Ready(result) = fut.poll(cx)
            {
                answered = Some((result.map_err(Into::into), *started));
                this.first.set(Attempt::Done);
            }
            if answered.is_none() {
                for i in 0..this.hedges.len() {
                    if let Poll::Ready(result) = this.hedges[i].0.as_mut().poll(cx) {
                        let (_, started) = this.hedges.swap_remove(i);
                        answered = Some((result.map_err(Into::into), started));
                        break;
                    }
                }
            }
            if let Some((result, started)) = answered {
                let now = Instant::now();
                let verdict = shared.policy.check(result.as_ref());
                match verdict {
                    Verdict::Success => shared.budget.on_success(),
                    Verdict::Failure(_) => shared.budget.on_failure(),
                    Verdict::Fatal | Verdict::Refused(_) => {}
                }
                if let Some(params) = this.gather
                    && !matches!(verdict, Verdict::Refused(_))
                {
                    shared.latencies.record(now, now - started, *params);
                }
                match this.call.on_answer(now, verdict) {
                    HedgeStep::Commit => {
                        cancel(this.first.as_mut(), this.hedges, now, shared, *this.gather);
                        return Poll::Ready(result);
                    }
                    HedgeStep::GiveUp => {
                        if matches!(
                            verdict,
                            Verdict::Failure(RetryHint::DoNotRetry)
                                | Verdict::Refused(RetryHint::DoNotRetry)
                        ) {
                            shared.skipped(HedgeSkip::Pushback);
                        }
                        cancel(this.first.as_mut(), this.hedges, now, shared, *this.gather);
                        return Poll::Ready(mark_given_up(&shared.policy, result));
                    }
                    HedgeStep::Continue => {
                        if this.call.stopped() == Some(HedgeSkip::Pushback) {
                            shared.skipped(HedgeSkip::Pushback);
                        }
                        *this.last = Some(result);
                        continue;
                    }
                }
            }

            // 2. The next hedge, when it is due.
            let Some(due) = this.call.next_hedge() else {
                if this.call.exhausted() {
                    let last = this
                        .last
                        .take()
                        .expect("an answer came before hedging ended");
                    return Poll::Ready(mark_given_up(&shared.policy, last));
                }
                return Poll::Pending;
            };
            let now = Instant::now();
            if now < due {
                match this.sleep.as_mut().as_pin_mut() {
                    Some(sleep) => sleep.reset(due),
                    None => this.sleep.set(Some(tokio::time::sleep_until(due))),
                }
                let sleep = this.sleep.as_mut().as_pin_mut().expect("just set");
                if sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            if let Err(skip) = this
                .call
                .may_send(now, shared.budget.can_retry(), *this.deadline)
            {
                shared.skipped(skip);
                continue;
            }
            match this.svc.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The service takes no more attempts: the ones out
                    // decide.
                    this.call.stop(HedgeSkip::Pushback);
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            let fut = this.svc.call(this.req.clone());
            this.hedges.push((Box::pin(fut), now));
            if this.call.hedge_sent(now) {
                // A slow attempt costs a token, as a failure does.
                shared.budget.on_failure();
            }
            shared.hedges.increment(1);
        }
    }
}

/// Cancels every attempt still running (their futures dropped). Each was
/// slower than the winner: its time so far is recorded as a lower bound
/// of its latency, so the percentile is not read from the fast ones only.
fn cancel<F, P>(
    mut first: Pin<&mut Attempt<F>>,
    hedges: &mut Vec<(Pin<Box<F>>, Instant)>,
    now: Instant,
    shared: &Shared<P>,
    gather: Option<Percentile>,
) {
    if let Some(params) = gather {
        if let AttemptProj::Running { started, .. } = first.as_mut().project() {
            shared.latencies.record(now, now - *started, params);
        }
        for (_, started) in hedges.iter() {
            shared.latencies.record(now, now - *started, params);
        }
    }
    first.set(Attempt::Done);
    hedges.clear();
}
