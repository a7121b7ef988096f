//! The Tower half of hedging: the [`Hedge`] service a [`HedgeLayer`]
//! builds, and its response future [`HedgeFuture`], which races the
//! attempts, sends the hedges when due and cancels the losers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::BoxError;
use floodwall_throttle::{RetryErrors, RetryHint, RetryPolicy, Verdict, mark_given_up};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{HedgeCall, HedgeLayer, HedgeSkip, HedgeStep, Shared};
use crate::latency::Percentile;

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
