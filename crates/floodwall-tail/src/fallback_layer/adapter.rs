//! The Tower half of the fallback layer: the [`FallbackService`] a
//! [`FallbackLayer`] builds, and its response future
//! [`FallbackResponseFuture`], which turns a triggering answer into the
//! fallback's.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::{BoxError, Classify, ResultClassifier};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Cause, Fallback, FallbackConfig, FallbackFailed, FallbackFuture, FallbackLayer, Shared,
    Trigger, fallback_trigger,
};

impl<S, F, C> Layer<S> for FallbackLayer<F, C> {
    type Service = FallbackService<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`FallbackLayer`] builds.
pub struct FallbackService<S, F, C = ResultClassifier> {
    inner: S,
    shared: Arc<Shared<F, C>>,
}

impl<S: Clone, F, C> Clone for FallbackService<S, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, F, C> fmt::Debug for FallbackService<S, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, F, C, Req> Service<Req> for FallbackService<S, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fallback<Req, S::Response>,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FallbackResponseFuture<S::Future, Req, S::Response, F, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Not ready is not a failure the fallback answers: readiness is the
        // inner service's (backpressure stays backpressure).
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let kept = self.shared.fallback.keep(&req);
        FallbackResponseFuture {
            state: FallbackState::Calling {
                fut: self.inner.call(req),
                kept: Some(kept),
            },
            config: *self.shared.config.read(),
            shared: self.shared.clone(),
            _req: PhantomData,
        }
    }
}

pin_project! {
    #[project = FallbackStateProj]
    enum FallbackState<Fut, K, R> {
        Calling { #[pin] fut: Fut, kept: Option<K> },
        Falling { fut: FallbackFuture<R>, trigger: Trigger, original: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`FallbackService`].
    pub struct FallbackResponseFuture<Fut, Req, R, F, C>
    where
        F: Fallback<Req, R>,
    {
        #[pin]
        state: FallbackState<Fut, F::Kept, R>,
        config: FallbackConfig,
        shared: Arc<Shared<F, C>>,
        _req: PhantomData<fn(Req)>,
    }
}

impl<Fut, Req, R, F, C> fmt::Debug for FallbackResponseFuture<Fut, Req, R, F, C>
where
    F: Fallback<Req, R>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackResponseFuture")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<Fut, E, R, F, C, Req> Future for FallbackResponseFuture<Fut, Req, R, F, C>
where
    Fut: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    F: Fallback<Req, R>,
    C: Classify<R, BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                FallbackStateProj::Calling { fut, kept } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let Some(trigger) =
                        fallback_trigger(this.config, &shared.classify, result.as_ref())
                    else {
                        shared.requests.admitted();
                        return Poll::Ready(result);
                    };
                    let kept = kept.take().expect("polled after the call's end");
                    let cause = Cause {
                        trigger,
                        answer: result,
                    };
                    let fut = shared.fallback.answer(kept, &cause);
                    // The call's error is kept for the report if the
                    // fallback fails too; a failed response is dropped.
                    let original = cause.answer.err();
                    this.state.set(FallbackState::Falling {
                        fut,
                        trigger,
                        original,
                    });
                }
                FallbackStateProj::Falling {
                    fut,
                    trigger,
                    original,
                } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let shared = &**this.shared;
                    let trigger = *trigger;
                    shared.requests.admitted();
                    return Poll::Ready(match result {
                        Ok(answer) => {
                            shared.answers[trigger.index()][0].increment(1);
                            Ok(answer)
                        }
                        Err(fallback) => {
                            shared.answers[trigger.index()][1].increment(1);
                            tracing::warn!(name = %shared.name, trigger = trigger.label(), error = %fallback, "the fallback failed");
                            Err(Box::new(FallbackFailed {
                                trigger,
                                original: original.take(),
                                fallback,
                            }))
                        }
                    });
                }
            }
        }
    }
}
