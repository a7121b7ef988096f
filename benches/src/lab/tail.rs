//! Tail-latency scenarios (issue 28): hedging against a dependency with a
//! 1 % tail at 10× its median, hedging under overload with and without a
//! budget, and a thundering herd on one hot key through request
//! coalescing. floodwall next to tower's `Hedge` and tower-resilience's
//! hedge and coalesce, in the same run.
//!
//! The hedging scenarios run under Tokio's paused clock on one thread, so
//! they repeat exactly (the dependency's latencies come from a seeded
//! generator, drawn in call order). The herd runs in real time: the
//! tower-resilience coalesce's waiters re-poll themselves until the
//! leader answers, which never lets a paused clock move.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall::core::BoxError;
use floodwall::core::random::{Random, SplitMix};
use floodwall::tail::{CoalesceConfig, CoalesceLayer, HedgeConfig, HedgeDelay, HedgeLayer};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// The dependency's error: cloneable, as tower-resilience's hedge and
/// coalesce require.
#[derive(Debug, Clone)]
pub struct LabError;

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("lab dependency failed")
    }
}

impl std::error::Error for LabError {}

/// The hedging scenarios' parameters.
#[derive(Debug, Clone, Copy)]
pub struct HedgeLab {
    /// The dependency's median latency; each attempt takes a uniform draw
    /// in `[0.8, 1.2] × median`, or `10 × median` with probability `tail`.
    pub median: Duration,
    /// The share of attempts in the tail.
    pub tail: f64,
    /// Requests per scenario, one every `gap`.
    pub requests: usize,
    /// The time between requests (open loop).
    pub gap: Duration,
    /// Requests before this many are not measured (the percentile delays
    /// need a full period of latencies first).
    pub warm_up: usize,
    /// The percentile delays' period.
    pub period: Duration,
    /// The generator's seed.
    pub seed: u64,
}

impl Default for HedgeLab {
    fn default() -> Self {
        Self {
            // Tokio's timer counts whole milliseconds: a 100 ms median keeps
            // that rounding at 1 % of it.
            median: Duration::from_millis(100),
            tail: 0.01,
            requests: 20_000,
            gap: Duration::from_millis(1),
            warm_up: 3_000,
            period: Duration::from_secs(1),
            seed: 2026,
        }
    }
}

impl HedgeLab {
    /// The p95 of the dependency's latency distribution (the fixed delay
    /// given to the layers without a percentile): the 95th of 99 % uniform
    /// in `[0.8, 1.2] × median` plus 1 % at 10×.
    pub fn p95(&self) -> Duration {
        // P(latency ≤ x) = (1 − tail) · (x/m − 0.8) / 0.4 = 0.95.
        let x = 0.8 + 0.4 * 0.95 / (1.0 - self.tail);
        self.median.mul_f64(x)
    }
}

/// The dependency: a seeded latency per attempt, optionally `workers`
/// at a time (the rest queue, FIFO), counting its calls; uninterruptible
/// (an abandoned attempt still takes its worker for its whole time).
#[derive(Clone)]
pub struct Dependency {
    lab: HedgeLab,
    rng: Arc<SplitMix>,
    workers: Option<Arc<Semaphore>>,
    calls: Arc<AtomicU64>,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("lab", &self.lab)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl Dependency {
    /// A dependency for `lab`, with unbounded capacity or `workers` at a
    /// time.
    pub fn new(lab: HedgeLab, workers: Option<usize>) -> Self {
        Self {
            lab,
            rng: Arc::new(SplitMix::new(lab.seed)),
            workers: workers.map(|w| Arc::new(Semaphore::new(w))),
            calls: Arc::default(),
        }
    }

    /// Attempts made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<u64> for Dependency {
    type Response = u64;
    type Error = LabError;
    type Future = BoxFuture<Result<u64, LabError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LabError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let latency = if self.rng.next_f64() < self.lab.tail {
            self.lab.median * 10
        } else {
            self.lab.median.mul_f64(0.8 + 0.4 * self.rng.next_f64())
        };
        let Some(workers) = self.workers.clone() else {
            // Unbounded capacity: an abandoned attempt takes nobody's place.
            return Box::pin(async move {
                tokio::time::sleep(latency).await;
                Ok(req)
            });
        };
        // Bounded: the server is uninterruptible. An attempt its caller
        // drops (a hedge that lost) is still queued for and worked on, as a
        // real server that does not see the cancellation would.
        let work = tokio::spawn(async move {
            let _worker = workers.acquire_owned().await.expect("never closed");
            tokio::time::sleep(latency).await;
        });
        Box::pin(async move {
            work.await.map_err(|_| LabError)?;
            Ok(req)
        })
    }
}

/// tower's `Hedge` policy: every request may be hedged.
#[derive(Debug, Clone, Copy)]
pub struct HedgeAll;

impl tower::hedge::Policy<u64> for HedgeAll {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _: &u64) -> bool {
        true
    }
}

/// The stacks the hedging scenarios compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeStack {
    /// No hedging.
    None,
    /// floodwall, the delay the p95 of the last period, with its budget.
    FloodwallP95,
    /// floodwall, a fixed delay at the distribution's p95, with its budget.
    FloodwallFixed,
    /// tower's `Hedge` at the p95 of the last period (behind a `Buffer`:
    /// it is not `Clone`).
    TowerHedge,
    /// tower-resilience's hedge, a fixed delay at the distribution's p95
    /// (it has no percentile delay and no budget: naive hedging).
    ResilienceHedge,
}

impl HedgeStack {
    /// Every stack, in table order.
    pub const ALL: [HedgeStack; 5] = [
        Self::None,
        Self::FloodwallP95,
        Self::FloodwallFixed,
        Self::TowerHedge,
        Self::ResilienceHedge,
    ];

    /// The table label.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "no hedging",
            Self::FloodwallP95 => "floodwall `HedgeLayer`, p95 delay, A6 budget",
            Self::FloodwallFixed => "floodwall `HedgeLayer`, fixed p95 delay, A6 budget",
            Self::TowerHedge => "tower `Hedge`, p95 delay",
            Self::ResilienceHedge => "tower-resilience hedge, fixed p95 delay (no budget)",
        }
    }
}

/// One hedging scenario's result.
#[derive(Debug, Clone)]
pub struct HedgeRow {
    /// The stack.
    pub stack: HedgeStack,
    /// Caller latency percentiles over the measured requests.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Attempts per request, minus one, over the measured requests'
    /// time: the load hedging added.
    pub extra: f64,
}

type Caller = tower::util::BoxCloneService<u64, u64, BoxError>;

fn stack(which: HedgeStack, lab: &HedgeLab, dep: Dependency) -> Caller {
    let fixed = lab.p95();
    let percentile = HedgeDelay::Percentile {
        percentile: 0.95,
        min_samples: 100,
        period: lab.period,
    };
    let floodwall = |delay| {
        HedgeLayer::new(HedgeConfig {
            max_attempts: 2,
            delay,
            ..HedgeConfig::default()
        })
        .expect("a hedge config")
    };
    match which {
        HedgeStack::None => Caller::new(dep.map_err(BoxError::from)),
        HedgeStack::FloodwallP95 => Caller::new(floodwall(percentile).layer(dep)),
        HedgeStack::FloodwallFixed => Caller::new(floodwall(HedgeDelay::Fixed(fixed)).layer(dep)),
        HedgeStack::TowerHedge => {
            let hedge = tower::hedge::Hedge::new::<u64>(dep, HedgeAll, 100, 0.95, lab.period);
            Caller::new(tower::buffer::Buffer::new(hedge, 65_536))
        }
        HedgeStack::ResilienceHedge => {
            let layer = tower_resilience_hedge::HedgeLayer::builder()
                .delay(fixed)
                .max_hedged_attempts(2)
                .build();
            Caller::new(layer.layer(dep).map_err(|e| BoxError::from(e.to_string())))
        }
    }
}

/// Runs `lab` through `which` under a paused clock; `workers` bounds the
/// dependency's concurrency (`None`: unbounded).
pub fn hedge_scenario(lab: HedgeLab, which: HedgeStack, workers: Option<usize>) -> HedgeRow {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let dep = Dependency::new(lab, workers);
        let svc = stack(which, &lab, dep.clone());
        let mut tasks = Vec::with_capacity(lab.requests);
        let mut calls_at_warm = 0;
        for i in 0..lab.requests {
            if i == lab.warm_up {
                calls_at_warm = dep.calls();
            }
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let answer = svc.oneshot(i as u64).await;
                (start.elapsed(), answer.is_ok())
            }));
            tokio::time::sleep(lab.gap).await;
        }
        // The load hedging added while requests arrived.
        let measured = (lab.requests - lab.warm_up) as f64;
        let extra = (dep.calls() - calls_at_warm) as f64 / measured - 1.0;
        let mut latencies = Vec::with_capacity(lab.requests);
        for (i, task) in tasks.into_iter().enumerate() {
            let (latency, ok) = task.await.expect("a caller task");
            assert!(ok, "the lab dependency never fails");
            if i >= lab.warm_up {
                latencies.push(latency);
            }
        }
        latencies.sort_unstable();
        let q = |q: f64| latencies[((q * latencies.len() as f64).ceil() as usize).max(1) - 1];
        HedgeRow {
            stack: which,
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            extra,
        }
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The Markdown table of hedging rows, p99 improvement against the first
/// row.
pub fn hedge_table(rows: &[HedgeRow]) -> String {
    let base = rows.first().map_or(Duration::ZERO, |r| r.p99);
    let mut out = String::from(
        "| stack | p50 ms | p99 ms | p99.9 ms | p99 cut | extra attempts |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}× | {:.1} % |",
            r.stack.label(),
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            base.as_secs_f64() / r.p99.as_secs_f64(),
            r.extra * 100.0
        );
    }
    out
}

/// One thundering-herd run's result.
#[derive(Debug, Clone)]
pub struct HerdRow {
    /// The stack's label.
    pub stack: &'static str,
    /// Calls that reached the backend.
    pub calls: u64,
    /// Wall time until every caller had its answer.
    pub elapsed: Duration,
    /// CPU time the runtime's thread spent over the run.
    pub cpu: Duration,
}

/// The calling thread's CPU time so far, in nanoseconds
/// (`/proc/thread-self/schedstat`); the herd runs on one thread.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The hot key's backend: 50 ms per call, counting calls.
fn hot_backend(
    calls: Arc<AtomicU64>,
) -> impl Service<http::Request<()>, Response = Arc<str>, Error = LabError, Future: Send> + Clone {
    tower::service_fn(move |_: http::Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, LabError>(Arc::from("room 42"))
        }
    })
}

/// `callers` requests for one hot key within `spread` (in real time, on
/// one thread), through `svc`; the backend answers after 50 ms.
async fn herd<S>(
    svc: S,
    calls: Arc<AtomicU64>,
    callers: usize,
    spread: Duration,
    label: &'static str,
) -> HerdRow
where
    S: Service<http::Request<()>, Response = Arc<str>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let cpu0 = cpu_time();
    let start = std::time::Instant::now();
    let batches = 10;
    let mut tasks = Vec::with_capacity(callers);
    for b in 0..batches {
        for _ in 0..callers / batches {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                svc.oneshot(http::Request::new(()))
                    .await
                    .expect("an answer")
            }));
        }
        if b + 1 < batches {
            tokio::time::sleep(spread / batches as u32).await;
        }
    }
    for task in tasks {
        assert_eq!(&*task.await.expect("a caller"), "room 42");
    }
    HerdRow {
        stack: label,
        calls: calls.load(Ordering::SeqCst),
        elapsed: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
    }
}

/// The thundering herd: `callers` requests for one key within 10 ms,
/// uncoalesced, through floodwall's `CoalesceLayer` and through
/// tower-resilience's coalesce, each in a fresh runtime.
pub fn herd_scenarios(callers: usize) -> Vec<HerdRow> {
    let spread = Duration::from_millis(10);
    let run = |f: &dyn Fn(Arc<AtomicU64>) -> BoxFuture<HerdRow>| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        rt.block_on(f(Arc::default()))
    };
    vec![
        run(&|calls| {
            let svc = hot_backend(calls.clone());
            Box::pin(herd(svc, calls, callers, spread, "no coalescing"))
        }),
        run(&|calls| {
            let layer = CoalesceLayer::new(CoalesceConfig::default(), |_: &http::Request<()>| {
                Some(42u64)
            })
            .expect("a coalesce config");
            let svc = layer.layer(hot_backend(calls.clone()));
            Box::pin(herd(
                svc,
                calls,
                callers,
                spread,
                "floodwall `CoalesceLayer`",
            ))
        }),
        run(&|calls| {
            let layer =
                tower_resilience_coalesce::CoalesceLayer::new(|_: &http::Request<()>| 42u64);
            let svc = layer.layer(hot_backend(calls.clone()));
            Box::pin(herd(
                svc,
                calls,
                callers,
                spread,
                "tower-resilience coalesce",
            ))
        }),
    ]
}

/// The Markdown table of herd rows.
pub fn herd_table(rows: &[HerdRow]) -> String {
    let mut out = String::from(
        "| stack | backend calls | all answered after | CPU time |\n|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} ms | {:.1} ms |",
            r.stack,
            r.calls,
            r.elapsed.as_millis(),
            r.cpu.as_secs_f64() * 1e3
        );
    }
    out
}
