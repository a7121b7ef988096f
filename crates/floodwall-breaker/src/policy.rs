//! The breaker as an admission policy: what the shared Tower adapter
//! (floodwall-admit) calls on every request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_admit::{Admit, Policy, Read, Reserve, Wait};
use floodwall_core::metrics::RequestCounters;
use floodwall_core::outcome::{self, Verdict};
use floodwall_core::{BoxError, Classify, Outcome, RejectKind, Rejected};
use metrics::Counter;
use tokio::time::Instant;

use crate::{CircuitBreaker, CircuitOpen, Permit, State};

/// The breaker a [`BreakerLayer`](crate::BreakerLayer) shares between its
/// services, with its classifier and metrics: admits calls in `call`
/// ([`Admit`]), reads finished calls by floodwall's outcome rule with the
/// classifier ([`Read`]), and records them ([`Policy::release`]).
pub struct BreakerPolicy<C> {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) classify: C,
    pub(crate) name: Arc<str>,
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) requests: RequestCounters,
}

impl<C> BreakerPolicy<C> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The metric label.
    pub fn name(&self) -> &str {
        &self.name
    }

    #[cold]
    fn refuse(&self, state: State, retry_after: Option<Duration>) -> BoxError {
        self.requests.rejected(RejectKind::CircuitOpen);
        Rejected::boxed(CircuitOpen::new(state, retry_after))
    }
}

impl<C> fmt::Debug for BreakerPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPolicy")
            .field("name", &self.name)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<C: Send + Sync + 'static> Policy for BreakerPolicy<C> {
    type Permit = Permit;

    #[inline]
    fn release(&self, permit: Permit, verdict: Verdict) {
        record(
            &self.breaker,
            permit,
            verdict,
            [&self.success, &self.failure, &self.cancelled],
        );
    }
}

/// Records a finished call on `breaker` by floodwall's outcome rule and
/// counts it (`[success, failure, cancelled]`): a call that says nothing
/// gives its permit back undecided (a half-open probe frees its slot).
#[inline]
pub(crate) fn record(
    breaker: &CircuitBreaker,
    permit: Permit,
    verdict: Verdict,
    counters: [&Counter; 3],
) {
    let [success, failure, cancelled] = counters;
    let failed = match verdict {
        Verdict::Answered(Outcome::Success) => false,
        Verdict::Answered(_) | Verdict::TimedOut => true,
        Verdict::Silent(_) => {
            cancelled.increment(1);
            breaker.on_cancel(permit);
            return;
        }
    };
    if failed {
        failure.increment(1);
    } else {
        success.increment(1);
    }
    // The clock is read only if the outcome needs the time.
    breaker.on_outcome_with(permit, failed, Instant::now);
}

impl<C: Send + Sync + 'static, Req> Admit<Req> for BreakerPolicy<C> {
    #[inline]
    fn admit(&self, _: &mut Req) -> Result<Permit, BoxError> {
        // The call chain's instant when an outer layer read the clock.
        match self.breaker.try_acquire_with(floodwall_core::clock::now) {
            Ok(permit) => {
                self.requests.admitted();
                Ok(permit)
            }
            Err(refused) => Err(self.refuse(refused.state, refused.retry_after)),
        }
    }
}

impl<C, Res> Read<Res> for BreakerPolicy<C>
where
    C: Classify<Res, BoxError> + Send + Sync + 'static,
{
    #[inline]
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        outcome::judge(&self.classify, result, caller_limited)
    }
}

/// In the readiness mode: open, it is not ready until its open time is
/// over; out of half-open probes, it looks again every 10 ms; forced open,
/// readiness fails.
impl<C: Send + Sync + 'static> Reserve for BreakerPolicy<C> {
    fn reserve(&self) -> Result<Permit, Wait> {
        self.breaker
            .try_acquire_with(Instant::now)
            .map_err(|refused| match (refused.state, refused.retry_after) {
                (_, Some(d)) => Wait::For(d),
                (State::ForcedOpen, None) => Wait::Refuse(self.refuse(refused.state, None)),
                (_, None) => Wait::For(Duration::from_millis(10)),
            })
    }
}
