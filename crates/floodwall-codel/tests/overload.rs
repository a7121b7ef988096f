//! Overload behaviour under virtual time: a service with W workers and a
//! fixed service time S, offered 1× to 10× its capacity by callers with a
//! 100 ms deadline, behind the admission queue and behind a plain unbounded
//! FIFO queue. Deterministic (paused clock, seeded arrivals).
//!
//! `cargo test -p floodwall-codel --test overload -- --nocapture` prints the
//! table recorded in docs/performance.md.

use std::sync::Arc;
use std::time::Duration;

use floodwall_codel::{CodelConfig, CodelLayer, Policy, TimingFromExtensions};
use floodwall_core::random::SplitMix;
use floodwall_core::{Arrival, Deadline};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

const WORKERS: usize = 8;
const SERVICE: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_millis(100);
const RUN: Duration = Duration::from_secs(5);
/// Fail-at-Scale's N.
const N: Duration = Duration::from_millis(100);

fn capacity_per_sec() -> f64 {
    WORKERS as f64 / SERVICE.as_secs_f64()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    FailAtScale,
    Codel,
    UnboundedFifo,
}

#[derive(Debug)]
struct Row {
    /// Responses the caller got inside its deadline (during the run), per
    /// capacity.
    goodput: f64,
    /// p99 of arrival → response for requests the server answered.
    p99: Duration,
    /// Requests the server ran.
    ran: usize,
}

type Req = http::Request<()>;

fn worker() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|_req: Req| async {
        sleep(SERVICE).await;
        Ok::<_, BoxError>(())
    })
}

/// The same server behind a FIFO semaphore with no bound and no drops.
fn fifo_server(
    sem: Arc<Semaphore>,
) -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |_req: Req| {
        let sem = sem.clone();
        async move {
            let _permit = sem.acquire().await?;
            sleep(SERVICE).await;
            Ok::<_, BoxError>(())
        }
    })
}

async fn run(front: Front, load: f64, deadlines: bool) -> Row {
    let policy = match front {
        Front::Codel => Policy::codel(),
        _ => Policy::fail_at_scale(),
    };
    let layer = CodelLayer::builder(CodelConfig {
        workers: WORKERS,
        policy,
        ..Default::default()
    })
    .timing(TimingFromExtensions)
    .build()
    .unwrap();
    let codel = layer.layer(worker());
    let fifo = fifo_server(Arc::new(Semaphore::new(WORKERS)));

    let served = Arc::new(Mutex::new(Vec::new()));
    let good = Arc::new(Mutex::new(0usize));
    let rng = SplitMix::new(42);
    let rate = capacity_per_sec() * load;
    let t0 = Instant::now();
    let mut next = t0;
    let mut clients = Vec::new();
    while next < t0 + RUN {
        sleep_until(next).await;
        let arrived = Instant::now();
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Arrival::new(arrived));
        if deadlines {
            req.extensions_mut()
                .insert(Deadline::after(arrived, DEADLINE));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let served = served.clone();
        // The server keeps working on a request whether or not its caller
        // still waits, as a real server does.
        let call = match front {
            Front::UnboundedFifo => fifo.clone().oneshot(req).boxed(),
            _ => codel.clone().oneshot(req).boxed(),
        };
        tokio::spawn(async move {
            if call.await.is_ok() {
                served.lock().push(Instant::now() - arrived);
                let _ = tx.send(());
            }
        });
        let good = good.clone();
        clients.push(tokio::spawn(async move {
            // Good: answered inside the deadline, and inside the run (so
            // that goodput is per second of offered load).
            if let Ok(Ok(())) = timeout(DEADLINE, rx).await
                && Instant::now() <= t0 + RUN
            {
                *good.lock() += 1;
            }
        }));
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        next += Duration::from_secs_f64(-(1.0 - u).ln() / rate);
    }
    for c in clients {
        c.await.unwrap();
    }
    // Let the server finish what it holds (the FIFO's backlog can be long).
    let mut latencies = loop {
        let done = served.lock().len();
        sleep(Duration::from_secs(1)).await;
        if served.lock().len() == done {
            break std::mem::take(&mut *served.lock());
        }
    };
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let goodput = *good.lock() as f64 / (capacity_per_sec() * RUN.as_secs_f64());
    Row {
        goodput,
        p99,
        ran: latencies.len(),
    }
}

trait BoxedFuture: std::future::Future + Sized + Send + 'static {
    fn boxed(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>> {
        Box::pin(self)
    }
}

impl<F: std::future::Future + Send + 'static> BoxedFuture for F {}

#[tokio::test(start_paused = true)]
async fn goodput_holds_under_overload_and_a_plain_fifo_collapses() {
    println!(
        "W = {WORKERS}, S = {SERVICE:?}, capacity {:.0}/s, deadline {DEADLINE:?}, {RUN:?} of Poisson arrivals",
        capacity_per_sec()
    );
    println!(
        "| offered | Fail-at-Scale goodput | p99 | CoDel (RFC 8289) goodput | p99 | unbounded FIFO goodput | p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut blind = Vec::new();
    for load in [1.0, 2.0, 3.0, 5.0, 10.0] {
        let fas = run(Front::FailAtScale, load, true).await;
        let codel = run(Front::Codel, load, true).await;
        let fifo = run(Front::UnboundedFifo, load, true).await;
        println!(
            "| {load}× | {:.1} % | {:.1} ms | {:.1} % | {:.1} ms | {:.1} % | {:.1} ms |",
            fas.goodput * 100.0,
            ms(fas.p99),
            codel.goodput * 100.0,
            ms(codel.p99),
            fifo.goodput * 100.0,
            ms(fifo.p99),
        );
        // Without deadlines on the requests: the drop policy alone.
        let fas_blind = run(Front::FailAtScale, load, false).await;
        let codel_blind = run(Front::Codel, load, false).await;
        // The floors: 95 % of capacity at 3×, 90 % beyond.
        let floor = match load {
            3.0 => 0.95,
            l if l > 3.0 => 0.90,
            _ => 0.0,
        };
        for row in [&fas, &codel, &fas_blind, &codel_blind] {
            assert!(row.goodput >= floor, "{load}×: {row:?}");
        }
        // The latency bound holds for Fail-at-Scale on its own, and for
        // CoDel with deadlines. Blind CoDel has no per-request bound: its
        // drop rate grows only as sqrt(count) (it expects senders to back
        // off), so with LIFO old requests can wait long (documented).
        for row in [&fas, &codel, &fas_blind] {
            assert!(row.p99 < SERVICE + 2 * N, "{load}×: {row:?}");
        }
        if load >= 3.0 {
            // The FIFO runs everything, late: almost nothing in time.
            assert!(fifo.ran > 0);
            assert!(fifo.goodput < 0.2, "{load}×: the FIFO held up: {fifo:?}");
        }
        blind.push((load, fas_blind, codel_blind));
    }
    println!();
    println!("Requests without a Deadline (the drop policy alone):");
    println!("| offered | Fail-at-Scale goodput | p99 | CoDel (RFC 8289) goodput | p99 |");
    println!("|---|---|---|---|---|");
    for (load, fas, codel) in blind {
        println!(
            "| {load}× | {:.1} % | {:.1} ms | {:.1} % | {:.1} ms |",
            fas.goodput * 100.0,
            ms(fas.p99),
            codel.goodput * 100.0,
            ms(codel.p99),
        );
    }
}
