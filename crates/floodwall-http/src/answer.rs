//! Every error answered: a service whose error type is `Infallible`, for
//! frameworks that want one (axum's `Router::layer`, hyper's
//! `service_fn`).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use floodwall_core::{BoxError, Rejected};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{HttpResponder, Respond};

/// What a non-floodwall error (a handler's, a transport's) is answered
/// with. Any `Fn(BoxError) -> Response<B>` is one; the default is
/// [`InternalError`].
pub trait OnError<B> {
    /// The response for `error`.
    fn on_error(&self, error: BoxError) -> Response<B>;
}

impl<B, F: Fn(BoxError) -> Response<B>> OnError<B> for F {
    fn on_error(&self, error: BoxError) -> Response<B> {
        self(error)
    }
}

/// Answers any other error with `500 Internal Server Error` and an empty
/// body; the error's text stays inside.
#[derive(Debug, Clone, Copy, Default)]
pub struct InternalError;

impl<B: Default> OnError<B> for InternalError {
    fn on_error(&self, _: BoxError) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        res
    }
}

/// A layer whose services never fail: floodwall rejections become their
/// responses (through `R`, [`HttpResponder`] by default), any other error
/// — including one from the inner service's `poll_ready` — goes to `H`.
/// With it, an axum router needs no `HandleErrorLayer` in front of
/// floodwall's layers.
///
/// ```
/// use std::convert::Infallible;
/// use floodwall_http::answer::AnswerLayer;
/// use floodwall_token_bucket::{Quota, TokenBucketLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// # use floodwall_core::BoxError;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(AnswerLayer::new())
///     .layer(TokenBucketLayer::new(Quota::per_second(1)?)?)
///     .service(service_fn(|_: http::Request<()>| async {
///         Ok::<_, BoxError>(http::Response::new(String::new()))
///     }));
/// let ok: Result<_, Infallible> = svc.clone().oneshot(http::Request::new(())).await;
/// assert_eq!(ok.unwrap().status(), 200);
/// let limited = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(limited.status(), 429);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerLayer<R = HttpResponder, H = InternalError> {
    respond: R,
    on_error: H,
}

impl AnswerLayer {
    /// Rejections through [`HttpResponder`], other errors as 500.
    pub const fn new() -> Self {
        Self {
            respond: HttpResponder,
            on_error: InternalError,
        }
    }
}

impl<R, H> AnswerLayer<R, H> {
    /// Rejections through `respond` (e.g. the gRPC responder, or your own).
    pub fn respond<R2>(self, respond: R2) -> AnswerLayer<R2, H> {
        AnswerLayer {
            respond,
            on_error: self.on_error,
        }
    }

    /// Other errors through `on_error` (log them there, answer as you
    /// like).
    pub fn on_error<H2>(self, on_error: H2) -> AnswerLayer<R, H2> {
        AnswerLayer {
            respond: self.respond,
            on_error,
        }
    }
}

impl<S, R: Clone, H: Clone> Layer<S> for AnswerLayer<R, H> {
    type Service = Answer<S, R, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Answer {
            inner,
            respond: self.respond.clone(),
            on_error: self.on_error.clone(),
            not_ready: None,
        }
    }
}

/// The service an [`AnswerLayer`] builds: never fails.
pub struct Answer<S, R = HttpResponder, H = InternalError> {
    inner: S,
    respond: R,
    on_error: H,
    /// A readiness error, answered to the next call.
    not_ready: Option<BoxError>,
}

impl<S: Clone, R: Clone, H: Clone> Clone for Answer<S, R, H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            respond: self.respond.clone(),
            on_error: self.on_error.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug, R, H> fmt::Debug for Answer<S, R, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, R, H> Answer<S, R, H> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn answer<B, R: Respond<B>, H: OnError<B>>(
    respond: &R,
    on_error: &H,
    err: BoxError,
) -> Response<B> {
    match Rejected::find(&*err) {
        Some(rejection) => respond.respond(rejection),
        None => on_error.on_error(err),
    }
}

impl<S, R, H, Req, B> Service<Req> for Answer<S, R, H>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    R: Respond<B> + Clone,
    H: OnError<B> + Clone,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = AnswerFuture<S::Future, R, H, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_none()
            && let Err(err) = ready!(self.inner.poll_ready(cx))
        {
            self.not_ready = Some(err.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let state = match self.not_ready.take() {
            Some(err) => AnswerState::Ready {
                res: Some(answer(&self.respond, &self.on_error, err)),
            },
            None => AnswerState::Called {
                fut: self.inner.call(req),
            },
        };
        AnswerFuture {
            state,
            respond: self.respond.clone(),
            on_error: self.on_error.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Answer`].
    pub struct AnswerFuture<F, R, H, B> {
        #[pin]
        state: AnswerState<F, B>,
        respond: R,
        on_error: H,
    }
}

pin_project! {
    #[project = AnswerStateProj]
    enum AnswerState<F, B> {
        Called { #[pin] fut: F },
        Ready { res: Option<Response<B>> },
    }
}

impl<F, R, H, B, E> Future for AnswerFuture<F, R, H, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    R: Respond<B>,
    H: OnError<B>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match this.state.project() {
            AnswerStateProj::Called { fut } => match ready!(fut.poll(cx)) {
                Ok(res) => res,
                Err(err) => answer(&*this.respond, &*this.on_error, err.into()),
            },
            AnswerStateProj::Ready { res } => res.take().expect("polled after completion"),
        }))
    }
}

impl<F, R, H, B> fmt::Debug for AnswerFuture<F, R, H, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodwall_core::RejectKind;
    use floodwall_core::testing::StubRejection;
    use std::future::{Ready, ready as ready_fut};
    use tower_service::Service;

    /// Fails readiness once, then answers by `req`: 0 ok, 1 a rejection,
    /// 2 another error.
    struct Flaky {
        fail_ready: bool,
    }

    impl Service<u8> for Flaky {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = Ready<Result<Response<String>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if std::mem::take(&mut self.fail_ready) {
                return Poll::Ready(Err("backend gone".into()));
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: u8) -> Self::Future {
            ready_fut(match req {
                0 => Ok(Response::new("ok".into())),
                1 => Err(Rejected::boxed(StubRejection::new(RejectKind::Overloaded))),
                _ => Err("database on fire".into()),
            })
        }
    }

    async fn call(
        svc: &mut impl Service<u8, Response = Response<String>, Error = Infallible>,
        req: u8,
    ) -> Response<String> {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(req).await.unwrap()
    }

    #[tokio::test]
    async fn every_outcome_is_a_response() {
        let mut svc = AnswerLayer::new().layer(Flaky { fail_ready: false });
        assert_eq!(call(&mut svc, 0).await.status(), 200);
        assert_eq!(call(&mut svc, 1).await.status(), 503);
        let res = call(&mut svc, 2).await;
        assert_eq!(res.status(), 500);
        assert_eq!(res.body(), "", "the error's text stays inside");
    }

    #[tokio::test]
    async fn a_readiness_error_answers_the_next_call_and_the_hook_sees_it() {
        let hook = |e: BoxError| {
            let mut res = Response::new(format!("hook: {e}"));
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            res
        };
        let mut svc = AnswerLayer::new()
            .on_error(hook)
            .layer(Flaky { fail_ready: true });
        let res = call(&mut svc, 0).await;
        assert_eq!(res.status(), 502);
        assert_eq!(res.body(), "hook: backend gone");
        // The next call reaches the inner service.
        assert_eq!(call(&mut svc, 0).await.status(), 200);
    }
}
