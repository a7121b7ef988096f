//! The response future of the admission service: the admission level rides
//! back on every response.

use super::*;

pin_project! {
    /// The response future of [`Admission`](super::Admission).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Admitted {
            #[pin]
            fut: crate::scope::Scoped<F>,
            level: Option<Priority>,
        },
        Rejected { rejection: Option<Prioritized> },
    }
}

/// The wire form of `level`; static for "admit all", the common case.
fn level_value(level: Priority) -> HeaderValue {
    if level == Priority::LOWEST {
        return ADMIT_ALL_VALUE.clone();
    }
    level.header_value()
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(fut: crate::scope::Scoped<F>, level: Option<Priority>) -> Self {
        Self {
            state: State::Admitted { fut, level },
        }
    }

    pub(super) fn rejected(rejection: Prioritized) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { fut, level } => {
                let mut res = ready!(fut.poll(cx)).map_err(Into::into)?;
                if let Some(level) = *level {
                    res.headers_mut()
                        .insert(LEVEL_HEADER.clone(), level_value(level));
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Rejected { rejection } => {
                let rejection = rejection.take().expect("polled after completion");
                Poll::Ready(Err(Rejected::boxed(rejection)))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
