//! The response future of [`Guarded`](crate::Guarded) and
//! [`Backpressure`](crate::Backpressure).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use floodwall_core::BoxError;
use pin_project_lite::pin_project;

use crate::{Guard, Policy, Read};

pin_project! {
    /// The inner service's future with the request's [`Guard`], or a
    /// refusal ready at once.
    pub struct ResponseFuture<F, P: Policy> {
        #[pin]
        state: State<F, P>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, P: Policy> {
        Called { #[pin] fut: F, guard: Guard<P> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, P: Policy> ResponseFuture<F, P> {
    /// The inner future of an admitted request.
    #[inline]
    pub(crate) fn called(fut: F, guard: Guard<P>) -> Self {
        Self {
            state: State::Called { fut, guard },
        }
    }

    /// A refusal.
    #[inline]
    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F, P, T, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    P: Read<T>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, guard } => {
                let result = ready!(fut.poll(cx)).map_err(Into::into);
                guard.finish(result.as_ref());
                Poll::Ready(result)
            }
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

impl<F, P: Policy> fmt::Debug for ResponseFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Refused { .. } => "Refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
