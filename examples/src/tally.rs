//! A small layer that counts outcomes by kind: successes, each kind of
//! floodwall rejection, and other errors. The room service and gateway use
//! it for their live state; the demo reads it for its report.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use floodwall::core::{BoxError, RejectKind, Rejected};
use serde::Serialize;

/// Outcome counters, one atomic each.
#[derive(Debug, Default)]
pub struct Tally {
    ok: AtomicU64,
    rejected: [AtomicU64; 6],
    failed: AtomicU64,
}

/// A copy of a [`Tally`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TallySnapshot {
    /// Responses that were not refusals or errors (gRPC status OK, or HTTP
    /// below 500 without a rejection reason).
    pub ok: u64,
    /// Rejected by a rate limiter.
    pub rate_limited: u64,
    /// Shed by an admission queue.
    pub overloaded: u64,
    /// Refused by an open circuit breaker.
    pub circuit_open: u64,
    /// Dropped by adaptive throttling.
    pub throttled: u64,
    /// Refused or stopped at the deadline.
    pub deadline_exceeded: u64,
    /// Dropped by priority admission.
    pub prioritized: u64,
    /// Other errors (the handler's own failures).
    pub failed: u64,
}

const KINDS: [RejectKind; 6] = RejectKind::ALL;

fn slot(kind: RejectKind) -> usize {
    KINDS.iter().position(|&k| k == kind).unwrap_or(0)
}

impl Tally {
    /// Counts one success.
    pub fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one rejection of `kind`.
    pub fn rejected(&self, kind: RejectKind) {
        self.rejected[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one other failure.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> TallySnapshot {
        let r = |k: RejectKind| self.rejected[slot(k)].load(Ordering::Relaxed);
        TallySnapshot {
            ok: self.ok.load(Ordering::Relaxed),
            rate_limited: r(RejectKind::RateLimited),
            overloaded: r(RejectKind::Overloaded),
            circuit_open: r(RejectKind::CircuitOpen),
            throttled: r(RejectKind::Throttled),
            deadline_exceeded: r(RejectKind::DeadlineExceeded),
            prioritized: r(RejectKind::Prioritized),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for TallySnapshot {
    type Output = TallySnapshot;

    fn sub(self, o: Self) -> Self {
        TallySnapshot {
            ok: self.ok - o.ok,
            rate_limited: self.rate_limited - o.rate_limited,
            overloaded: self.overloaded - o.overloaded,
            circuit_open: self.circuit_open - o.circuit_open,
            throttled: self.throttled - o.throttled,
            deadline_exceeded: self.deadline_exceeded - o.deadline_exceeded,
            prioritized: self.prioritized - o.prioritized,
            failed: self.failed - o.failed,
        }
    }
}

/// Counts what the inner service answers: floodwall rejections by kind;
/// responses by their gRPC status (trailers-only responses carry it in the
/// headers) or, for HTTP, 5xx as failures.
#[derive(Debug, Clone)]
pub struct TallyLayer {
    tally: Arc<Tally>,
}

impl TallyLayer {
    /// A layer counting into `tally`.
    pub fn new(tally: Arc<Tally>) -> Self {
        Self { tally }
    }
}

impl<S> tower::Layer<S> for TallyLayer {
    type Service = TallyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TallyService {
            tally: self.tally.clone(),
            inner,
        }
    }
}

/// Built by [`TallyLayer`].
#[derive(Debug, Clone)]
pub struct TallyService<S> {
    tally: Arc<Tally>,
    inner: S,
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let v = floodwall::core::wire::find_header(headers, &GRPC_STATUS)?
        .to_str()
        .ok()?;
    Some(tonic::Code::from_i32(v.parse().ok()?))
}

/// Counts one response into `tally`: by the gateway's reason header when
/// it names a rejection kind, else by gRPC status, else by HTTP status.
pub fn count_response<B>(tally: &Tally, res: &http::Response<B>) {
    const REASON: http::HeaderName = http::HeaderName::from_static(crate::gateway::REASON_HEADER);
    let reason =
        floodwall::core::wire::find_header(res.headers(), &REASON).and_then(|v| v.to_str().ok());
    if let Some(kind) = KINDS.iter().find(|k| Some(k.as_str()) == reason) {
        tally.rejected(*kind);
        return;
    }
    match grpc_code(res.headers()) {
        Some(tonic::Code::Ok) => tally.ok(),
        Some(tonic::Code::DeadlineExceeded) => tally.rejected(RejectKind::DeadlineExceeded),
        Some(_) => tally.failed(),
        None if res.status().is_server_error() => tally.failed(),
        None => tally.ok(),
    }
}

impl<S, Req, B> tower::Service<Req> for TallyService<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let tally = self.tally.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    count_response(&tally, &res);
                    Ok(res)
                }
                Err(e) => {
                    let e: BoxError = e.into();
                    match Rejected::find(&*e) {
                        Some(r) => tally.rejected(r.kind()),
                        None => tally.failed(),
                    }
                    Err(e)
                }
            }
        })
    }
}
