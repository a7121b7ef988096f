//! The service: readiness forwarded, the decision in `call`.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::BoxError;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::{Admit, Guard, Read};

/// The service an admission-style layer builds: it reports the inner
/// service's readiness, decides in `call` (a refused request fails at once
/// and never reaches the inner service), and holds the permit of an admitted
/// request until its response future finishes or is dropped.
///
/// Errors of the inner service pass through untouched (boxed).
///
/// # Clone
/// The policy lives in an `Arc`: every clone shares it.
pub struct Guarded<S, P> {
    inner: S,
    policy: Arc<P>,
}

impl<S, P> Guarded<S, P> {
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

    /// The policy.
    pub fn policy(&self) -> &Arc<P> {
        &self.policy
    }
}

impl<S: Clone, P> Clone for Guarded<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for Guarded<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, P, Req> Service<Req> for Guarded<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Admit<Req> + Read<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        match self.policy.admit(&mut req) {
            Ok(permit) => {
                // The guard first: if the inner call panics, the permit
                // still comes back.
                let guard = Guard::new(self.policy.clone(), permit);
                ResponseFuture::called(self.inner.call(req), guard)
            }
            Err(error) => ResponseFuture::refused(error),
        }
    }
}
