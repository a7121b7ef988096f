//! Shared helpers for the floodwall benchmarks (and, later, the overload lab).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use tower::Service;

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
