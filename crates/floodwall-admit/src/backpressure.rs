//! The readiness mode: the permit is taken in `poll_ready`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected, Rejection};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::{Guard, Read, Reserve};

/// How to wait for a permit a [`Reserve`] policy cannot give now.
#[derive(Debug)]
pub enum Wait {
    /// Try again after this long (a rate limit's retry-after, an open
    /// breaker's remaining open time).
    For(Duration),
    /// Try again when the policy calls `notify_waiters` on this `Notify`
    /// (a permit came back).
    Released(Arc<Notify>),
    /// Never: the service fails readiness with this error.
    Refuse(BoxError),
}

pin_project! {
    #[project = WaitingProj]
    enum Waiting {
        Sleep { #[pin] sleep: Sleep },
        Notified { #[pin] notified: OwnedNotified },
    }
}

impl Future for Waiting {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            WaitingProj::Sleep { sleep } => sleep.poll(cx),
            WaitingProj::Notified { notified } => notified.poll(cx),
        }
    }
}

/// [`Guarded`](crate::Guarded) as backpressure: `poll_ready` is pending
/// until the policy gives a permit (and the inner service is ready), and
/// `call` uses that permit. For use behind `tower::balance`, `Buffer` or
/// any caller that waits on readiness instead of handling refusals.
///
/// A permit taken in `poll_ready` belongs to this service value: a clone
/// starts without one, and dropping the service gives it back (as a
/// cancellation: it says nothing about the dependency).
pub struct Backpressure<S, P: Reserve> {
    inner: S,
    policy: Arc<P>,
    held: Option<Guard<P>>,
    waiting: Option<Pin<Box<Waiting>>>,
}

impl<S, P: Reserve> Backpressure<S, P> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: Arc<P>) -> Self {
        Self {
            inner,
            policy,
            held: None,
            waiting: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service (and giving back a
    /// permit it held).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether a permit is held for the next call.
    pub fn holds_permit(&self) -> bool {
        self.held.is_some()
    }

    /// Takes a permit, or registers how to wait for one.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        while self.held.is_none() {
            if let Some(waiting) = self.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            match self.policy.reserve() {
                Ok(permit) => self.held = Some(Guard::new(self.policy.clone(), permit)),
                Err(Wait::For(d)) => {
                    let sleep = tokio::time::sleep_until(crate::deadline_after(d));
                    self.waiting = Some(Box::pin(Waiting::Sleep { sleep }));
                }
                Err(Wait::Released(notify)) => {
                    // Register first, then look again: a release between the
                    // two is not missed.
                    let mut notified = Box::pin(Waiting::Notified {
                        notified: notify.notified_owned(),
                    });
                    if let WaitingProj::Notified { notified } = notified.as_mut().project() {
                        notified.enable();
                    }
                    match self.policy.reserve() {
                        Ok(permit) => self.held = Some(Guard::new(self.policy.clone(), permit)),
                        Err(Wait::Refuse(e)) => return Poll::Ready(Err(e)),
                        Err(_) => self.waiting = Some(notified),
                    }
                }
                Err(Wait::Refuse(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: Clone, P: Reserve> Clone for Backpressure<S, P> {
    /// A clone shares the policy but not a permit this service holds.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.policy.clone())
    }
}

impl<S: fmt::Debug, P: Reserve + fmt::Debug> fmt::Debug for Backpressure<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backpressure")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("holds_permit", &self.held.is_some())
            .finish()
    }
}

/// `call` on a [`Backpressure`] service that was not ready first (no
/// permit held): refused, as the Tower contract was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("called without a permit: poll_ready first")
    }
}

impl std::error::Error for NotReady {}

impl Rejection for NotReady {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}

impl<S, P, Req> Service<Req> for Backpressure<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Reserve + Read<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_permit(cx))?;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let guard = match self.held.take() {
            Some(guard) => Some(guard),
            // Not made ready first: a permit only if one is free now.
            None => self
                .policy
                .reserve()
                .ok()
                .map(|permit| Guard::new(self.policy.clone(), permit)),
        };
        match guard {
            Some(mut guard) => {
                guard.mark_call();
                ResponseFuture::called(self.inner.call(req), guard)
            }
            None => ResponseFuture::refused(Rejected::boxed(NotReady)),
        }
    }
}
