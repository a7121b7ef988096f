//! The adaptive concurrency limit's per-request overhead (the limit not
//! reached: admit, call, sample, release) for every algorithm, next to
//! tower-resilience's adaptive limiter (AIMD and Vegas), in one run.
//! `cargo bench -p floodwall-benches --bench concurrency`.

use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::concurrency::{
    AdaptiveLimitLayer, Aimd, AimdConfig, Algorithm, Bbr, BbrConfig, ConcurrencyLimiter,
    EnvoyGradient, EnvoyGradientConfig, Gradient2, Gradient2Config, Partitions, Vegas, VegasConfig,
    WindowConfig, Windowed,
};
use floodwall_benches::{ReadyService, both_ways};
use tokio::time::Instant;
use tower::Layer;

const LIMIT: u32 = 1_000;

fn layer<A: Algorithm>(algorithm: A) -> AdaptiveLimitLayer<A> {
    AdaptiveLimitLayer::new(algorithm).expect("an algorithm is a valid config")
}

fn per_request(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("concurrency");

    both_ways(&mut g, &mut cx, "bare", ReadyService);
    let vegas = || {
        Vegas::new(VegasConfig {
            initial_limit: LIMIT,
            ..VegasConfig::default()
        })
        .unwrap()
    };
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-vegas",
        layer(vegas()).layer(ReadyService),
    );
    let windowed = Windowed::new(vegas(), WindowConfig::every(Duration::from_millis(100))).unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-vegas-windowed",
        layer(windowed).layer(ReadyService),
    );
    let gradient2 = Gradient2::new(Gradient2Config {
        initial_limit: 200,
        ..Gradient2Config::default()
    })
    .unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-gradient2",
        layer(gradient2).layer(ReadyService),
    );
    let aimd = Aimd::new(AimdConfig {
        initial_limit: LIMIT,
        ..AimdConfig::default()
    })
    .unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-aimd",
        layer(aimd).layer(ReadyService),
    );
    let envoy = EnvoyGradient::new(EnvoyGradientConfig::default()).unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-envoy",
        layer(envoy).layer(ReadyService),
    );
    let bbr = Bbr::with_cpu(BbrConfig::default(), || 0.5).unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "floodwall-bbr",
        layer(bbr).layer(ReadyService),
    );

    let tr_aimd = tower_resilience_adaptive::Aimd::builder()
        .initial_limit(LIMIT as usize)
        .max_limit(LIMIT as usize)
        .build()
        .unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "tower-resilience-aimd",
        tower_resilience_adaptive::AdaptiveLimiterLayer::new(tr_aimd).layer(ReadyService),
    );
    let tr_vegas = tower_resilience_adaptive::Vegas::builder()
        .initial_limit(LIMIT as usize)
        .max_limit(LIMIT as usize)
        .build()
        .unwrap();
    both_ways(
        &mut g,
        &mut cx,
        "tower-resilience-vegas",
        tower_resilience_adaptive::AdaptiveLimiterLayer::new(tr_vegas).layer(ReadyService),
    );
    g.finish();
}

/// The core alone: admit and release (no sample), and a partitioned admit.
fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("concurrency-core");
    let now = Instant::now();
    let plain = ConcurrencyLimiter::new(Aimd::new(AimdConfig::default()).unwrap());
    g.bench_function("acquire+ignore", |b| {
        b.iter(|| plain.ignore(plain.try_acquire(now).unwrap()));
    });
    let parts = ConcurrencyLimiter::partitioned(
        Aimd::new(AimdConfig::default()).unwrap(),
        Partitions::new(&[0.4, 0.4, 0.15, 0.05]).unwrap(),
    );
    g.bench_function("partitioned-acquire+ignore", |b| {
        b.iter(|| parts.ignore(parts.try_acquire_in(2, now).unwrap()));
    });
    g.bench_function("acquire+success(aimd)", |b| {
        b.iter(|| plain.success(plain.try_acquire(now).unwrap(), now));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = per_request, core
}
criterion_main!(benches);
