//! The body-end mode: the permit is held until the response body ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::BoxError;
use floodwall_core::Outcome;
use floodwall_core::outcome::Verdict;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{Admit, Guard, Policy, Read};

/// [`Guarded`](crate::Guarded) for HTTP (and gRPC) services whose permit is
/// held until the response **body** ends, not just until the head arrives:
/// a stream counts for its whole life (as Envoy counts streams). The call is
/// read when the head arrives ([`Read::read`]); the permit goes back with
/// that verdict when the body ends, with a failure if the body fails
/// part-way, and as dropped if the body is dropped before its end.
///
/// # Clone
/// The policy lives in an `Arc`: every clone shares it.
pub struct UntilBodyEnd<S, P> {
    inner: S,
    policy: Arc<P>,
}

impl<S, P> UntilBodyEnd<S, P> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: Arc<P>) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P> Clone for UntilBodyEnd<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for UntilBodyEnd<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilBodyEnd")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, Req, B> Service<Req> for UntilBodyEnd<S, P>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    P: Admit<Req> + Read<http::Response<B>>,
{
    type Response = http::Response<GuardedBody<B, P>>;
    type Error = BoxError;
    type Future = BodyFuture<S::Future, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        match self.policy.admit(&mut req) {
            Ok(permit) => {
                let guard = Guard::new(self.policy.clone(), permit);
                BodyFuture {
                    fut: Some(self.inner.call(req)),
                    guard: Some(guard),
                    error: None,
                }
            }
            Err(error) => BodyFuture {
                fut: None,
                guard: None,
                error: Some(error),
            },
        }
    }
}

pin_project! {
    /// The response future of [`UntilBodyEnd`]: the head, with the permit
    /// moved into its body.
    pub struct BodyFuture<F, P: Policy> {
        #[pin]
        fut: Option<F>,
        guard: Option<Guard<P>>,
        error: Option<BoxError>,
    }
}

impl<F, P, B, E> Future for BodyFuture<F, P>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    P: Read<http::Response<B>>,
{
    type Output = Result<http::Response<GuardedBody<B, P>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            return Poll::Ready(Err(this.error.take().expect("polled after completion")));
        };
        let result = ready!(fut.poll(cx)).map_err(Into::into);
        let mut guard = this.guard.take().expect("polled after completion");
        match result {
            Ok(res) => {
                let verdict = guard.policy().read(Ok(&res), guard.caller_limited());
                Poll::Ready(Ok(res.map(|body| GuardedBody::new(body, guard, verdict))))
            }
            Err(e) => {
                guard.finish::<http::Response<B>>(Err(&e));
                Poll::Ready(Err(e))
            }
        }
    }
}

impl<F, P: Policy> fmt::Debug for BodyFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body holding its request's permit until it ends.
    pub struct GuardedBody<B, P: Policy> {
        #[pin]
        inner: B,
        guard: Guard<P>,
        verdict: Verdict,
    }
}

impl<B: Body, P: Policy> GuardedBody<B, P> {
    fn new(inner: B, mut guard: Guard<P>, verdict: Verdict) -> Self {
        if inner.is_end_stream() {
            guard.release(verdict);
        }
        Self {
            inner,
            guard,
            verdict,
        }
    }
}

impl<B: Body, P: Policy> Body for GuardedBody<B, P> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            None => this.guard.release(*this.verdict),
            Some(Err(_)) => this.guard.release(Verdict::Answered(Outcome::Failure)),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, P: Policy> fmt::Debug for GuardedBody<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBody")
            .field("held", &self.guard.is_held())
            .finish_non_exhaustive()
    }
}
