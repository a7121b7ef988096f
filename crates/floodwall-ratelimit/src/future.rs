//! The response future of the rate-limit service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_admit::gate::{Gate, Gated, Open};
use floodwall_core::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::layer::Shared;
use crate::{Limiter, Refund, Weigh};

/// The response future of [`RateLimit`](crate::RateLimit): the inner call,
/// a ready rejection, or (in wait mode) a wait for the request's turn
/// followed by the inner call.
///
/// Dropping it while it waits cancels the request's reservation (as far as
/// the limiter's [`Refund`] rule allows); the inner service is never called
/// for it.
pub type ResponseFuture<S, Req, L, W> = Gated<Pin<Box<WaitTurn<S, Req, L, W>>>>;

pin_project! {
    /// A request waiting for its turn in wait mode (boxed in the response
    /// future, so the common cases stay small): the timer, then the inner
    /// service's readiness, then the call.
    pub struct WaitTurn<S, Req, L, W>
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

impl<S, Req, L, W> WaitTurn<S, Req, L, W>
where
    S: Service<Req>,
    L: Limiter<Req>,
    W: Weigh<Req>,
{
    pub(crate) fn boxed(
        until: Instant,
        svc: S,
        req: Req,
        guard: RefundGuard<L, W>,
    ) -> Pin<Box<Self>> {
        Box::pin(Self {
            sleep: tokio::time::sleep_until(until),
            svc,
            req: Some(req),
            guard,
        })
    }
}

impl<S, Req, L, W> Gate for WaitTurn<S, Req, L, W>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    L: Limiter<Req>,
{
    type Future = S::Future;
    type Hold = ();

    fn poll_open(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self> {
        let wait = self.project();
        ready!(wait.sleep.poll(cx));
        if let Err(err) = ready!(wait.svc.poll_ready(cx)) {
            // The request will never run: give its tokens back now.
            wait.guard.refund();
            return Poll::Ready(Err(err.into()));
        }
        let req = wait.req.take().expect("polled after completion");
        wait.guard.admitted();
        Poll::Ready(Ok((wait.svc.call(req), ())))
    }
}

impl<S, Req, L: Limiter<Req>, W> fmt::Debug for WaitTurn<S, Req, L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitTurn")
            .field("until", &self.sleep.deadline())
            .finish_non_exhaustive()
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
