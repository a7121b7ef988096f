//! floodwall-redis against a real `redis-server` on an ephemeral loopback
//! port (started and stopped by each test). These run in real time: the
//! limiter's clock is Redis's own.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_ratelimit::Quota;
use floodwall_redis::error::{LimiterUnavailable, RateLimited};
use floodwall_redis::redis::Value;
use floodwall_redis::test_util::RedisServer;
use floodwall_redis::{
    Builder, ErrorClass, Fallback, Health, RedisConnection, RedisLimiter, RedisRateLimitLayer,
    Refusal, Source,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(rate).unwrap().with_burst(burst).unwrap()
}

fn client(addr: SocketAddr) -> RedisConnection {
    RedisConnection::open(&format!("redis://{addr}/")).unwrap()
}

/// The round-trip budget of every limiter here but the one that tests the
/// timeout itself. The 20 ms default holds on an idle host; on a loaded
/// 2-core CI machine a connect, a script load or a scheduling gap can pass
/// it, and the fallback would decide a request these tests expect Redis to.
const ROUND_TRIP: Duration = Duration::from_millis(250);

fn builder(addr: SocketAddr, quota: Quota) -> Builder {
    RedisLimiter::builder(client(addr), quota)
        .name("test")
        .timeout(ROUND_TRIP)
}

/// A loopback address nothing listens on.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn redis_admits_exactly_the_burst_then_tells_the_wait_and_remembers_it() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = builder(server.addr(), quota(1, 10)).build().unwrap();
    let mut admitted = 0;
    let mut refusals = Vec::new();
    let started = Instant::now();
    let mut first_refused_by = None;
    for _ in 0..25 {
        match limiter.acquire("burst", 1).await {
            Ok(source) => {
                assert_eq!(source, Source::Redis);
                admitted += 1;
            }
            Err(refusal) => {
                first_refused_by.get_or_insert(started.elapsed());
                refusals.push(refusal);
            }
        }
    }
    assert_eq!(admitted, 10, "r = 1/s, b = 10: the burst and no more");
    let Refusal::RateLimited {
        retry_after: first,
        source: Source::Redis,
    } = refusals[0]
    else {
        panic!("first refusal comes from redis: {:?}", refusals[0]);
    };
    // The next token conforms 1 s after the first admission (Redis's clock),
    // and the refusal came at most `first_refused_by` after it.
    let took = first_refused_by.unwrap();
    assert!(
        first + took + Duration::from_millis(1) >= Duration::from_secs(1)
            && first <= Duration::from_secs(1),
        "first retry-after {first:?}, {took:?} after the first admission"
    );
    for later in &refusals[1..] {
        let Refusal::RateLimited {
            retry_after,
            source: Source::Cached,
        } = later
        else {
            panic!("later refusals are remembered: {later:?}");
        };
        assert!(*retry_after <= first);
    }
    let stats = limiter.stats();
    assert_eq!(stats.round_trips, 11, "10 admissions and one refusal");
    assert_eq!(stats.cached_refusals, 14);
    assert_eq!((stats.admitted, stats.rejected), (10, 15));
}

#[tokio::test]
async fn a_weighted_request_takes_its_weight_and_one_above_the_burst_never_conforms() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = builder(server.addr(), quota(1, 10)).build().unwrap();
    let started = Instant::now();
    assert_eq!(limiter.acquire("w", 7).await, Ok(Source::Redis));
    let refused = limiter.acquire("w", 4).await.unwrap_err();
    let took = started.elapsed();
    let Refusal::RateLimited { retry_after, .. } = refused else {
        panic!("{refused:?}");
    };
    // 3 tokens left, 4 needed: one more token, a second after the
    // admission, less the time since (at most `took`).
    assert!(
        retry_after + took + Duration::from_millis(1) >= Duration::from_secs(1)
            && retry_after <= Duration::from_secs(1),
        "retry-after {retry_after:?}, {took:?} after the admission"
    );
    assert_eq!(limiter.acquire("w", 3).await, Ok(Source::Redis));
    assert_eq!(
        limiter.acquire("w", 11).await,
        Err(Refusal::ExceedsBurst {
            requested: 11,
            burst: 10
        })
    );
}

#[tokio::test]
async fn a_key_expires_as_soon_as_its_bucket_is_full_again() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = RedisLimiter::builder(client(server.addr()), quota(10, 2))
        .name("ttl")
        .timeout(ROUND_TRIP)
        .build()
        .unwrap();
    assert_eq!(limiter.redis_key(&"k"), "floodwall:ttl:k");
    limiter.acquire("k", 2).await.unwrap();
    let Value::Int(pttl) = server.command(&["PTTL", "floodwall:ttl:k"]).unwrap() else {
        panic!("PTTL is an integer");
    };
    // Two tokens at 10/s refill in 200 ms.
    assert!(pttl > 100 && pttl <= 200, "pttl {pttl} ms");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        server.command(&["EXISTS", "floodwall:ttl:k"]).unwrap(),
        Value::Int(0)
    );
}

#[tokio::test]
async fn the_script_is_loaded_again_when_redis_forgets_it() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = RedisLimiter::builder(client(server.addr()), quota(100, 100))
        .timeout(ROUND_TRIP)
        .build()
        .unwrap();
    assert_eq!(limiter.acquire("a", 1).await, Ok(Source::Redis));
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).unwrap(), Value::Okay);
    assert_eq!(limiter.acquire("a", 1).await, Ok(Source::Redis));
    assert_eq!(limiter.stats().errors, 0);
}

/// What three instances sharing one key did.
struct Shared {
    admitted: u64,
    requests: u64,
    round_trips: u64,
    expected: f64,
}

/// Three instances (own connection, own limiter) with two workers each hit
/// one key for `span` as fast as a 1 ms pace allows, far above the quota.
async fn three_instances(
    addr: SocketAddr,
    quota: Quota,
    lease: Option<(u32, Duration)>,
    span: Duration,
    pace: Duration,
) -> (Shared, u32) {
    let mut limiters = Vec::new();
    for warm_up in ["warm-up-1", "warm-up-2", "warm-up-3"] {
        let mut b = builder(addr, quota).name("shared");
        if let Some((tokens, age)) = lease {
            b = b.lease(tokens, age);
        }
        let limiter: RedisLimiter<&str> = b.build().unwrap();
        // Connects and loads the script.
        limiter.acquire(warm_up, 1).await.unwrap();
        limiters.push(limiter);
    }
    let lease_size = limiters[0].lease_size();
    let admitted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + span;
    let mut workers = Vec::new();
    for limiter in &limiters {
        for _ in 0..2 {
            let limiter = limiter.clone();
            let (admitted, requests) = (admitted.clone(), requests.clone());
            workers.push(tokio::spawn(async move {
                while Instant::now() < end {
                    requests.fetch_add(1, Ordering::Relaxed);
                    match limiter.acquire("key", 1).await {
                        Ok(source) => {
                            assert!(matches!(source, Source::Redis | Source::Lease));
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Refusal::RateLimited { source, .. }) => {
                            assert!(matches!(source, Source::Redis | Source::Cached));
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                    tokio::time::sleep(pace).await;
                }
            }));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let rate = f64::from(quota.tokens()) / quota.period().as_secs_f64();
    let shared = Shared {
        admitted: admitted.load(Ordering::Relaxed),
        requests: requests.load(Ordering::Relaxed),
        round_trips: limiters.iter().map(|l| l.stats().round_trips).sum::<u64>() - 3,
        expected: f64::from(quota.burst()) + rate * span.as_secs_f64(),
    };
    (shared, lease_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_a_key_admit_the_global_quota_within_two_percent() {
    let server = RedisServer::start();
    let (run, _) = three_instances(
        server.addr(),
        quota(200, 20),
        None,
        Duration::from_secs(2),
        Duration::from_millis(1),
    )
    .await;
    let error = (run.admitted as f64 - run.expected).abs() / run.expected;
    eprintln!(
        "leasing off: admitted {} of {} (global quota {}, error {:.2} %), {} round trips",
        run.admitted,
        run.requests,
        run.expected,
        error * 100.0,
        run.round_trips
    );
    assert!(
        error <= 0.02,
        "admitted {} of {} requests, global quota {} (error {:.2} %)",
        run.admitted,
        run.requests,
        run.expected,
        error * 100.0
    );
    assert!(
        run.requests as f64 > 3.0 * run.expected,
        "offered load was above the quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leasing_three_instances_stay_within_the_documented_bound() {
    let server = RedisServer::start();
    let (run, lease) = three_instances(
        server.addr(),
        quota(200, 20),
        Some((10, Duration::from_millis(100))),
        Duration::from_secs(2),
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(lease, 10, "min(max_tokens 10, burst 20, 200/s × 100 ms)");
    // The crate docs: within N·(L − 1) of the global bucket, either way,
    // plus the 2 % allowed for timing as without leasing.
    let bound = 3.0 * f64::from(lease - 1) + 0.02 * run.expected;
    let off = run.admitted as f64 - run.expected;
    eprintln!(
        "leasing on (L = {lease}): admitted {} of {} (global quota {}, off by {off}, bound ±{bound}), {} round trips",
        run.admitted, run.requests, run.expected, run.round_trips
    );
    assert!(
        off.abs() <= bound,
        "admitted {} vs global {} (bound ±{bound})",
        run.admitted,
        run.expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_quota_leasing_cuts_round_trips_by_about_the_lease_size() {
    let server = RedisServer::start();
    // 3 instances × 2 workers at one request per 10 ms: about 600/s offered
    // against 2000/s allowed, so every request is admitted.
    let quota = quota(2000, 200);
    let span = Duration::from_millis(1500);
    let pace = Duration::from_millis(10);
    let (plain, _) = three_instances(server.addr(), quota, None, span, pace).await;
    let (leased, lease) = three_instances(
        server.addr(),
        quota,
        Some((20, Duration::from_millis(100))),
        span,
        pace,
    )
    .await;
    assert_eq!(lease, 20);
    assert_eq!(plain.admitted, plain.requests);
    assert_eq!(leased.admitted, leased.requests);
    let per_1000 = |s: &Shared| 1000.0 * s.round_trips as f64 / s.requests as f64;
    eprintln!(
        "round trips per 1000 requests below the quota: {:.1} without leasing, {:.1} with a lease of 20",
        per_1000(&plain),
        per_1000(&leased)
    );
    assert!(per_1000(&plain) >= 990.0, "{}", per_1000(&plain));
    assert!(
        per_1000(&leased) <= 1000.0 / 20.0 * 1.5,
        "round trips per 1000 requests with a lease of 20: {}",
        per_1000(&leased)
    );
}

/// Drives `limiter` at one request per 2 ms for `span`; returns the
/// decisions with how long each took.
async fn drive(limiter: &RedisLimiter<&'static str>, span: Duration) -> Drive {
    let end = Instant::now() + span;
    let mut calls = Vec::new();
    let mut first = None;
    let mut last: Option<(Instant, Duration)> = None;
    let mut gaps = Vec::new();
    while Instant::now() < end {
        let started = Instant::now();
        let decision = limiter.acquire("key", 1).await;
        let took = started.elapsed();
        first.get_or_insert((started, took));
        if let Some((at, _)) = last {
            gaps.push(started + took - at);
        }
        last = Some((started, took));
        calls.push((decision, took));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ((first_at, first_took), (last_at, last_took)) = (first.unwrap(), last.unwrap());
    Drive {
        calls,
        // A decision is made somewhere inside its call: the first and the
        // last decision are at least this far apart...
        shortest: last_at.saturating_duration_since(first_at + first_took),
        // ...and at most this far.
        longest: (last_at + last_took) - first_at,
        gaps,
    }
}

/// What [`drive`] saw.
struct Drive {
    calls: Vec<(Result<Source, Refusal>, Duration)>,
    shortest: Duration,
    longest: Duration,
    /// The longest each pair of consecutive decisions can be apart.
    gaps: Vec<Duration>,
}

impl Drive {
    fn admitted(&self) -> f64 {
        self.calls.iter().filter(|(d, _)| d.is_ok()).count() as f64
    }

    /// Whether `admitted` matches a bucket of `rate` per second and `burst`
    /// that started the drive holding from `from` to `to` tokens: what
    /// accrued between the first and the last decision, within one token at
    /// either end. A pause between two decisions longer than the bucket
    /// takes to fill (a stalled host) lets tokens overflow; the lower bound
    /// leaves those out.
    fn admitted_as(&self, rate: f64, burst: f64, from: f64, to: f64) -> bool {
        let admitted = self.admitted();
        let fill = burst / rate;
        let overflow: f64 = self
            .gaps
            .iter()
            .map(|gap| (gap.as_secs_f64() - fill).max(0.0))
            .sum();
        let low = from + rate * (self.shortest.as_secs_f64() - overflow) - 1.0;
        let high = to + rate * self.longest.as_secs_f64() + 1.0;
        eprintln!(
            "admitted {admitted}, expected {low:.1}..={high:.1} ({:?}..{:?} at {rate}/s)",
            self.shortest, self.longest
        );
        (low..=high).contains(&admitted)
    }
}

fn source(decision: &Result<Source, Refusal>) -> Source {
    match decision {
        Ok(source) | Err(Refusal::RateLimited { source, .. }) => *source,
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_dead_redis_costs_at_most_the_timeout_then_the_fallback_decides_until_it_returns()
{
    // Long enough that a loaded host does not time out a call to a Redis
    // that is up (the up phase expects Redis to decide every request).
    let timeout = Duration::from_millis(100);
    let mut server = RedisServer::start();
    let limiter: RedisLimiter<&str> = builder(server.addr(), quota(100, 10))
        .timeout(timeout)
        .fallback(Fallback::Local { share: 0.5 })
        .build()
        .unwrap();

    // Redis up: Redis decides.
    let up = drive(&limiter, Duration::from_millis(300)).await;
    assert!(
        up.calls
            .iter()
            .all(|(d, _)| matches!(source(d), Source::Redis | Source::Cached))
    );
    assert_eq!(limiter.health(), Health::Redis);

    // Hung (SIGSTOP), then dead (SIGKILL): no call waits past the timeout,
    // and the local bucket (50/s, burst 5) decides every request.
    server.pause();
    let hung = drive(&limiter, Duration::from_millis(1000)).await;
    server.kill();
    let dead = drive(&limiter, Duration::from_millis(1000)).await;
    let slowest = hung
        .calls
        .iter()
        .chain(&dead.calls)
        .map(|(_, took)| *took)
        .max()
        .unwrap();
    // Scheduling slack on a loaded 2-core machine; a hung call without the
    // timeout would wait forever.
    eprintln!("slowest decision while redis was hung or dead: {slowest:?} (timeout {timeout:?})");
    assert!(
        slowest <= timeout + Duration::from_millis(50),
        "slowest decision {slowest:?}"
    );
    let timeouts = hung
        .calls
        .iter()
        .filter(|(_, took)| *took >= timeout)
        .count();
    // Three before the breaker opens (300 ms), and at most one round of
    // three half-open probes: the default open duration (500 ms ± 20 %)
    // ends inside the 1 s the server is hung, and the next one cannot.
    assert!(
        (1..=6).contains(&timeouts),
        "the breaker opens after 3 timeouts and probes at most once ({timeouts})"
    );
    // A refusal Redis gave just before the pause is remembered until the
    // key's next token conforms (at most 10 ms at 100/s): the first requests
    // of the hung phase may still be refused from that cache, without a
    // round trip. Every decision after them is the fallback's.
    let cached = hung
        .calls
        .iter()
        .take_while(|(d, _)| source(d) == Source::Cached)
        .count();
    for (decision, _) in &hung.calls[..cached] {
        assert!(
            matches!(decision, Err(Refusal::RateLimited { retry_after, .. }) if *retry_after <= Duration::from_millis(10)),
            "a cached decision is a refusal for under one token's interval: {decision:?}"
        );
    }
    assert!(cached <= 5, "{cached} cached refusals at 2 ms spacing");
    for (decision, _) in hung.calls[cached..].iter().chain(&dead.calls) {
        assert_eq!(source(decision), Source::Fallback, "{decision:?}");
    }
    assert!(matches!(limiter.health(), Health::Fallback { .. }));
    // About 1 s at 50/s (the bucket may start anywhere from empty to full,
    // burst 5).
    assert!(
        dead.admitted_as(50.0, 5.0, 0.0, 5.0),
        "the local fallback admits at half the quota"
    );
    let stats = limiter.stats();
    assert!(stats.errors >= 3);
    assert!(stats.fallback_decisions as usize >= hung.calls.len() - cached + dead.calls.len());

    // Redis back: after the breaker's open duration a probe finds it and
    // Redis decides again, with the global quota (a fresh, empty Redis: the
    // full burst of 10, then 100/s).
    server.restart();
    let back_by = Instant::now() + Duration::from_secs(8);
    while limiter.health() != Health::Redis {
        assert!(Instant::now() < back_by, "redis was not used again");
        let _ = limiter.acquire("probe", 1).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = drive(&limiter, Duration::from_millis(1000)).await;
    assert!(
        again
            .calls
            .iter()
            .all(|(d, _)| matches!(source(d), Source::Redis | Source::Cached))
    );
    // Offered about 500/s; the global quota allows the burst of 10, then
    // 100/s.
    assert!(
        again.admitted_as(100.0, 10.0, 10.0, 10.0),
        "Redis admits at the global quota again"
    );
}

#[tokio::test]
async fn without_redis_fail_open_admits_and_fail_closed_refuses() {
    let addr = dead_addr();
    let open: RedisLimiter<&str> = builder(addr, quota(10, 1))
        .fallback(Fallback::Open)
        .build()
        .unwrap();
    let closed: RedisLimiter<&str> = builder(addr, quota(10, 1))
        .fallback(Fallback::Closed)
        .build()
        .unwrap();
    for _ in 0..20 {
        assert_eq!(open.acquire("k", 1).await, Ok(Source::FailOpen));
        assert!(matches!(
            closed.acquire("k", 1).await,
            Err(Refusal::Unavailable { .. })
        ));
    }
    // After three failures the breaker answers without trying Redis, and
    // says when it will try again.
    assert_eq!(
        closed.health(),
        Health::Fallback {
            state: floodwall_breaker::State::Open,
            cause: Some(ErrorClass::Unreachable)
        }
    );
    let Err(Refusal::Unavailable { retry_after }) = closed.acquire("k", 1).await else {
        panic!("fail closed");
    };
    assert!(retry_after.is_some_and(|d| d <= Duration::from_millis(1200)));
    assert_eq!(closed.stats().errors, 3);
    assert_eq!(closed.stats().errors_by_class.unreachable, 3);
}

#[tokio::test]
async fn the_layer_calls_the_service_only_for_admitted_requests_and_refuses_with_a_429_rejection() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<String> = builder(server.addr(), quota(1, 2)).build().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let layer = RedisRateLimitLayer::new(limiter, |req: &(Option<&'static str>, u32)| {
        req.0.map(str::to_owned)
    })
    .weigh(|req: &(Option<&'static str>, u32)| req.1);
    let svc = layer.layer(service_fn(move |_req: (Option<&'static str>, u32)| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>("served") }
    }));

    assert_eq!(
        svc.clone().oneshot((Some("alice"), 1)).await.unwrap(),
        "served"
    );
    assert_eq!(
        svc.clone().oneshot((Some("alice"), 1)).await.unwrap(),
        "served"
    );
    let err = svc.clone().oneshot((Some("alice"), 1)).await.unwrap_err();
    let rejected = Rejected::find(&*err).expect("a floodwall rejection");
    assert_eq!(rejected.kind(), RejectKind::RateLimited);
    assert!(rejected.get::<RateLimited>().is_some());
    assert!(rejected.retry_after().is_some_and(|d| d > Duration::ZERO));
    assert_eq!(rejected.rate_limit().map(|p| p.name()), Some("test"));
    // Another key has its own bucket; no key means no limit.
    assert_eq!(
        svc.clone().oneshot((Some("bob"), 2)).await.unwrap(),
        "served"
    );
    for _ in 0..5 {
        svc.clone().oneshot((None, 1)).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::Relaxed), 3 + 5);
}

#[tokio::test]
async fn the_layer_fails_closed_with_a_503_rejection() {
    let limiter: RedisLimiter<&str> = builder(dead_addr(), quota(10, 1))
        .fallback(Fallback::Closed)
        .build()
        .unwrap();
    let svc = RedisRateLimitLayer::new(limiter, |_: &()| Some("k"))
        .layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
    let err = svc.oneshot(()).await.unwrap_err();
    let rejected = Rejected::find(&*err).unwrap();
    assert_eq!(rejected.kind(), RejectKind::Overloaded);
    assert!(rejected.get::<LimiterUnavailable>().is_some());
}

#[tokio::test]
async fn dropping_a_request_waiting_for_redis_gives_back_its_lease_claim_and_never_calls_the_service()
 {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = builder(server.addr(), quota(1000, 100))
        .lease(10, Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let mut svc = RedisRateLimitLayer::new(limiter.clone(), |_: &()| Some("k")).layer(service_fn(
        move |()| {
            flag.store(true, Ordering::Relaxed);
            async { Ok::<_, BoxError>(()) }
        },
    ));
    server.pause();
    let fut = std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map(|()| svc.call(()));
    let mut fut = Box::pin(fut.unwrap());
    // Poll once: the lease fetch is now in flight, against a frozen Redis.
    assert!(matches!(futures_poll(&mut fut).await, Poll::Pending));
    drop(fut);
    server.resume();
    assert!(!called.load(Ordering::Relaxed));
    // The claim was released: the next request fetches the lease.
    assert_eq!(limiter.acquire("k", 1).await, Ok(Source::Redis));
    assert_eq!(limiter.leased(&"k"), 9);
    assert_eq!(limiter.acquire("k", 1).await, Ok(Source::Lease));
}

/// Polls `fut` exactly once.
async fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_the_field_named() {
    let client = client(dead_addr());
    let q = quota(10, 1);
    let err = |b: Builder| b.build::<&str>().unwrap_err().field();
    let base = || RedisLimiter::builder(client.clone(), q);
    assert_eq!(err(base().timeout(Duration::ZERO)), "timeout");
    assert_eq!(err(base().capacity(0)), "capacity");
    assert_eq!(
        err(base().lease(0, Duration::from_millis(1))),
        "lease.max_tokens"
    );
    assert_eq!(err(base().lease(5, Duration::ZERO)), "lease.max_age");
    for share in [0.0, -1.0, 1.5, f64::NAN] {
        assert_eq!(
            err(base().fallback(Fallback::Local { share })),
            "fallback.share"
        );
    }
}

#[tokio::test]
async fn on_a_redis_cluster_each_key_is_decided_by_the_node_that_owns_its_slot() {
    use floodwall_redis::redis::cluster::ClusterClient;
    use floodwall_redis::test_util::RedisCluster;

    let cluster = RedisCluster::start(3);
    // The client knows only the first node; redis-rs finds the others.
    let seed = ClusterClient::new(vec![cluster.urls()[0].clone()]).unwrap();
    let limiter: RedisLimiter<u32> = RedisLimiter::builder(seed, quota(1, 5))
        .name("test")
        .timeout(ROUND_TRIP)
        .build()
        .unwrap();
    for user in 0..30 {
        for _ in 0..5 {
            assert_eq!(
                limiter.acquire(user, 1).await,
                Ok(Source::Redis),
                "user {user}"
            );
        }
        // Each key's bucket is one bucket, wherever it lives.
        assert!(
            limiter.acquire(user, 1).await.is_err(),
            "user {user} over its burst"
        );
    }
    assert_eq!(limiter.stats().errors, 0);
    let keys = cluster.keys_per_node();
    assert_eq!(keys.iter().sum::<i64>(), 30, "one key per user: {keys:?}");
    assert!(
        keys.iter().all(|&n| n > 0),
        "keys spread over every node: {keys:?}"
    );
}

/// Reconfigured while it serves: each key in Redis keeps the tokens it
/// has, capped at the new burst, converted at its next decision; no key is
/// handed a fresh burst; identity changes are refused.
#[tokio::test]
async fn a_reconfigured_quota_carries_each_keys_tokens_over_in_redis() {
    let server = RedisServer::start();
    let limiter: RedisLimiter<&str> = builder(server.addr(), quota(1, 5)).build().unwrap();
    let admitted = |limiter: &RedisLimiter<&'static str>, key: &'static str, tries: usize| {
        let limiter = limiter.clone();
        async move {
            let mut n = 0;
            for _ in 0..tries {
                if limiter.acquire(key, 1).await.is_ok() {
                    n += 1;
                }
            }
            n
        }
    };
    let spent_at = Instant::now();
    assert_eq!(admitted(&limiter, "spent", 5).await, 5);
    assert_eq!(admitted(&limiter, "three", 2).await, 2);
    assert_eq!(admitted(&limiter, "full", 0).await, 0);
    assert!(limiter.acquire("spent", 1).await.is_err());

    // Burst 5 → 4 at the same rate: "three" keeps 3, "full" is capped at 4.
    let mut config = limiter.config();
    config.quota = quota(1, 4);
    limiter.reconfigure(&config).unwrap();
    assert_eq!(limiter.quota(), quota(1, 4));
    assert_eq!(limiter.policy().quota(), 1);
    assert_eq!(admitted(&limiter, "three", 10).await, 3);
    assert_eq!(admitted(&limiter, "full", 10).await, 4);
    // The spent key is not handed a fresh burst; Redis decides (the
    // remembered refusal was forgotten) and refuses.
    assert!(matches!(
        limiter.acquire("spent", 1).await,
        Err(Refusal::RateLimited {
            source: Source::Redis,
            ..
        })
    ));
    // Raised to 20/s: the spent key refills at the new rate from the change
    // (converted at its next decision, as of the change instant).
    config.quota = quota(20, 10);
    let changed = Instant::now();
    limiter.reconfigure(&config).unwrap();
    tokio::time::sleep(Duration::from_millis(260)).await;
    let refilled = admitted(&limiter, "spent", 8).await;
    // 5.2 tokens at 20/s after 260 ms, never fewer; more only by what a
    // late last call found (one token per 50 ms it was late) and by the
    // part of a token the key had refilled at 1/s before the change.
    let carried = changed.duration_since(spent_at).as_secs_f64();
    let most = (20.0 * changed.elapsed().as_secs_f64() + carried).floor() as usize;
    assert!(
        refilled >= 5 && refilled <= most,
        "{refilled} admitted after {:?} at 20/s",
        changed.elapsed()
    );

    // Identity changes are refused and change nothing.
    let mut renamed = limiter.config();
    renamed.name = "other".into();
    assert_eq!(limiter.reconfigure(&renamed).unwrap_err().field(), "name");
    let mut open = limiter.config();
    open.fallback = Fallback::Open;
    assert_eq!(limiter.reconfigure(&open).unwrap_err().field(), "fallback");
    assert_eq!(limiter.quota(), quota(20, 10));
}
