use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::{BoxError, RejectKind, Rejected, clock};
use tower_service::Service;

use crate::error::{ExceedsBurst, RateLimited};
use floodwall_admit::gate::Gated;

use crate::future::{RefundGuard, ResponseFuture, WaitTurn};
use crate::layer::Shared;
use crate::{Denied, Limiter, One, Weigh};

/// A service rate-limited by a [`Limiter`]; built by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Readiness is the inner service's; the decision is made in `call`. A
/// refused request gets a ready error future carrying a
/// [`Rejected`] with a [`RateLimited`] or [`ExceedsBurst`] inside.
///
/// The inner service must be `Clone` (in wait mode a waiting request calls
/// a clone of it after the wait); services from hyper, tonic, axum and
/// `tower::service_fn` are.
///
/// # Clone
/// Clones share the layer's limiter (they clone an `Arc`).
pub struct RateLimit<S, L, W = One> {
    inner: S,
    shared: Arc<Shared<L, W>>,
}

impl<S, L, W> RateLimit<S, L, W> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<L, W>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, L, W, Req> Service<Req> for RateLimit<S, L, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    L: Limiter<Req>,
    W: Weigh<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, L, W>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The call chain's instant when an outer layer read the clock.
        let now = clock::now();
        let shared = &*self.shared;
        let n = shared.weigh.weigh(&req);
        if shared.max_wait.is_zero() {
            return match shared.limiter.acquire(&req, now, n) {
                Ok(()) => {
                    shared.metrics.requests.admitted();
                    let _chain = clock::enter(now);
                    Gated::running(self.inner.call(req), ())
                }
                Err(denied) => Gated::rejected(self.reject(denied)),
            };
        }
        match shared.limiter.reserve(&req, now, n, shared.max_wait) {
            Ok((wait, _)) if wait.is_zero() => {
                shared.metrics.requests.admitted();
                let _chain = clock::enter(now);
                Gated::running(self.inner.call(req), ())
            }
            Ok((wait, permit)) => {
                tracing::trace!(
                    name = %shared.name,
                    ?wait,
                    "rate limit: request waits for its turn"
                );
                // The waiter gets its own clone and polls it ready after the
                // wait. The instance polled ready for this call is dropped
                // (left behind is an unpolled clone), so no readiness
                // reservation of the inner service, such as a concurrency
                // permit, is held while the request sleeps.
                let waiter = self.inner.clone();
                drop(std::mem::replace(&mut self.inner, waiter.clone()));
                let guard = RefundGuard::new(self.shared.clone(), permit);
                Gated::waiting(WaitTurn::boxed(now + wait, waiter, req, guard))
            }
            Err(denied) => Gated::rejected(self.reject(denied)),
        }
    }
}

impl<S, L, W> RateLimit<S, L, W> {
    #[cold]
    fn reject(&self, denied: Denied) -> BoxError {
        let shared = &self.shared;
        let policy = shared.policy();
        match denied {
            Denied::RateLimited { retry_after } => {
                shared.metrics.requests.rejected(RejectKind::RateLimited);
                tracing::debug!(
                    name = %shared.name,
                    ?retry_after,
                    "rate limit: refused"
                );
                Rejected::boxed(RateLimited::new(retry_after, policy))
            }
            Denied::ExceedsBurst { requested, burst } => {
                shared.metrics.requests.rejected(RejectKind::RateLimited);
                tracing::debug!(
                    name = %shared.name,
                    requested,
                    burst,
                    "rate limit: exceeds burst"
                );
                Rejected::boxed(ExceedsBurst::new(requested, burst, policy))
            }
        }
    }
}

impl<S: Clone, L, W> Clone for RateLimit<S, L, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, L: fmt::Debug, W> fmt::Debug for RateLimit<S, L, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("limiter", &self.shared.limiter)
            .finish()
    }
}
