//! Where a [`FallbackLayer`]'s answer comes from: the [`Fallback`] trait
//! and its three sources, a fixed answer ([`value`]), a function of the
//! request and the cause ([`from_fn`]) and another service ([`service`]).

use std::future::Future;
use std::pin::Pin;

use floodwall_core::BoxError;
use tower_service::Service;

use super::Cause;
#[cfg(doc)]
use super::FallbackLayer;

/// The future a [`Fallback`] answers with.
pub type FallbackFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

/// Where a fallback answer comes from: [`value`], [`from_fn`] or
/// [`service`].
pub trait Fallback<Req, R>: Send + Sync + 'static {
    /// What is kept of each request until the call's end, for the fallback
    /// (nothing for a fixed answer; a clone of the request otherwise).
    type Kept: Send + 'static;

    /// Keeps what the fallback needs of `req`, before the call.
    fn keep(&self, req: &Req) -> Self::Kept;

    /// The fallback answer for a call that failed with `cause`.
    fn answer(&self, kept: Self::Kept, cause: &Cause<R>) -> FallbackFuture<R>;
}

/// A fixed answer, cloned: [`value`].
#[derive(Debug, Clone)]
pub struct Value<R>(R);

/// Falls back to a clone of `response`.
pub fn value<R: Clone + Send + Sync + 'static>(response: R) -> Value<R> {
    Value(response)
}

impl<Req, R: Clone + Send + Sync + 'static> Fallback<Req, R> for Value<R> {
    type Kept = ();

    fn keep(&self, _: &Req) {}

    fn answer(&self, (): (), _: &Cause<R>) -> FallbackFuture<R> {
        let r = self.0.clone();
        Box::pin(async move { Ok(r) })
    }
}

/// A function of the request and the cause: [`from_fn`].
#[derive(Debug, Clone)]
pub struct FromFn<F>(F);

/// Falls back to `f(request, cause)`; requests are cloned before each call
/// (they must be `Clone`).
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn(f)
}

impl<Req, R, F> Fallback<Req, R> for FromFn<F>
where
    Req: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(Req, &Cause<R>) -> Result<R, BoxError> + Send + Sync + 'static,
{
    type Kept = Req;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, req: Req, cause: &Cause<R>) -> FallbackFuture<R> {
        let answer = (self.0)(req, cause);
        Box::pin(async move { answer })
    }
}

/// Another service: [`service`].
#[derive(Debug, Clone)]
pub struct ServiceFallback<S>(S);

/// Falls back to calling `backup` with a clone of the request (requests
/// must be `Clone`).
pub fn service<S>(backup: S) -> ServiceFallback<S> {
    ServiceFallback(backup)
}

impl<Req, S> Fallback<Req, S::Response> for ServiceFallback<S>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    type Kept = Req;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, req: Req, _: &Cause<S::Response>) -> FallbackFuture<S::Response> {
        let mut backup = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| backup.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            backup.call(req).await.map_err(Into::into)
        })
    }
}
