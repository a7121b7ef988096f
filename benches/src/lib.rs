//! Shared helpers for the floodwall benchmarks, and the overload lab
//! ([`lab`]).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use tower::Service;

pub mod admit;
#[cfg(feature = "lab")]
pub mod lab;
pub mod proxy;

/// The criterion settings every floodwall bench uses: 0.5 s of warm-up and
/// 2 s of measurement per benchmark.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

/// A current-thread runtime with the time driver on: the benches enter it
/// so that layers can read tokio's clock and create timers.
///
/// # Panics
/// If the runtime cannot be built (the OS refuses a thread-local resource).
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

/// Answers every `http::Request` at once with an empty body and a
/// `content-type`, as every gRPC response and nearly every HTTP response
/// has (so the header map already exists, as in real servers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Respond;

impl<B> Service<http::Request<B>> for Respond {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let mut res = http::Response::new(());
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        std::future::ready(Ok(res))
    }
}

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
