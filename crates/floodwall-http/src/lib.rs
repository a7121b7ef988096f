//! floodwall rejections as HTTP responses.
//!
//! Any floodwall layer refuses a request by returning a
//! [`Rejected`] error. [`HttpRejectionLayer`] turns
//! such errors into responses, the way tower-http turns a timeout into a
//! status code instead of an error:
//!
//! | [`RejectKind`] | status |
//! |---|---|
//! | `RateLimited` | 429 Too Many Requests |
//! | `Overloaded`, `Throttled`, `CircuitOpen`, `Prioritized` | 503 Service Unavailable |
//! | `DeadlineExceeded` | 504 Gateway Timeout |
//!
//! with `Retry-After` in whole seconds rounded up (never `0` while any wait
//! remains), and for rate limiters the `RateLimit-Policy` and `RateLimit`
//! fields of draft-ietf-httpapi-ratelimit-headers
//! (`RateLimit-Policy: "api";q=100;w=1`, `RateLimit: "api";r=0;t=1`).
//! Errors of the inner service are not rejections and pass through untouched.
//! A rejection that can never succeed on retry (such as a request above a
//! token bucket's burst) gets no `Retry-After`.
//!
//! The layer finds a rejection anywhere in an error's source chain, so one
//! wrapped by another layer (tower's `Buffer`, say) is still answered. That
//! includes a rejection your handler got from an outbound floodwall layer
//! and returned as its own error: the caller then sees it as this service's
//! 429/503. Map such errors in the handler if that is not what you want.
//!
//! ```
//! use floodwall_http::HttpRejectionLayer;
//! use floodwall_token_bucket::{Quota, TokenBucketLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # use floodwall_core::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(HttpRejectionLayer::new())
//!     .layer(TokenBucketLayer::builder(Quota::per_second(1)?).name("api").build()?)
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, BoxError>(Response::new(String::from("hello")))
//!     }));
//!
//! let ok = svc.clone().oneshot(Request::new(())).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//!
//! let limited = svc.clone().oneshot(Request::new(())).await?;
//! assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(limited.headers()["retry-after"], "1");
//! assert_eq!(limited.headers()["ratelimit-policy"], "\"api\";q=1;w=1");
//! assert_eq!(limited.headers()["ratelimit"], "\"api\";r=0;t=1");
//! # Ok(())
//! # }
//! ```
//!
//! With axum, whose routes must not fail, put axum's `HandleErrorLayer`
//! outside this layer to answer the inner service's own errors.
#![forbid(unsafe_code)]

pub mod answer;
pub mod client_ip;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The `RateLimit-Policy` header field name.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header field name.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The header carrying a server's admission level
/// ([`floodwall_core::wire::ADMISSION_LEVEL_HEADER`]).
pub static ADMISSION_LEVEL: HeaderName =
    HeaderName::from_static(floodwall_core::wire::ADMISSION_LEVEL_HEADER);

/// The HTTP status for a rejection kind.
pub fn status_for(kind: RejectKind) -> StatusCode {
    match kind {
        RejectKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        RejectKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whole seconds for `Retry-After`: rounded up, so a wait of 1 ns is `1`;
/// `0` only when no wait remains at all.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
}

/// The response for a rejection: its status, `Retry-After`, the rate-limit
/// fields where they apply, and an empty (default) body.
pub fn response_for<B: Default>(rejection: &Rejected) -> Response<B> {
    let mut res = Response::new(B::default());
    *res.status_mut() = status_for(rejection.kind());
    insert_headers(rejection, res.headers_mut());
    res
}

/// Adds `Retry-After`; for rate limiters, `RateLimit-Policy` and
/// `RateLimit`; for priority admission, the server's admission level
/// ([`floodwall_core::wire::ADMISSION_LEVEL_HEADER`]).
pub fn insert_headers(rejection: &Rejected, headers: &mut HeaderMap) {
    if let Some(level) = rejection.admission_level() {
        headers.insert(ADMISSION_LEVEL.clone(), level.header_value());
    }
    let retry_after = if rejection.is_permanent() {
        None
    } else {
        rejection.retry_after().map(retry_after_secs)
    };
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(policy) = rejection.rate_limit() {
        let name = sf_string(policy.name());
        let window = retry_after_secs(policy.window()).max(1);
        let value = format!("{name};q={};w={window}", policy.quota());
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(RATELIMIT_POLICY.clone(), v);
        }
        let value = match retry_after {
            Some(t) => format!("{name};r=0;t={t}"),
            None => format!("{name};r=0"),
        };
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(RATELIMIT.clone(), v);
        }
    }
}

/// A structured-field string (RFC 8941 §3.3.3): quoted, with `"` and `\`
/// escaped and anything outside printable ASCII replaced by `_`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// How a rejection becomes a response with body `B`.
///
/// [`HttpResponder`] is this crate's (status, `Retry-After`, rate-limit
/// fields); `floodwall-grpc` supplies one that answers with a gRPC status.
/// Implement it to render rejections your own way (a JSON problem body,
/// say) and keep the same layer.
pub trait Respond<B> {
    /// The response for `rejection`.
    fn respond(&self, rejection: &Rejected) -> Response<B>;
}

/// Answers with [`response_for`]: the status for the kind, `Retry-After`,
/// the rate-limit fields, and an empty (default) body.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpResponder;

impl<B: Default> Respond<B> for HttpResponder {
    fn respond(&self, rejection: &Rejected) -> Response<B> {
        response_for(rejection)
    }
}

/// A layer that answers floodwall rejections from the inner service with
/// responses made by a [`Respond`]er; other errors pass through.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionLayer<R = HttpResponder> {
    respond: R,
}

/// The layer answering rejections with HTTP responses ([`HttpResponder`]).
pub type HttpRejectionLayer = RejectionLayer<HttpResponder>;

impl RejectionLayer<HttpResponder> {
    /// The layer answering rejections with HTTP responses.
    pub const fn new() -> Self {
        Self {
            respond: HttpResponder,
        }
    }
}

impl<R> RejectionLayer<R> {
    /// A layer answering rejections with `respond`.
    pub const fn with(respond: R) -> Self {
        Self { respond }
    }
}

impl<S, R: Clone> Layer<S> for RejectionLayer<R> {
    type Service = RejectionService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionService::with(inner, self.respond.clone())
    }
}

/// A service that answers floodwall rejections from its inner service with
/// responses; built by [`RejectionLayer`].
#[derive(Debug, Clone)]
pub struct RejectionService<S, R = HttpResponder> {
    inner: S,
    respond: R,
}

/// The service answering rejections with HTTP responses.
pub type HttpRejection<S> = RejectionService<S, HttpResponder>;

impl<S> RejectionService<S, HttpResponder> {
    /// Wraps `inner`, answering rejections with HTTP responses.
    pub const fn new(inner: S) -> Self {
        Self::with(inner, HttpResponder)
    }
}

impl<S, R> RejectionService<S, R> {
    /// Wraps `inner`, answering rejections with `respond`.
    pub const fn with(inner: S, respond: R) -> Self {
        Self { inner, respond }
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

impl<S, R, Req, B> Service<Req> for RejectionService<S, R>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    R: Respond<B> + Clone,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            respond: self.respond.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`RejectionService`].
    pub struct ResponseFuture<F, R> {
        #[pin]
        inner: F,
        respond: R,
    }
}

impl<F, R, B, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    R: Respond<B>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll(cx)) {
            Ok(res) => Ok(res),
            Err(err) => {
                let err = err.into();
                match Rejected::find(&*err) {
                    Some(rejection) => Ok(this.respond.respond(rejection)),
                    None => Err(err),
                }
            }
        })
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodwall_core::RateLimitPolicy;
    use floodwall_core::testing::StubRejection;
    use std::sync::Arc;

    fn respond(kind: RejectKind, wait: Option<Duration>) -> Response<()> {
        let stub = StubRejection::new(kind);
        response_for(&Rejected::new(match wait {
            Some(wait) => stub.retry_after(wait),
            None => stub,
        }))
    }

    #[test]
    fn statuses() {
        use RejectKind::*;
        let cases = [
            (RateLimited, 429),
            (Overloaded, 503),
            (Throttled, 503),
            (CircuitOpen, 503),
            (Prioritized, 503),
            (DeadlineExceeded, 504),
        ];
        for (kind, status) in cases {
            assert_eq!(respond(kind, None).status().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero_while_waiting() {
        let secs = |d| respond(RejectKind::Overloaded, Some(d)).headers()[RETRY_AFTER].clone();
        assert_eq!(secs(Duration::from_nanos(1)), "1");
        assert_eq!(secs(Duration::from_millis(999)), "1");
        assert_eq!(secs(Duration::from_secs(1)), "1");
        assert_eq!(secs(Duration::from_millis(1001)), "2");
        assert_eq!(secs(Duration::from_secs(120)), "120");
        assert_eq!(secs(Duration::ZERO), "0", "only when nothing remains");
        assert_eq!(
            secs(Duration::MAX),
            u64::MAX.to_string().as_str(),
            "saturates, never wraps to 0"
        );
        let none = respond(RejectKind::Overloaded, None);
        assert!(none.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn ratelimit_fields() {
        let policy = Arc::new(RateLimitPolicy::new("per-ip", 100, Duration::from_secs(60)));
        let r = Rejected::new(
            StubRejection::new(RejectKind::RateLimited)
                .retry_after(Duration::from_millis(1500))
                .policy(policy.clone()),
        );
        let res: Response<()> = response_for(&r);
        assert_eq!(res.headers()[&RATELIMIT_POLICY], "\"per-ip\";q=100;w=60");
        assert_eq!(res.headers()[&RATELIMIT], "\"per-ip\";r=0;t=2");
        let never = Rejected::new(StubRejection::new(RejectKind::RateLimited).policy(policy));
        let res: Response<()> = response_for(&never);
        assert_eq!(res.headers()[&RATELIMIT], "\"per-ip\";r=0");
        assert!(res.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn policy_names_are_escaped() {
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("zü\n"), "\"z__\"");
        let policy = Arc::new(RateLimitPolicy::new("x\"y", 5, Duration::from_millis(500)));
        let r = Rejected::new(StubRejection::new(RejectKind::RateLimited).policy(policy));
        let res: Response<()> = response_for(&r);
        assert_eq!(res.headers()[&RATELIMIT_POLICY], "\"x\\\"y\";q=5;w=1");
    }
}
