//! The distributed limiter's decision paths against a real `redis-server`
//! on loopback: a round trip to the script, a leased token, a remembered
//! refusal, and the local fallback with Redis's breaker open.
//! `cargo bench -p floodwall-benches --bench redis` (starts its own
//! `redis-server`; `scripts/ensure-redis-server.sh` installs it).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::redis::{Fallback, RedisConnection, RedisLimiter};
use floodwall::token_bucket::Quota;
use floodwall_redis::test_util::RedisServer;

fn decisions(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let client = RedisConnection::open(&server.url()).expect("a redis URL");
    let build = |name: &str, quota: Quota| {
        RedisLimiter::builder(client.clone(), quota).name(name.to_owned())
    };
    let plenty = Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(1_000_000_000))
        .expect("a valid quota");
    let mut g = c.benchmark_group("redis");

    let round_trip: RedisLimiter<&str> = build("round_trip", plenty).build().expect("config");
    g.bench_function("round-trip", |b| {
        b.iter(|| rt.block_on(round_trip.acquire("k", 1)).expect("admitted"));
    });

    let leased: RedisLimiter<&str> = build("leased", plenty)
        .lease(100, Duration::from_secs(1))
        .build()
        .expect("config");
    g.bench_function("lease-100", |b| {
        b.iter(|| rt.block_on(leased.acquire("k", 1)).expect("admitted"));
    });

    let exhausted: RedisLimiter<&str> = build("cached", Quota::per_hour(1).expect("quota"))
        .build()
        .expect("config");
    let _ = rt.block_on(exhausted.acquire("k", 1));
    let _ = rt.block_on(exhausted.acquire("k", 1));
    g.bench_function("cached-refusal", |b| {
        b.iter(|| rt.block_on(exhausted.acquire("k", 1)).expect_err("refused"));
    });

    let away: RedisLimiter<&str> = build("fallback", plenty)
        .fallback(Fallback::Local { share: 1.0 })
        .build()
        .expect("config");
    away.breaker().force_open();
    g.bench_function("fallback-local", |b| {
        b.iter(|| rt.block_on(away.acquire("k", 1)).expect("admitted"));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = decisions
}
criterion_main!(benches);
