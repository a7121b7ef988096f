//! Shared helpers for the floodwall benchmarks, and the overload lab
//! ([`lab`]).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use tower::Service;

pub mod lab;

/// A service that is always ready and answers at once: the baseline a
/// layer's overhead is measured against.
#[derive(Debug, Clone, Default)]
pub struct ReadyService;

impl<Req> Service<Req> for ReadyService {
    type Response = Req;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Req, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        std::future::ready(Ok(req))
    }
}

/// Polls a future that must complete on its first poll.
///
/// # Panics
/// If the future is pending: every service benchmarked this way answers at
/// once, so a pending future means the benchmark is wrong.
#[inline]
pub fn poll_once<F: Future>(cx: &mut Context<'_>, fut: F) -> F::Output {
    match pin!(fut).poll(cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("benchmarked future was pending"),
    }
}

/// Drives one request through a service that is already built, the way a
/// connection's service is driven request after request (hyper keeps one
/// service per connection): `poll_ready`, then `call`, then one poll of the
/// response future. No clone, so only the layer's own per-request work is
/// measured.
///
/// # Panics
/// If the service is not ready at once, or its future is pending.
#[inline]
pub fn ready_call<S: Service<Req>, Req>(
    cx: &mut Context<'_>,
    service: &mut S,
    req: Req,
) -> Result<S::Response, S::Error> {
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => poll_once(cx, service.call(req)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => panic!("benchmarked service was not ready"),
    }
}

/// Benchmarks one already-built service both ways, as
/// `{name}/clone+oneshot` (a clone per request, as the other tables) and
/// `{name}/ready+call` (driven in place, see [`ready_call`]), with `u32`
/// requests.
///
/// # Panics
/// If the service fails, is not ready at once, or its future is pending.
pub fn both_ways<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    cx: &mut Context<'_>,
    name: &str,
    mut service: S,
) where
    S: Service<u32> + Clone,
    S::Error: std::fmt::Debug,
{
    g.bench_function(format!("{name}/clone+oneshot"), |b| {
        b.iter(|| {
            poll_once(
                cx,
                tower::ServiceExt::oneshot(service.clone(), std::hint::black_box(1u32)),
            )
            .unwrap()
        })
    });
    g.bench_function(format!("{name}/ready+call"), |b| {
        b.iter(|| ready_call(cx, &mut service, std::hint::black_box(1u32)).unwrap())
    });
}
