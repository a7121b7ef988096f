//! Every algorithm against a simulated service whose latency rises with
//! concurrency beyond its capacity: the limit converges to within 20 % of
//! the capacity and follows it when it changes.
//!
//! The service has `workers` workers and a FIFO queue; each request takes
//! 100 ms ± 2 % of a worker's time. With `n` requests in flight and
//! `n > workers`, a request waits for `n − workers` others: its RTT is about
//! `100 ms × n / workers`. Its true capacity, in concurrency, is `workers`.
//! For the loss-based AIMD the queue holds at most a tenth of the workers
//! and refuses what does not fit (overloaded: a drop); the latency-based
//! algorithms see the unbounded queue.
//! Open-loop Poisson arrivals offer 1.5 × its throughput at 200 workers
//! (3,000/s); the capacity goes 200 → 100 → 200 workers, 40 s each.
//!
//! A discrete-event simulation on virtual instants, seeded: the same seed
//! gives the same numbers. `cargo test -p floodwall-concurrency --test
//! convergence -- --nocapture` prints each algorithm's convergence times.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_concurrency::{
    Aimd, AimdConfig, Algorithm, Bbr, BbrConfig, ConcurrencyLimiter, EnvoyGradient,
    EnvoyGradientConfig, Gradient2, Gradient2Config, Token, Vegas, VegasConfig, WindowConfig,
    Windowed,
};
use floodwall_core::random::{Random, SplitMix};
use tokio::time::Instant;

const SERVICE: Duration = Duration::from_millis(100);
const JITTER: f64 = 0.02;
const ARRIVALS_PER_SEC: f64 = 3_000.0;
const PHASE: Duration = Duration::from_secs(40);
const PHASES: [u32; 3] = [200, 100, 200];
/// How often the limit is checked.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker finishes the job with this id.
    Finish(u64),
    Arrival,
    Tick,
}

/// What one phase showed.
#[derive(Debug)]
struct Phase {
    capacity: u32,
    /// From the phase's start until the limit (its mean over the last
    /// two seconds) stayed within ±20 % of the capacity for the rest of the
    /// phase; `None` if it never did.
    converged_after: Option<Duration>,
    /// The mean limit over the phase's second half.
    settled_mean: f64,
    /// Requests finished per second over the phase's second half.
    throughput: f64,
}

/// Runs the scenario; `measuring` says when the algorithm pins its limit on
/// purpose (the Envoy controller's minRTT measurement): those checks, and
/// the 10 s after, are skipped.
fn simulate<A: Algorithm>(
    limiter: &ConcurrencyLimiter<A>,
    cpu: &AtomicU64,
    queue_bound: Option<f64>,
    measuring: impl Fn(&A) -> bool,
) -> Vec<Phase> {
    let seed = 2026;
    let rng = SplitMix::new(seed);
    let t0 = Instant::now();
    let end = PHASE * PHASES.len() as u32;
    let mut events: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
    let mut jobs: Vec<Option<Token>> = Vec::new();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut busy = 0u32;
    events.push(Reverse((Duration::ZERO, Event::Arrival)));
    events.push(Reverse((Duration::ZERO, Event::Tick)));
    let mut checks: Vec<Vec<(Duration, Option<u32>)>> = vec![Vec::new(); PHASES.len()];
    let mut finished_late = vec![0u64; PHASES.len()];
    let mut last_pinned: Option<Duration> = None;

    while let Some(Reverse((at, event))) = events.pop() {
        if at >= end {
            break;
        }
        let phase = (at.as_nanos() / PHASE.as_nanos()) as usize;
        let workers = PHASES[phase];
        let now = t0 + at;
        let start = |id: u64, busy: &mut u32, events: &mut BinaryHeap<_>| {
            *busy += 1;
            let spread = 1.0 + JITTER * (2.0 * rng.next_f64() - 1.0);
            events.push(Reverse((at + SERVICE.mul_f64(spread), Event::Finish(id))));
        };
        match event {
            Event::Arrival => {
                if let Ok(token) = limiter.try_acquire(now) {
                    let id = jobs.len() as u64;
                    jobs.push(Some(token));
                    let full =
                        queue_bound.is_some_and(|b| queue.len() as f64 >= b * f64::from(workers));
                    if busy < workers {
                        start(id, &mut busy, &mut events);
                    } else if full {
                        // Refused at once: overloaded, a drop.
                        let token = jobs[id as usize].take().expect("just admitted");
                        limiter.dropped(token, now);
                    } else {
                        queue.push_back(id);
                    }
                }
                let gap = -(1.0 - rng.next_f64()).ln() / ARRIVALS_PER_SEC;
                events.push(Reverse((at + Duration::from_secs_f64(gap), Event::Arrival)));
            }
            Event::Finish(id) => {
                busy -= 1;
                let token = jobs[id as usize].take().expect("finished once");
                limiter.success(token, now);
                if at >= PHASE * phase as u32 + PHASE / 2 {
                    finished_late[phase] += 1;
                }
            }
            Event::Tick => {
                let pinned = limiter.with_algorithm(|a| measuring(a));
                if std::env::var_os("FW_TRACE").is_some() {
                    println!(
                        "{:>6.1} s limit {:>5} in flight {:>5} busy {:>3} queue {:>4} {:?}",
                        at.as_secs_f64(),
                        limiter.limit(),
                        limiter.in_flight(),
                        busy,
                        queue.len(),
                        limiter.estimates(),
                    );
                }
                if pinned {
                    last_pinned = Some(at);
                }
                // The Envoy controller's measurement pins the limit, and the
                // first windows after it (an emptied queue, a fast window,
                // up to ×2) overshoot by design: the next 10 s are its
                // transient, not its convergence.
                let transient = last_pinned.is_some_and(|p| at < p + Duration::from_secs(10));
                let limit = (!transient).then(|| limiter.limit());
                checks[phase].push((at - PHASE * phase as u32, limit));
                events.push(Reverse((at + TICK, Event::Tick)));
            }
        }
        // The capacity may have grown: start what waits.
        while busy < workers
            && let Some(id) = queue.pop_front()
        {
            start(id, &mut busy, &mut events);
        }
        cpu.store(
            (f64::from(busy) / f64::from(workers)).to_bits(),
            Ordering::Relaxed,
        );
    }

    PHASES
        .iter()
        .zip(checks)
        .zip(finished_late)
        .map(|((&capacity, checks), late)| {
            let (lo, hi) = (0.8 * f64::from(capacity), 1.2 * f64::from(capacity));
            // The limit's mean over the last two seconds (twenty checks,
            // several updates of even the slowest-stepping algorithm; the
            // checks of a pinned limit left out): a sawtooth around the
            // capacity is converged, a swing is not.
            let smoothed: Vec<(Duration, Option<f64>)> = checks
                .iter()
                .enumerate()
                .map(|(i, &(t, _))| {
                    let last: Vec<f64> = checks[i.saturating_sub(19)..=i]
                        .iter()
                        .filter_map(|&(_, l)| l.map(f64::from))
                        .collect();
                    let mean =
                        (!last.is_empty()).then(|| last.iter().sum::<f64>() / last.len() as f64);
                    (t, mean)
                })
                .collect();
            let within = |l: Option<f64>| l.is_none_or(|l| (lo..=hi).contains(&l));
            let converged_after = match smoothed.iter().rposition(|&(_, l)| !within(l)) {
                None => Some(Duration::ZERO),
                Some(last_bad) => smoothed.get(last_bad + 1).map(|&(t, _)| t),
            };
            let second_half: Vec<f64> = checks
                .iter()
                .filter(|(t, _)| *t >= PHASE / 2)
                .filter_map(|(_, l)| l.map(f64::from))
                .collect();
            Phase {
                capacity,
                converged_after,
                settled_mean: second_half.iter().sum::<f64>() / second_half.len().max(1) as f64,
                throughput: late as f64 / (PHASE / 2).as_secs_f64(),
            }
        })
        .collect()
}

fn report(name: &str, phases: &[Phase]) {
    for p in phases {
        println!(
            "{name:<10} capacity {:>3}: converged after {:>8}, settled limit {:>6.1}, {:>6.0} req/s",
            p.capacity,
            p.converged_after
                .map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            p.settled_mean,
            p.throughput,
        );
    }
}

fn check(name: &str, phases: &[Phase]) {
    report(name, phases);
    for p in phases {
        let after = p
            .converged_after
            .unwrap_or_else(|| panic!("{name}: never within 20 % of {}", p.capacity));
        // Converged with time to spare: the phase's last quarter (100
        // checks) all within the bounds.
        assert!(
            after <= PHASE * 3 / 4,
            "{name}: took {after:?} to settle at capacity {}",
            p.capacity
        );
        let c = f64::from(p.capacity);
        assert!(
            (0.8 * c..=1.2 * c).contains(&p.settled_mean),
            "{name}: settled at {} for capacity {c}",
            p.settled_mean
        );
        // Kept near the capacity, the service stays busy: at least 80 % of
        // its throughput (workers / service time).
        assert!(
            p.throughput >= 0.8 * c / SERVICE.as_secs_f64(),
            "{name}: {} req/s at capacity {c}",
            p.throughput
        );
    }
}

fn run<A: Algorithm>(algorithm: A, measuring: impl Fn(&A) -> bool) -> Vec<Phase> {
    let cpu = AtomicU64::new(0);
    let limiter = ConcurrencyLimiter::new(algorithm);
    simulate(&limiter, &cpu, None, measuring)
}

/// One update per 100 ms window (about one RTT of the service): see
/// [`Windowed`] for why per-request updates swing at thousands of
/// requests per second.
fn windowed<A: Algorithm>(a: A) -> Windowed<A> {
    Windowed::new(a, WindowConfig::every(SERVICE)).unwrap()
}

#[test]
fn vegas_converges_and_follows_the_capacity() {
    check(
        "vegas",
        &run(
            windowed(Vegas::new(VegasConfig::default()).unwrap()),
            |_| false,
        ),
    );
}

#[test]
fn gradient2_converges_and_follows_the_capacity() {
    // The long-term average keeps Netflix's memory in time: 600 windows of
    // its default 1 s are 6,000 of these 100 ms. The cap is lifted from
    // 200 so that it is not what holds the limit at 200 workers.
    let g = Gradient2::new(Gradient2Config {
        long_window: 6_000,
        max_limit: 1_000,
        ..Gradient2Config::default()
    })
    .unwrap();
    check("gradient2", &run(windowed(g), |_| false));
}

#[test]
fn aimd_converges_and_follows_the_capacity() {
    // AIMD is loss-based: it backs off when the service refuses (or a
    // request times out, 5 s here: never). Against the bounded queue it
    // settles between ×0.9 and the top of the queue.
    let aimd = Aimd::new(AimdConfig::default()).unwrap();
    let cpu = AtomicU64::new(0);
    check(
        "aimd",
        &simulate(&ConcurrencyLimiter::new(aimd), &cpu, Some(0.05), |_| false),
    );
}

#[test]
fn envoy_gradient_converges_and_follows_the_capacity() {
    // Envoy's default 25 % buffer tolerates latency 25 % above the minRTT
    // before it cuts, and its √limit headroom adds a queue on top: with the
    // defaults the limit settles near 1.25 × capacity + √limit by design
    // (about 265 for 200 workers). No buffer asks for the capacity plus
    // the headroom alone (about 215 for 200, 110 for 100).
    let envoy = EnvoyGradient::new(EnvoyGradientConfig {
        buffer: 0.0,
        update_interval: Duration::from_millis(500),
        seed: 7,
        ..EnvoyGradientConfig::default()
    })
    .unwrap();
    check("envoy", &run(envoy, EnvoyGradient::measuring_min_rtt));
}

#[test]
fn bbr_converges_and_follows_the_capacity() {
    // The simulated CPU usage is the busy fraction of the workers.
    let cpu = Arc::new(AtomicU64::new(0));
    let reading = cpu.clone();
    let bbr = Bbr::with_cpu(BbrConfig::default(), move || {
        f64::from_bits(reading.load(Ordering::Relaxed))
    })
    .unwrap();
    let limiter = ConcurrencyLimiter::new(bbr);
    check("bbr", &simulate(&limiter, &cpu, None, |_| false));
}

#[test]
fn the_simulation_is_deterministic() {
    let once = || {
        run(
            windowed(Vegas::new(VegasConfig::default()).unwrap()),
            |_| false,
        )
        .iter()
        .map(|p| (p.converged_after, p.settled_mean.to_bits()))
        .collect::<Vec<_>>()
    };
    assert_eq!(once(), once());
}
