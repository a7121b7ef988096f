//! The admission queue's uncontended per-request overhead (a free worker,
//! nobody waiting), next to tower's `ConcurrencyLimit` and tower-resilience's
//! bulkhead and adaptive limiter, in one run.
//! `cargo bench -p floodwall-benches --bench codel`.

use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall_benches::{ReadyService, both_ways};
use tower::Layer;
use tower::limit::ConcurrencyLimitLayer;

fn uncontended(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("codel");

    both_ways(&mut g, &mut cx, "bare", ReadyService);
    let codel = CodelLayer::new(CodelConfig::with_workers(64))
        .unwrap()
        .layer(ReadyService);
    both_ways(&mut g, &mut cx, "floodwall", codel);
    let limit = ConcurrencyLimitLayer::new(64).layer(ReadyService);
    both_ways(&mut g, &mut cx, "tower-concurrency-limit", limit);
    let bulkhead = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(64)
        .reject_when_full()
        .build()
        .unwrap()
        .layer(ReadyService);
    both_ways(&mut g, &mut cx, "tower-resilience-bulkhead", bulkhead);
    let aimd = tower_resilience_adaptive::Aimd::builder()
        .initial_limit(64)
        .max_limit(64)
        .build()
        .unwrap();
    let adaptive = tower_resilience_adaptive::AdaptiveLimiterLayer::new(aimd).layer(ReadyService);
    both_ways(&mut g, &mut cx, "tower-resilience-adaptive", adaptive);
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = uncontended
}
criterion_main!(benches);
