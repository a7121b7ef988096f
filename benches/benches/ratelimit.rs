//! The rate limiters (token bucket, leaky bucket, sliding window): core
//! decisions and per-request layer overhead, next to governor, tower's
//! `RateLimit`, tower-resilience's rate limiter and tower_governor, in one
//! run. `cargo bench -p floodwall-benches --bench ratelimit`.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::leaky_bucket::{LeakyBucketLayer, LeakyMeter, LeakyShaper};
use floodwall::sliding_window::{
    KeyedSlidingLog, KeyedSlidingWindowCounter, SlidingLog, SlidingWindowConfig,
    SlidingWindowCounter, SlidingWindowLayer, Window, WindowMode,
};
use floodwall::token_bucket::{KeyedTokenBucket, Quota, TokenBucket, TokenBucketLayer};
use floodwall_benches::{ReadyService, poll_once};
use governor::{Quota as GQuota, RateLimiter};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_resilience_ratelimiter::WindowType;

/// Fast enough that the admit loops never run dry: 1e9 tokens/s, burst 2^32−1.
fn open_quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .unwrap()
        .with_burst(u32::MAX)
        .unwrap()
}

fn open_gquota() -> GQuota {
    GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()).allow_burst(NonZeroU32::MAX)
}

/// One token an hour, already spent: every check is a rejection.
fn closed_quota() -> Quota {
    Quota::per_hour(1).unwrap()
}

fn closed_gquota() -> GQuota {
    GQuota::per_hour(NonZeroU32::new(1).unwrap())
}

const KEYS: u64 = 1024;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");

    let bucket = TokenBucket::new(open_quota());
    g.bench_function("floodwall/admit", |b| {
        b.iter_custom(|iters| {
            let now = Instant::now();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(bucket.try_acquire(black_box(now), 1)).unwrap();
            }
            start.elapsed()
        })
    });
    g.bench_function("floodwall/admit+clock", |b| {
        b.iter(|| black_box(bucket.try_acquire(Instant::now(), 1)).unwrap())
    });
    let gov = RateLimiter::direct(open_gquota());
    g.bench_function("governor/admit", |b| {
        b.iter(|| black_box(gov.check()).unwrap())
    });
    // governor's decision alone: its fake clock is one atomic load.
    let fake = governor::clock::FakeRelativeClock::default();
    let gov_fake = RateLimiter::direct_with_clock(open_gquota(), fake.clone());
    g.bench_function("governor/admit-fakeclock", |b| {
        b.iter_custom(|iters| {
            fake.advance(Duration::from_secs(10));
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(gov_fake.check()).unwrap();
            }
            start.elapsed()
        })
    });

    let bucket = TokenBucket::new(closed_quota());
    let now = Instant::now();
    bucket.try_acquire(now, 1).unwrap();
    g.bench_function("floodwall/reject", |b| {
        b.iter(|| black_box(bucket.try_acquire(black_box(now), 1)).unwrap_err())
    });
    g.bench_function("floodwall/reject+clock", |b| {
        b.iter(|| black_box(bucket.try_acquire(Instant::now(), 1)).unwrap_err())
    });
    let gov = RateLimiter::direct(closed_gquota());
    gov.check().unwrap();
    g.bench_function("governor/reject", |b| {
        b.iter(|| black_box(gov.check()).unwrap_err())
    });
    let fake = governor::clock::FakeRelativeClock::default();
    let gov_fake = RateLimiter::direct_with_clock(closed_gquota(), fake);
    gov_fake.check().unwrap();
    g.bench_function("governor/reject-fakeclock", |b| {
        b.iter(|| black_box(gov_fake.check()).unwrap_err())
    });

    // The leaky meter (GCRA with the leaky-bucket vocabulary).
    let meter = LeakyMeter::new(open_quota());
    g.bench_function("floodwall-meter/admit", |b| {
        b.iter_custom(|iters| {
            let now = Instant::now();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(meter.try_acquire(black_box(now), 1)).unwrap();
            }
            start.elapsed()
        })
    });
    // The shaper's admission (a reservation, no waiting in the benchmark).
    let shaper = LeakyShaper::new(open_quota(), u32::MAX);
    g.bench_function("floodwall-shaper/admit", |b| {
        b.iter_custom(|iters| {
            let now = Instant::now();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(shaper.admit(black_box(now))).unwrap();
            }
            start.elapsed()
        })
    });
    // The sliding counter: batches of 1,000 within one 10 µs window, two
    // windows apart, so it always admits (65,535 per window).
    let counter = SlidingWindowCounter::new(wide_window(Duration::from_micros(10)));
    let mut clock = Instant::now();
    g.bench_function("floodwall-counter/admit", |b| {
        b.iter_custom(|iters| {
            windowed(iters, Duration::from_micros(20), &mut clock, |now| {
                black_box(counter.try_acquire(black_box(now), 1)).unwrap();
            })
        })
    });
    let counter = SlidingWindowCounter::new(Window::per_minute(1).unwrap());
    let now = Instant::now();
    counter.try_acquire(now, 1).unwrap();
    g.bench_function("floodwall-counter/reject", |b| {
        b.iter(|| black_box(counter.try_acquire(black_box(now), 1)).unwrap_err())
    });
    let log = SlidingLog::new(Window::new(1_000, Duration::from_micros(10)).unwrap());
    // The simulated clock must not start before the log's epoch.
    let mut clock = Instant::now();
    g.bench_function("floodwall-log/admit", |b| {
        b.iter_custom(|iters| {
            windowed(iters, Duration::from_micros(20), &mut clock, |now| {
                black_box(log.try_acquire(black_box(now), 1)).unwrap();
            })
        })
    });
    let log = SlidingLog::new(Window::per_minute(1).unwrap());
    log.try_acquire(now, 1).unwrap();
    g.bench_function("floodwall-log/reject", |b| {
        b.iter(|| black_box(log.try_acquire(black_box(now), 1)).unwrap_err())
    });
    g.finish();
}

/// The most a sliding window allows, over `length`.
fn wide_window(length: Duration) -> Window {
    Window::new(floodwall::sliding_window::MAX_LIMIT, length).unwrap()
}

/// Runs `f` `iters` times in batches of 1,000 at one instant, moving the
/// simulated clock `now` on by `gap` between batches (so window limiters
/// start each batch afresh); returns the time spent in `f`. The clock is the
/// caller's, kept across calls, so it never steps back.
fn windowed(iters: u64, gap: Duration, now: &mut Instant, mut f: impl FnMut(Instant)) -> Duration {
    let mut left = iters;
    let start = std::time::Instant::now();
    while left > 0 {
        let batch = left.min(1_000);
        for _ in 0..batch {
            f(*now);
        }
        left -= batch;
        *now += gap;
    }
    start.elapsed()
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyed");

    let keyed = KeyedTokenBucket::new(open_quota(), 100_000);
    let gov = RateLimiter::keyed(open_gquota());
    for i in 0..KEYS {
        keyed.try_acquire(&key(i), Instant::now(), 1).unwrap();
        gov.check_key(&key(i)).unwrap();
    }
    g.bench_function("floodwall/admit", |b| {
        b.iter_custom(|iters| {
            let now = Instant::now();
            let start = std::time::Instant::now();
            for i in 0..iters {
                black_box(keyed.try_acquire(&key(i % KEYS), black_box(now), 1)).unwrap();
            }
            start.elapsed()
        })
    });
    g.bench_function("floodwall/admit+clock", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(keyed.try_acquire(&key(i % KEYS), Instant::now(), 1)).unwrap()
        })
    });
    g.bench_function("governor/admit", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(gov.check_key(&key(i % KEYS))).unwrap()
        })
    });

    let keyed = KeyedTokenBucket::new(closed_quota(), 100_000);
    let gov = RateLimiter::keyed(closed_gquota());
    let now = Instant::now();
    for i in 0..KEYS {
        keyed.try_acquire(&key(i), now, 1).unwrap();
        gov.check_key(&key(i)).unwrap();
    }
    g.bench_function("floodwall/reject", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(keyed.try_acquire(&key(i % KEYS), black_box(now), 1)).unwrap_err()
        })
    });
    g.bench_function("governor/reject", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(gov.check_key(&key(i % KEYS))).unwrap_err()
        })
    });

    let counters = KeyedSlidingWindowCounter::new(wide_window(Duration::from_micros(10)), 100_000);
    let mut clock = Instant::now();
    g.bench_function("floodwall-counter/admit", |b| {
        let mut i = 0;
        b.iter_custom(|iters| {
            windowed(iters, Duration::from_micros(20), &mut clock, |now| {
                i += 1;
                black_box(counters.try_acquire(&key(i % KEYS), black_box(now), 1)).unwrap();
            })
        })
    });
    g.finish();
}

fn layer(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("layer");

    // Clone + oneshot, the way a server calls a shared service per request.
    let bare = ReadyService;
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, bare.clone().oneshot(black_box(1u32))).unwrap())
    });
    let floodwall = TokenBucketLayer::new(open_quota())
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, floodwall.clone().oneshot(black_box(1u32))).unwrap())
    });
    let resilience = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(usize::MAX / 2)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::ZERO)
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("tower-resilience/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, resilience.clone().oneshot(black_box(1u32))).unwrap())
    });
    let meter = LeakyBucketLayer::builder(open_quota())
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall-meter/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, meter.clone().oneshot(black_box(1u32))).unwrap())
    });
    let counter = SlidingWindowLayer::builder(wide_window(Duration::from_millis(1)))
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall-counter/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, counter.clone().oneshot(black_box(1u32))).unwrap())
    });
    let log = SlidingWindowLayer::builder(
        SlidingWindowConfig::from(Window::new(1_000, Duration::from_micros(1)).unwrap())
            .mode(WindowMode::Log),
    )
    .build()
    .unwrap()
    .layer(ReadyService);
    g.bench_function("floodwall-log/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, log.clone().oneshot(black_box(1u32))).unwrap())
    });
    for (name, window) in [
        (
            "tower-resilience-counter/clone+oneshot",
            WindowType::SlidingCounter,
        ),
        ("tower-resilience-log/clone+oneshot", WindowType::SlidingLog),
    ] {
        let svc = tower_resilience_ratelimiter::RateLimiterLayer::builder()
            .limit_for_period(1_000_000)
            .refresh_period(Duration::from_millis(1))
            .timeout_duration(Duration::ZERO)
            .window_type(window)
            .build()
            .unwrap()
            .layer(ReadyService);
        g.bench_function(name, |b| {
            b.iter(|| poll_once(&mut cx, svc.clone().oneshot(black_box(1u32))).unwrap())
        });
    }

    // poll_ready + call on one instance: the only way to drive tower's
    // RateLimit, which is not Clone.
    let mut bare = ReadyService;
    g.bench_function("bare/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut bare, 1))
    });
    let mut floodwall = TokenBucketLayer::new(open_quota())
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut floodwall, 1))
    });
    let mut tower_rl = tower::limit::RateLimit::new(
        ReadyService,
        tower::limit::rate::Rate::new(u64::MAX, Duration::from_secs(1)),
    );
    g.bench_function("tower/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut tower_rl, 1))
    });
    g.finish();
}

/// The same comparison on HTTP requests, so governor's own Tower layer
/// (tower_governor, which only takes `http::Request`) can join: a single
/// global limit, then one limit per client IP read from the request's
/// `SocketAddr` extension.
fn layer_http(c: &mut Criterion) {
    type Body = tonic::body::Body;
    type Req = http::Request<()>;
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("layer_http");
    let ok = || ReadyHttp::<Body>::default();
    let req = || {
        let mut r = http::Request::new(());
        r.extensions_mut()
            .insert(SocketAddr::from(([10, 1, 2, 3], 4567)));
        r
    };

    let bare = ok();
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, bare.clone().oneshot(req())).unwrap())
    });
    let floodwall = TokenBucketLayer::new(open_quota()).unwrap().layer(ok());
    g.bench_function("floodwall/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, floodwall.clone().oneshot(req())).unwrap())
    });
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .finish()
        .unwrap();
    let tg = tower_governor::GovernorLayer::<_, _, Body>::new(config).layer(ok());
    g.bench_function("tower_governor/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, tg.clone().oneshot(req())).unwrap())
    });

    let floodwall_ip = TokenBucketLayer::builder(open_quota())
        .capacity(100_000)
        .build_keyed(|r: &Req| r.extensions().get::<SocketAddr>().map(SocketAddr::ip))
        .unwrap()
        .layer(ok());
    g.bench_function("floodwall/per-ip/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, floodwall_ip.clone().oneshot(req())).unwrap())
    });
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(SocketAddrKey)
        .finish()
        .unwrap();
    let tg_ip = tower_governor::GovernorLayer::<_, _, Body>::new(config).layer(ok());
    g.bench_function("tower_governor/per-ip/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, tg_ip.clone().oneshot(req())).unwrap())
    });
    g.finish();
}

/// An HTTP service that answers every request at once with an empty body.
#[derive(Debug)]
struct ReadyHttp<B>(std::marker::PhantomData<fn() -> B>);

impl<B> Default for ReadyHttp<B> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

// By hand: a derive would require `B: Clone`.
impl<B> Clone for ReadyHttp<B> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<B: Default, ReqB> Service<http::Request<ReqB>> for ReadyHttp<B> {
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<B>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<ReqB>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(B::default())))
    }
}

/// tower_governor's peer-IP extractor reads axum's `ConnectInfo`; this one
/// reads the plain `SocketAddr` extension floodwall's example uses.
#[derive(Debug, Clone, Copy)]
struct SocketAddrKey;

impl tower_governor::key_extractor::KeyExtractor for SocketAddrKey {
    type Key = IpAddr;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<IpAddr, tower_governor::GovernorError> {
        req.extensions()
            .get::<SocketAddr>()
            .map(SocketAddr::ip)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

fn ready_call<S>(cx: &mut Context<'_>, svc: &mut S, req: u32) -> u32
where
    S: Service<u32, Response = u32>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    poll_once(cx, svc.call(black_box(req))).unwrap()
}

/// Bytes per key of the keyed limiter, printed with the results.
fn memory_report(_: &mut Criterion) {
    fn report<K: std::hash::Hash + Eq + Clone>(
        label: &str,
        capacity: usize,
        make: impl Fn(u64) -> K,
    ) {
        let keyed = KeyedTokenBucket::new(Quota::per_minute(1).unwrap(), capacity);
        let now = Instant::now();
        for i in 0..capacity as u64 * 3 {
            keyed.try_acquire(&make(i), now, 1).unwrap();
        }
        println!(
            "keyed memory: {label:<8} capacity {capacity:>7}: {:>9} bytes for {:>7} keys = {:.1} bytes/key",
            keyed.keys().memory_bytes(),
            keyed.keys().len(),
            keyed.keys().memory_bytes() as f64 / keyed.keys().len() as f64
        );
    }
    for capacity in [10_000, 100_000, 1_000_000] {
        report("u64", capacity, key);
        report("IpAddr", capacity, |i| {
            IpAddr::V6(Ipv6Addr::from(u128::from(key(i))))
        });
    }
    let ip = |i: u64| IpAddr::V6(Ipv6Addr::from(u128::from(key(i))));
    let capacity = 100_000;
    let now = Instant::now();
    let counters = KeyedSlidingWindowCounter::new(Window::per_minute(100).unwrap(), capacity);
    for i in 0..capacity as u64 * 3 {
        counters.try_acquire(&ip(i), now, 1).unwrap();
    }
    let keys = counters.keys();
    println!(
        "keyed memory: sliding counter, IpAddr, capacity {capacity}: {} bytes for {} keys = {:.1} bytes/key",
        keys.memory_bytes(),
        keys.len(),
        keys.memory_bytes() as f64 / keys.len() as f64
    );
    let logs = KeyedSlidingLog::new(Window::per_minute(10).unwrap(), capacity);
    for i in 0..capacity as u64 * 3 {
        logs.try_acquire(&ip(i), now, 1).unwrap();
    }
    let keys = logs.keys();
    println!(
        "keyed memory: sliding log (limit 10), IpAddr, capacity {capacity}: {} bytes for {} keys = {:.1} bytes/key + 10 x 8 bytes of ring = {:.1} bytes/key",
        keys.memory_bytes(),
        keys.len(),
        keys.memory_bytes() as f64 / keys.len() as f64,
        keys.memory_bytes() as f64 / keys.len() as f64 + 80.0
    );
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = memory_report, core, keyed, layer, layer_http
}
criterion_main!(benches);
