//! The response future both deadline layers share, and their metrics.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{BoxError, Deadline, DeadlineExceeded, Phase, RejectKind, Rejected, outcome};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::scope::{self, ScopedFuture};

pub(crate) fn exceeded(phase: Phase, caller_limited: bool) -> BoxError {
    Rejected::boxed(DeadlineExceeded::new(phase, caller_limited))
}

pub(crate) struct Metrics {
    pub(crate) requests: RequestCounters,
    pub(crate) exceeded: [Counter; 4],
    pub(crate) inbound: Histogram,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let prefix = crate::METRIC_PREFIX;
        Self {
            requests: RequestCounters::new(prefix, name),
            exceeded: Phase::ALL.map(|p| {
                metrics::counter!(metric_name(prefix, "exceeded_total"), LABEL_NAME => name.to_owned(), "phase" => p.as_str())
            }),
            inbound: metrics::histogram!(metric_name(prefix, "inbound_seconds"), LABEL_NAME => name.to_owned()),
        }
    }

    /// Refuses a request whose deadline passed before it was handed on.
    pub(crate) fn exceeded(&self, phase: Phase) -> BoxError {
        self.requests.rejected(RejectKind::DeadlineExceeded);
        self.exceeded[phase as usize].increment(1);
        // Never sent: who set the deadline does not matter.
        exceeded(phase, false)
    }
}

pin_project! {
    /// The response future of both layers: the inner future, raced against
    /// the deadline's timer when there is one.
    pub struct ResponseFuture<O, T> {
        #[pin]
        kind: Kind<O, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<O, T> {
        // No deadline: the inner future as it is.
        Open { #[pin] fut: O },
        // A deadline: the inner future (in the deadline's task scope, on
        // the server) until the timer fires. The timer is made the first
        // time the inner future is pending: a call that answers at once
        // (a cache hit, a refusal from an inner layer) never touches the
        // runtime's timer.
        Timed {
            #[pin] fut: T,
            // Made on the first pending poll (a call answered at once
            // never makes it), in place: no allocation of its own.
            #[pin]
            sleep: Option<Sleep>,
            at: Instant,
            // When the call was made: the timer's instant is clamped from it.
            made: Instant,
            counter: Counter,
            phase: Phase,
            caller_limited: bool,
        },
        // Refused before calling the inner service.
        Expired { error: Option<BoxError> },
    }
}

/// The response future of [`ServerDeadline`](crate::ServerDeadline): the handler runs with its
/// deadline in the task scope.
pub type ServerFuture<F> = ResponseFuture<F, ScopedFuture<F>>;

/// The response future of [`PropagateDeadline`](crate::PropagateDeadline):
/// the call runs with the deadline it waits for in the task scope.
pub type ClientFuture<F> = ResponseFuture<F, ScopedFuture<F>>;

impl<O, T> ResponseFuture<O, T> {
    pub(crate) fn open(fut: O) -> Self {
        Self {
            kind: Kind::Open { fut },
        }
    }

    pub(crate) fn timed(
        fut: T,
        deadline: Deadline,
        now: Instant,
        metrics: &Metrics,
        phase: Phase,
        caller_limited: bool,
    ) -> Self {
        Self {
            kind: Kind::Timed {
                fut,
                sleep: None,
                at: deadline.instant(),
                made: now,
                counter: metrics.exceeded[phase as usize].clone(),
                phase,
                caller_limited,
            },
        }
    }

    pub(crate) fn expired(metrics: &Metrics, phase: Phase) -> Self {
        Self {
            kind: Kind::Expired {
                error: Some(metrics.exceeded(phase)),
            },
        }
    }
}

impl<O, T, R, E> Future for ResponseFuture<O, T>
where
    O: Future<Output = Result<R, E>>,
    T: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Open { fut } => fut.poll(cx).map_err(Into::into),
            KindProj::Timed {
                fut,
                sleep,
                at,
                made,
                counter,
                phase,
                caller_limited,
            } => {
                if let Poll::Ready(out) = fut.poll(cx) {
                    return Poll::Ready(out.map_err(Into::into));
                }
                // A timer polled around this future in the same task ends
                // it at or before `at`, with the same outcome for the
                // layers below (the server layer's, whose scope this call
                // runs in): no second timer. Checked on every poll: the
                // future may be polled elsewhere later.
                if sleep.is_none()
                    && let Some(s) = scope::current_scoped()
                    && s.is_enforced()
                    && s.deadline().instant() <= *at
                    && s.from_caller() == *caller_limited
                {
                    return Poll::Pending;
                }
                let mut sleep = sleep;
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(timer_at(*at, *made))));
                }
                ready!(
                    sleep
                        .as_pin_mut()
                        .expect("the timer was made above")
                        .poll(cx)
                );
                counter.increment(1);
                let (phase, caller_limited) = (*phase, *caller_limited);
                // Drop the inner future now, not when the caller drops us;
                // the layers below read the drop as this timeout.
                outcome::expire_scope(caller_limited, || kind.set(Kind::Expired { error: None }));
                Poll::Ready(Err(exceeded(phase, caller_limited)))
            }
            KindProj::Expired { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// The timer's instant for a deadline `at` set at `made`: tokio's timer
/// cannot take instants near the clock's end, and thirty years is forever
/// here.
fn timer_at(at: Instant, made: Instant) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    made.checked_add(FAR).map_or(at, |far| at.min(far))
}

impl<O, T> fmt::Debug for ResponseFuture<O, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
