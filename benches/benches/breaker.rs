//! The circuit breaker's closed-state overhead per request, next to
//! tower-resilience's breaker, in one run.
//! `cargo bench -p floodwall-benches --bench breaker`.

use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::breaker::{BreakerConfig, BreakerLayer};
use floodwall_benches::{ReadyService, both_ways};
use tower::Layer;

fn closed(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("breaker");

    both_ways(&mut g, &mut cx, "bare", ReadyService);
    let timed = BreakerLayer::new(BreakerConfig::default())
        .unwrap()
        .layer(ReadyService);
    both_ways(&mut g, &mut cx, "floodwall", timed);
    let untimed = BreakerLayer::new(BreakerConfig {
        detect_slow_calls: false,
        ..Default::default()
    })
    .unwrap()
    .layer(ReadyService);
    both_ways(&mut g, &mut cx, "floodwall-no-slow-calls", untimed);
    let resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(ReadyService);
    both_ways(&mut g, &mut cx, "tower-resilience", resilience);
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = closed
}
criterion_main!(benches);
