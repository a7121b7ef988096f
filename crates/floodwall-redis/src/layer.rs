//! The Tower adapter.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_admit::gate::{Gate, Gated, Open};
use floodwall_core::BoxError;
use floodwall_ratelimit::{One, Weigh};
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::Plan;
use crate::{Key, RedisLimiter, Source, error};

/// A Tower layer that rate-limits requests with a [`RedisLimiter`], keyed
/// by `extract(&request)` (a request for which it returns `None` is not
/// limited by this layer).
///
/// # Clone
/// Every service the layer builds, and every clone of those, shares the
/// limiter (an `Arc`). Instances share the limit through Redis.
///
/// # Shedding
/// Readiness is the inner service's. The decision is made after `call`:
/// at once from leased tokens, the breaker or the fallback, otherwise
/// after one Redis round trip (bounded by the limiter's timeout). A refused
/// request fails with a [`Rejected`](floodwall_core::Rejected) holding a
/// [`RateLimited`](error::RateLimited),
/// [`ExceedsBurst`](error::ExceedsBurst) or
/// [`LimiterUnavailable`](error::LimiterUnavailable).
pub struct RedisRateLimitLayer<K: Key, X, W = One> {
    limiter: RedisLimiter<K>,
    shared: Arc<(X, W)>,
}

impl<K: Key, X> RedisRateLimitLayer<K, X, One> {
    /// A layer limiting each request under the key `extract` returns.
    ///
    /// ```no_run
    /// use std::net::IpAddr;
    /// use floodwall_redis::{RedisConnection, RedisLimiter, RedisRateLimitLayer};
    /// use floodwall_ratelimit::Quota;
    /// use tower::{ServiceBuilder, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = RedisConnection::open("redis://127.0.0.1:6379/")?;
    /// let per_ip = RedisLimiter::builder(client, Quota::per_second(50)?).name("per-ip").build::<IpAddr>()?;
    /// let svc = ServiceBuilder::new()
    ///     .layer(RedisRateLimitLayer::new(per_ip, |ip: &IpAddr| Some(*ip)))
    ///     .service(service_fn(|_: IpAddr| async { Ok::<_, floodwall_core::BoxError>("ok") }));
    /// # let _ = svc;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(limiter: RedisLimiter<K>, extract: X) -> Self {
        Self {
            limiter,
            shared: Arc::new((extract, One)),
        }
    }
}

impl<K: Key, X, W> RedisRateLimitLayer<K, X, W> {
    /// Charges each request `weigh(&request)` tokens instead of one.
    pub fn weigh<W2>(self, weigh: W2) -> RedisRateLimitLayer<K, X, W2>
    where
        X: Clone,
    {
        RedisRateLimitLayer {
            limiter: self.limiter,
            shared: Arc::new((self.shared.0.clone(), weigh)),
        }
    }

    /// The shared limiter: its health, stats and breaker.
    pub fn limiter(&self) -> &RedisLimiter<K> {
        &self.limiter
    }
}

impl<K: Key, X, W> Clone for RedisRateLimitLayer<K, X, W> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K: Key, X, W> fmt::Debug for RedisRateLimitLayer<K, X, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K: Key, X, W> Layer<S> for RedisRateLimitLayer<K, X, W> {
    type Service = RedisRateLimit<S, K, X, W>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            limiter: self.limiter.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// A service rate-limited through Redis; built by [`RedisRateLimitLayer`].
///
/// The inner service must be `Clone`: a request that waits for Redis takes
/// the ready service with it and leaves a clone behind.
pub struct RedisRateLimit<S, K: Key, X, W = One> {
    inner: S,
    limiter: RedisLimiter<K>,
    shared: Arc<(X, W)>,
}

impl<S, K: Key, X, W> RedisRateLimit<S, K, X, W> {
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

impl<S: Clone, K: Key, X, W> Clone for RedisRateLimit<S, K, X, W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K: Key, X, W> fmt::Debug for RedisRateLimit<S, K, X, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K, X, W, Req> Service<Req> for RedisRateLimit<S, K, X, W>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Key,
    X: Fn(&Req) -> Option<K>,
    W: Weigh<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (extract, weigh) = &*self.shared;
        let Some(key) = extract(&req) else {
            return Gated::running(self.inner.call(req), ());
        };
        let n = weigh.weigh(&req);
        match self.limiter.plan(key, n, floodwall_core::clock::now()) {
            Plan::Decided(Ok(_)) => Gated::running(self.inner.call(req), ()),
            Plan::Decided(Err(refusal)) => {
                Gated::rejected(error::boxed(refusal, &self.limiter.policy()))
            }
            Plan::Later(later) => {
                // The ready service goes with the request; a clone stays.
                let svc = floodwall_core::service::take_ready(&mut self.inner);
                let policy = self.limiter.policy();
                Gated::waiting(Box::pin(RedisCheck {
                    check: Box::pin(async move {
                        later.run().await.map_err(|r| error::boxed(r, &policy))
                    }),
                    svc: Some(svc),
                    req: Some(req),
                }))
            }
        }
    }
}

type Check = Pin<Box<dyn Future<Output = Result<Source, BoxError>> + Send>>;

/// The response future of [`RedisRateLimit`]: a ready rejection, a Redis
/// round trip followed by the inner call, or the inner call.
///
/// Dropping it during the round trip abandons the decision: the breaker's
/// probe slot and the lease claim are given back and the inner service is
/// never called.
pub type ResponseFuture<S, Req> = Gated<Pin<Box<RedisCheck<S, Req>>>>;

/// A request waiting for Redis's answer; it owns the (ready) service and
/// the request until then.
pub struct RedisCheck<S, Req> {
    check: Check,
    svc: Option<S>,
    req: Option<Req>,
}

impl<S, Req> Unpin for RedisCheck<S, Req> {}

impl<S, Req> Gate for RedisCheck<S, Req>
where
    S: Service<Req>,
{
    type Future = S::Future;
    type Hold = ();

    fn poll_open(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self> {
        let this = self.get_mut();
        ready!(this.check.as_mut().poll(cx))?;
        let mut svc = this.svc.take().expect("polled after completion");
        let req = this.req.take().expect("polled after completion");
        Poll::Ready(Ok((svc.call(req), ())))
    }
}

impl<S, Req> fmt::Debug for RedisCheck<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCheck").finish_non_exhaustive()
    }
}
