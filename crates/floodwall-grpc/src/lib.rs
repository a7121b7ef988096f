//! floodwall rejections as gRPC statuses.
//!
//! | [`RejectKind`] | gRPC code |
//! |---|---|
//! | `RateLimited` | `RESOURCE_EXHAUSTED` |
//! | `Overloaded`, `Throttled`, `CircuitOpen`, `Prioritized` | `UNAVAILABLE` |
//! | `DeadlineExceeded` | `DEADLINE_EXCEEDED` (never `CANCELLED`) |
//!
//! When the rejection knows how long to wait, the status carries
//! `grpc-retry-pushback-ms` (milliseconds, rounded up), which gRPC clients
//! with retry policies honour (gRPC proposal A6).
//!
//! - [`status_for`]: the `tonic::Status` for a rejection.
//! - [`GrpcRejectionLayer`]: for servers. Wraps an HTTP-level service (as
//!   tonic's `Server::layer` sees it) and answers rejections with a
//!   trailers-only gRPC response.
//! - [`StatusErrorLayer`]: for clients. Wraps a channel-level service and
//!   turns rejections into a boxed `tonic::Status` error, which tonic's
//!   generated clients hand back as is.
//!
//! Errors that are not floodwall rejections pass through untouched.
//!
//! ```
//! use floodwall_core::BoxError;
//! use floodwall_grpc::GrpcRejectionLayer;
//! use floodwall_token_bucket::{Quota, TokenBucketLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(GrpcRejectionLayer::default())
//!     .layer(TokenBucketLayer::new(Quota::per_second(1)?)?)
//!     .service(service_fn(|_: http::Request<()>| async {
//!         Ok::<_, BoxError>(http::Response::new(()))
//!     }));
//! svc.clone().oneshot(http::Request::new(())).await?;
//! let res = svc.clone().oneshot(http::Request::new(())).await?;
//! assert_eq!(res.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED
//! assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1000");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::{BoxError, Classify, GrpcClassifier, Outcome, RejectKind, Rejected};
use floodwall_http::{RejectionLayer, RejectionService, Respond};
use pin_project_lite::pin_project;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// The metadata key gRPC clients read for server pushback (proposal A6).
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// The gRPC code for a rejection kind.
pub fn code_for(kind: RejectKind) -> Code {
    match kind {
        RejectKind::RateLimited => Code::ResourceExhausted,
        RejectKind::DeadlineExceeded => Code::DeadlineExceeded,
        _ => Code::Unavailable,
    }
}

/// Milliseconds for `grpc-retry-pushback-ms`, rounded up.
pub fn pushback_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The status for a rejection: its code, the rejection's message, and
/// `grpc-retry-pushback-ms` when a wait is known, or `-1` (do not retry)
/// when retrying can never succeed.
pub fn status_for(rejection: &Rejected) -> Status {
    let message = match std::error::Error::source(rejection) {
        Some(inner) => inner.to_string(),
        None => rejection.to_string(),
    };
    let mut status = Status::new(code_for(rejection.kind()), message);
    if let Some(level) = rejection.admission_level()
        && let Ok(v) = MetadataValue::try_from(level.to_string())
    {
        status
            .metadata_mut()
            .insert(floodwall_core::wire::ADMISSION_LEVEL_HEADER, v);
    }
    if rejection.is_permanent() {
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK_MS, MetadataValue::from(-1i64));
    } else if let Some(wait) = rejection.retry_after() {
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK_MS, MetadataValue::from(pushback_ms(wait)));
    }
    status
}

/// Turns a service error into a status if it is a floodwall rejection,
/// keeping the rejection as the status's source; otherwise returns the error.
fn into_status(err: BoxError) -> Result<Status, BoxError> {
    let Some(rejection) = Rejected::find(&*err) else {
        return Err(err);
    };
    let mut status = status_for(rejection);
    status.set_source(Arc::from(err));
    Ok(status)
}

/// Answers a rejection with a trailers-only gRPC response: HTTP 200,
/// `content-type: application/grpc`, `grpc-status`, `grpc-message` and the
/// pushback metadata of [`status_for`], and an empty body.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcResponder;

impl<B: Default> Respond<B> for GrpcResponder {
    fn respond(&self, rejection: &Rejected) -> http::Response<B> {
        status_for(rejection).into_http()
    }
}

/// A server-side layer answering floodwall rejections with trailers-only
/// gRPC responses: `floodwall-http`'s [`RejectionLayer`] with the
/// [`GrpcResponder`]. Build it with `GrpcRejectionLayer::default()`.
pub type GrpcRejectionLayer = RejectionLayer<GrpcResponder>;

/// The service built by [`GrpcRejectionLayer`].
pub type GrpcRejection<S> = RejectionService<S, GrpcResponder>;

/// A client-side layer turning floodwall rejections into boxed
/// `tonic::Status` errors (tonic's generated clients return a `Status` found
/// in the error unchanged, instead of `UNKNOWN`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusErrorLayer {
    _priv: (),
}

impl StatusErrorLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for StatusErrorLayer {
    type Service = StatusError<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusError { inner }
    }
}

/// Built by [`StatusErrorLayer`].
#[derive(Debug, Clone)]
pub struct StatusError<S> {
    inner: S,
}

impl<S> StatusError<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for StatusError<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = StatusErrorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        StatusErrorFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`StatusError`].
    pub struct StatusErrorFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, T, E> Future for StatusErrorFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx));
        Poll::Ready(res.map_err(|err| match into_status(err.into()) {
            Ok(status) => Box::new(status) as BoxError,
            Err(err) => err,
        }))
    }
}

impl<F> fmt::Debug for StatusErrorFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusErrorFuture").finish_non_exhaustive()
    }
}

/// Whether `err` is tonic running out of time: its client-side
/// [`tonic::TimeoutExpired`] (a `grpc-timeout` enforced by the channel) or a
/// [`Status`] with code `DEADLINE_EXCEEDED`, anywhere in the source chain.
pub fn is_tonic_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        if let Some(status) = e.downcast_ref::<Status>() {
            return status.code() == Code::DeadlineExceeded;
        }
        cur = e.source();
    }
    false
}

/// A classifier for calls made through a tonic channel: `C` (by default
/// [`GrpcClassifier`]) reads answers, and errors that are tonic running out
/// of time ([`is_tonic_timeout`]) are [`Outcome::TimedOut`], so that
/// floodwall's outcome rule ([`floodwall_core::outcome`]) can tell a
/// caller's short deadline from a dependency that hangs. Without it, the
/// channel's own `grpc-timeout` enforcement reaches the breaker as a plain
/// transport failure.
///
/// ```
/// use floodwall_core::{BoxError, Classify, Outcome};
/// use floodwall_grpc::TonicClassifier;
///
/// let timeout: BoxError = Box::new(tonic::TimeoutExpired(()));
/// let classify: TonicClassifier = TonicClassifier::default();
/// let read = |r: Result<&http::Response<()>, &BoxError>| classify.classify(r);
/// assert_eq!(read(Err(&timeout)), Outcome::TimedOut);
/// let reset: BoxError = "connection reset".into();
/// assert_eq!(read(Err(&reset)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TonicClassifier<C = GrpcClassifier>(pub C);

impl<B, C> Classify<http::Response<B>, BoxError> for TonicClassifier<C>
where
    C: Classify<http::Response<B>, BoxError>,
{
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match result {
            Err(e) if is_tonic_timeout(&**e) => Outcome::TimedOut,
            other => self.0.classify(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodwall_core::testing::StubRejection;

    #[test]
    fn permanent_rejections_say_do_not_retry() {
        let status = status_for(&Rejected::new(
            StubRejection::new(RejectKind::RateLimited).permanent(),
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "-1");
    }
    #[test]
    fn codes() {
        use RejectKind::*;
        let cases = [
            (RateLimited, Code::ResourceExhausted),
            (Overloaded, Code::Unavailable),
            (Throttled, Code::Unavailable),
            (CircuitOpen, Code::Unavailable),
            (Prioritized, Code::Unavailable),
            (DeadlineExceeded, Code::DeadlineExceeded),
        ];
        for (kind, code) in cases {
            let status = status_for(&Rejected::new(StubRejection::new(kind)));
            assert_eq!(status.code(), code, "{kind:?}");
            assert!(status.metadata().get(RETRY_PUSHBACK_MS).is_none());
        }
    }

    #[test]
    fn pushback_rounds_up() {
        assert_eq!(pushback_ms(Duration::from_nanos(1)), 1);
        assert_eq!(pushback_ms(Duration::from_millis(250)), 250);
        assert_eq!(pushback_ms(Duration::from_micros(250_001)), 251);
        let status = status_for(&Rejected::new(
            StubRejection::new(RejectKind::Overloaded).retry_after(Duration::from_micros(1500)),
        ));
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "2");
        assert_eq!(status.message(), "stub overloaded");
    }

    #[test]
    fn non_rejections_pass_through() {
        let err: BoxError = Box::new(std::io::Error::other("reset"));
        let err = into_status(err).unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn the_status_keeps_the_rejection_as_source() {
        let status =
            into_status(Rejected::boxed(StubRejection::new(RejectKind::Throttled))).unwrap();
        let source = std::error::Error::source(&status).unwrap();
        assert!(Rejected::find(source).is_some());
    }
}
