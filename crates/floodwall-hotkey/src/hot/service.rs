//! The Tower half of the hot-key layer: the [`HotKey`] service a
//! [`HotKeyLayer`] builds, which counts, marks and limits each request,
//! and its response future [`HotKeyFuture`].

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_ratelimit::Denied;
use floodwall_ratelimit::error::RateLimited;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Hot, HotKeyLayer, Keyed, Shared};

impl<S, K, X> Layer<S> for HotKeyLayer<K, X> {
    type Service = HotKey<S, K, X>;

    fn layer(&self, inner: S) -> Self::Service {
        HotKey {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service a [`HotKeyLayer`] builds.
pub struct HotKey<S, K, X> {
    inner: S,
    shared: Arc<Shared<K>>,
    key: Arc<X>,
}

impl<S: Clone, K, X> Clone for HotKey<S, K, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, X> fmt::Debug for HotKey<S, K, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKey")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F },
        Refused { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`HotKey`]: the inner call, or a hot key's
    /// refusal ready at once.
    pub struct HotKeyFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> HotKeyFuture<F> {
    fn called(fut: F) -> Self {
        Self {
            state: State::Called { fut },
        }
    }

    fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for HotKeyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Called { .. } => "HotKeyFuture::Called",
            State::Refused { .. } => "HotKeyFuture::Refused",
        })
    }
}

impl<F, T, E> Future for HotKeyFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut } => fut.poll(cx).map_err(Into::into),
            StateProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after its end")))
            }
        }
    }
}

impl<S, B, K, X> Service<http::Request<B>> for HotKey<S, K, X>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&http::Request<B>) -> Option<K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HotKeyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let Some(key) = (self.key)(&req) else {
            shared.requests.admitted();
            return HotKeyFuture::called(self.inner.call(req));
        };
        let now = floodwall_core::clock::now();
        let estimate = shared.sketch.add(&key, now);
        let crossed = estimate >= shared.config.min_count && !shared.hot.read().contains(&key);
        shared.refresh_if_due(now, crossed);
        let hot = shared.hot.read().estimate(&key);
        if let Some(estimate) = hot {
            if let Some((limiter, policy)) = &shared.limiter
                && let Err(denied) = limiter.try_acquire(&key, now, 1)
            {
                let retry_after = match denied {
                    Denied::RateLimited { retry_after } => retry_after,
                    _ => Duration::ZERO,
                };
                shared.requests.rejected(RejectKind::RateLimited);
                return HotKeyFuture::refused(Rejected::boxed(RateLimited::new(
                    retry_after,
                    policy.clone(),
                )));
            }
            shared.hot_requests.increment(1);
            req.extensions_mut().insert(Hot {
                key: key.clone(),
                estimate,
            });
        }
        req.extensions_mut().insert(Keyed(key));
        shared.requests.admitted();
        HotKeyFuture::called(self.inner.call(req))
    }
}
