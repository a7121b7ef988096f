//! The adaptive limit as an admission policy: what the shared Tower
//! adapter (floodwall-admit) calls on every request.

use std::fmt;
use std::sync::{Arc, OnceLock};

use floodwall_admit::{Admit, Policy, Read, Reserve, Wait};
use floodwall_core::metrics::RequestCounters;
use floodwall_core::outcome::{self, Silence, Verdict};
use floodwall_core::{BoxError, Classify, Outcome, RejectKind, Rejected};
use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Algorithm, ConcurrencyLimiter, LimitExceeded, Partition, Token};

/// What a cancelled request — its response future dropped before the end,
/// because the caller gave up or went away — tells the algorithm.
///
/// Netflix's limiters and Envoy's controller ignore cancellations (the
/// default). That leaves the limit blind in the worst case: when every
/// request is abandoned by a caller's timeout, no request finishes, the
/// algorithm hears nothing and the limit stays where it was. Where a
/// caller's timeout is what cancels requests (a server behind clients with
/// deadlines, a client layer under a `Timeout`), [`OnCancel::Drop`] turns
/// each cancellation into the loss signal it is.
///
/// ```
/// use floodwall_concurrency::{AdaptiveLimitLayer, Aimd, AimdConfig, OnCancel};
///
/// // Clients give up after 100 ms: a request they abandon is a drop.
/// let layer = AdaptiveLimitLayer::builder(AimdConfig::default())
///     .on_cancel(OnCancel::Drop)
///     .build()?;
/// assert_eq!(layer.handle().limit(), 10);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCancel {
    /// The slot comes back; the algorithm hears nothing (Netflix, Envoy).
    #[default]
    Ignore,
    /// The slot comes back and the algorithm hears a drop, with the time
    /// the request had been in flight as its RTT (a lower bound of the RTT
    /// it would have had).
    Drop,
}

/// Metric handles.
pub(crate) struct Metrics {
    pub(crate) limit: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) baseline: Gauge,
    pub(crate) latest: Gauge,
    pub(crate) success: Counter,
    pub(crate) dropped: Counter,
    pub(crate) ignored: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) requests: RequestCounters,
}

/// The limiter an [`AdaptiveLimitLayer`](crate::AdaptiveLimitLayer) shares
/// between its services, with its classifier, partition and metrics:
/// admits in `call` while under the limit ([`Admit`]), reads finished
/// requests by floodwall's outcome rule ([`Read`]), and feeds them to the
/// algorithm ([`Policy::release`]).
pub struct AdaptiveLimitPolicy<A, C, P> {
    pub(crate) limiter: ConcurrencyLimiter<A>,
    pub(crate) classify: C,
    pub(crate) partition: P,
    pub(crate) on_cancel: OnCancel,
    pub(crate) name: Arc<str>,
    pub(crate) metrics: Metrics,
    /// Woken when a slot comes back, once the readiness mode is in use.
    pub(crate) released: OnceLock<Arc<Notify>>,
}

impl<A, C, P> AdaptiveLimitPolicy<A, C, P> {
    /// The limiter.
    pub fn limiter(&self) -> &ConcurrencyLimiter<A> {
        &self.limiter
    }

    /// The metric label.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<A: Algorithm, C, P> fmt::Debug for AdaptiveLimitPolicy<A, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitPolicy")
            .field("name", &self.name)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<A, C, P> Policy for AdaptiveLimitPolicy<A, C, P>
where
    A: Algorithm,
    C: Send + Sync + 'static,
    P: Send + Sync + 'static,
{
    type Permit = Token;

    /// - success: its RTT is a sample;
    /// - overloaded, or timed out with its full budget: a drop;
    /// - failure, refused below, a caller's short deadline: ignored;
    /// - dropped by its caller: ignored, or a drop with [`OnCancel::Drop`].
    fn release(&self, token: Token, verdict: Verdict) {
        let m = &self.metrics;
        match verdict {
            Verdict::Answered(Outcome::Success) => {
                m.success.increment(1);
                // The limit and in-flight gauges are set by a listener,
                // when the limit changes: nothing more per request.
                self.limiter.success(token, Instant::now());
            }
            Verdict::Answered(Outcome::Overloaded | Outcome::TimedOut) | Verdict::TimedOut => {
                m.dropped.increment(1);
                self.limiter.dropped(token, Instant::now());
            }
            Verdict::Silent(Silence::Cancelled) if self.on_cancel == OnCancel::Drop => {
                m.cancelled.increment(1);
                self.limiter.dropped(token, Instant::now());
            }
            Verdict::Silent(Silence::Cancelled) => {
                m.cancelled.increment(1);
                self.limiter.ignore(token);
            }
            Verdict::Answered(Outcome::Failure) | Verdict::Silent(_) => {
                m.ignored.increment(1);
                self.limiter.ignore(token);
            }
        }
        if let Some(released) = self.released.get() {
            released.notify_waiters();
        }
    }
}

impl<A, C, P, Req> Admit<Req> for AdaptiveLimitPolicy<A, C, P>
where
    A: Algorithm,
    C: Send + Sync + 'static,
    P: Partition<Req> + Send + Sync + 'static,
{
    #[inline]
    fn admit(&self, req: &mut Req) -> Result<Token, BoxError> {
        let class = self.partition.class(req);
        self.limiter
            .try_acquire_in(class, Instant::now())
            .inspect(|_| self.metrics.requests.admitted())
            .map_err(|refused| {
                self.metrics.requests.rejected(RejectKind::Overloaded);
                Rejected::boxed(LimitExceeded::from(refused))
            })
    }
}

impl<A, C, P, Res> Read<Res> for AdaptiveLimitPolicy<A, C, P>
where
    A: Algorithm,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
    P: Send + Sync + 'static,
{
    #[inline]
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        outcome::judge(&self.classify, result, caller_limited)
    }
}

/// In the readiness mode, a request waits for a slot in class 0 (the most
/// important) until one comes back.
impl<A, C, P> Reserve for AdaptiveLimitPolicy<A, C, P>
where
    A: Algorithm,
    C: Send + Sync + 'static,
    P: Send + Sync + 'static,
{
    fn reserve(&self) -> Result<Token, Wait> {
        self.limiter
            .try_acquire_in(0, Instant::now())
            .map_err(|_| Wait::Released(self.released.get_or_init(Default::default).clone()))
    }
}
