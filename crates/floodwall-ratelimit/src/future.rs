//! The response future of the rate-limit service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::layer::Shared;
use crate::{Limiter, Refund, Weigh};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit):
    /// the inner call, a ready rejection, or (in wait mode) a wait for the
    /// request's turn followed by the inner call.
    ///
    /// Dropping it while it waits cancels the request's reservation (as far
    /// as the limiter's [`Refund`] rule allows); the inner service is never
    /// called for it.
    pub struct ResponseFuture<S, Req, L, W>
    where
        S: Service<Req>,
        L: Limiter<Req>,
        W: Weigh<Req>,
    {
        #[pin]
        state: State<S, Req, L, W>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, L, W>
    where
        S: Service<Req>,
        L: Limiter<Req>,
        W: Weigh<Req>,
    {
        Called { #[pin] fut: S::Future },
        Rejected { error: Option<BoxError> },
        // Boxed, in one allocation, so that the common cases stay small.
        Waiting { wait: Pin<Box<Wait<S, Req, L, W>>> },
    }
}

pin_project! {
    /// A request waiting for its turn in wait mode.
    struct Wait<S, Req, L, W>
    where
        L: Limiter<Req>,
    {
        #[pin]
        sleep: Sleep,
        svc: S,
        req: Option<Req>,
        guard: RefundGuard<L, W>,
    }
}

impl<S, Req, L, W> ResponseFuture<S, Req, L, W>
where
    S: Service<Req>,
    L: Limiter<Req>,
    W: Weigh<Req>,
{
    #[inline]
    pub(crate) fn called(fut: S::Future) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    pub(crate) fn rejected(error: BoxError) -> Self {
        Self {
            state: State::Rejected { error: Some(error) },
        }
    }

    pub(crate) fn waiting(until: Instant, svc: S, req: Req, guard: RefundGuard<L, W>) -> Self {
        Self {
            state: State::Waiting {
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(until),
                    svc,
                    req: Some(req),
                    guard,
                }),
            },
        }
    }
}

impl<S, Req, L, W> Future for ResponseFuture<S, Req, L, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    L: Limiter<Req>,
    W: Weigh<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Called { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Rejected { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                StateProj::Waiting { wait } => {
                    let wait = wait.as_mut().project();
                    ready!(wait.sleep.poll(cx));
                    if let Err(err) = ready!(wait.svc.poll_ready(cx)) {
                        // The request will never run: give its tokens back now.
                        wait.guard.refund();
                        return Poll::Ready(Err(err.into()));
                    }
                    let req = wait.req.take().expect("polled after completion");
                    wait.guard.admitted();
                    let fut = wait.svc.call(req);
                    state.set(State::Called { fut });
                }
            }
        }
    }
}

impl<S, Req, L, W> fmt::Debug for ResponseFuture<S, Req, L, W>
where
    S: Service<Req>,
    L: Limiter<Req>,
    W: Weigh<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
            State::Waiting { .. } => "Waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// Returns a waiting request's token unless the request got to run.
pub(crate) struct RefundGuard<L: Refund, W> {
    shared: Arc<Shared<L, W>>,
    permit: Option<L::Permit>,
}

impl<L: Refund, W> RefundGuard<L, W> {
    pub(crate) fn new(shared: Arc<Shared<L, W>>, permit: L::Permit) -> Self {
        Self {
            shared,
            permit: Some(permit),
        }
    }

    /// The request reached the inner service: its tokens are spent.
    fn admitted(&mut self) {
        self.permit = None;
        self.shared.metrics.waited.increment(1);
    }

    /// The request will never run: return its tokens (once).
    fn refund(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.limiter.refund(permit, Instant::now());
        }
    }
}

impl<L: Refund, W> Drop for RefundGuard<L, W> {
    fn drop(&mut self) {
        self.refund();
    }
}
