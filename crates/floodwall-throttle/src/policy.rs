//! The SRE throttle as an admission policy: what the shared Tower adapter
//! (floodwall-admit) calls on every request.

use std::fmt;
use std::sync::Arc;

use floodwall_admit::{Admit, Policy, Read};
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::outcome::{self, Silence, Verdict};
use floodwall_core::{BoxError, Classify, Criticality, Outcome, RejectKind, Rejected};
use metrics::Gauge;

use crate::{AdaptiveThrottle, CriticalityOf, Random, Throttled, Ticket};

/// The statistics a [`ThrottleLayer`](crate::ThrottleLayer) shares between
/// its services, with its classifier, criticality source and metrics:
/// admits or drops each request in `call` ([`Admit`]), reads finished
/// attempts by floodwall's outcome rule ([`Read`]: accepted, not accepted,
/// or nothing), and records them ([`Policy::release`]).
pub struct ThrottlePolicy<C, X> {
    pub(crate) throttle: AdaptiveThrottle<Box<dyn Random>>,
    pub(crate) classify: C,
    pub(crate) criticality: X,
    pub(crate) name: Arc<str>,
    pub(crate) metrics: Metrics,
}

impl<C, X> ThrottlePolicy<C, X> {
    /// The throttle.
    pub fn throttle(&self) -> &AdaptiveThrottle<Box<dyn Random>> {
        &self.throttle
    }

    /// The metric label.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<C, X> fmt::Debug for ThrottlePolicy<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottlePolicy")
            .field("name", &self.name)
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}

/// Metric handles per criticality class (the fifth: none):
/// `floodwall_throttle_requests_total{name, outcome, reason, criticality}`
/// and the gauge `floodwall_throttle_probability{name, criticality}`.
pub(crate) struct Metrics {
    requests: [RequestCounters; 5],
    probability: [Gauge; 5],
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let label = |i: usize| Criticality::ALL.get(i).map_or("none", |c| c.as_str());
        Self {
            requests: std::array::from_fn(|i| {
                RequestCounters::with_labels(
                    crate::METRIC_PREFIX,
                    name,
                    &[(crate::LABEL_CRITICALITY, label(i))],
                )
            }),
            probability: std::array::from_fn(|i| {
                metrics::gauge!(
                    metric_name(crate::METRIC_PREFIX, "probability"),
                    LABEL_NAME => name.to_owned(),
                    crate::LABEL_CRITICALITY => label(i)
                )
            }),
        }
    }
}

impl<C: Send + Sync + 'static, X: Send + Sync + 'static> Policy for ThrottlePolicy<C, X> {
    type Permit = Ticket;

    /// [`Read::read`] says `Answered(Success)` for an accept and
    /// `Answered(Overloaded)` for an attempt the backend did not accept.
    #[inline]
    fn release(&self, ticket: Ticket, verdict: Verdict) {
        match verdict {
            Verdict::Answered(Outcome::Success) => self.throttle.accept(ticket),
            Verdict::Answered(_) | Verdict::TimedOut => {}
            // Says nothing about the backend: taken back.
            Verdict::Silent(_) => self.throttle.forget(ticket),
        }
    }
}

impl<C, X, Req> Admit<Req> for ThrottlePolicy<C, X>
where
    C: Send + Sync + 'static,
    X: CriticalityOf<Req>,
{
    #[inline]
    fn admit(&self, req: &mut Req) -> Result<Ticket, BoxError> {
        let class = self.criticality.criticality(req);
        let slot = class.map_or(4, Criticality::index);
        // The call chain's instant when an outer layer read the clock.
        match self
            .throttle
            .admit_ticket(floodwall_core::clock::now(), class)
        {
            Ok(ticket) => {
                self.metrics.requests[slot].admitted();
                self.metrics.probability[slot].set(ticket.probability());
                Ok(ticket)
            }
            Err(probability) => Err(self.drop_request(slot, probability)),
        }
    }
}

impl<C, X> ThrottlePolicy<C, X> {
    #[cold]
    fn drop_request(&self, slot: usize, probability: f64) -> BoxError {
        self.metrics.requests[slot].rejected(RejectKind::Throttled);
        self.metrics.probability[slot].set(probability);
        tracing::debug!(name = %self.name, probability, "adaptive throttling dropped a request");
        Rejected::boxed(Throttled::new(probability))
    }
}

/// A response is an accept unless it is an overload signal (overloaded, or
/// timed out with its full budget). An error is an accept only if the
/// classifier calls it a success (an application status carried as an
/// error): by default no response came back. Silent attempts (floodwall's
/// outcome rule) are taken back.
impl<C, X, Res> Read<Res> for ThrottlePolicy<C, X>
where
    C: Classify<Res, BoxError> + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    #[inline]
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        const ACCEPTED: Verdict = Verdict::Answered(Outcome::Success);
        const NOT_ACCEPTED: Verdict = Verdict::Answered(Outcome::Overloaded);
        if let Ok(res) = result {
            // An answer (the common case, read without the error path).
            return match self.classify.classify(Ok(res)) {
                Outcome::Success | Outcome::Failure => ACCEPTED,
                Outcome::Overloaded => NOT_ACCEPTED,
                Outcome::TimedOut if caller_limited => Verdict::Silent(Silence::CallerDeadline),
                Outcome::TimedOut => NOT_ACCEPTED,
            };
        }
        match outcome::judge(&self.classify, result, caller_limited) {
            Verdict::Answered(Outcome::Success) => ACCEPTED,
            Verdict::Silent(why) => Verdict::Silent(why),
            _ => NOT_ACCEPTED,
        }
    }
}
