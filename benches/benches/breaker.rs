//! The circuit breaker's closed-state overhead per request, next to
//! tower-resilience's breaker, in one run.
//! `cargo bench -p floodwall-benches --bench breaker`.

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::breaker::{BreakerConfig, BreakerLayer};
use floodwall_benches::{ReadyService, poll_once, ready_call};
use tower::{Layer, ServiceExt};

fn closed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("breaker");

    let bare = ReadyService;
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, bare.clone().oneshot(black_box(1u32))).unwrap())
    });
    let timed = BreakerLayer::new(BreakerConfig::default())
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, timed.clone().oneshot(black_box(1u32))).unwrap())
    });
    let untimed = BreakerLayer::new(BreakerConfig {
        detect_slow_calls: false,
        ..Default::default()
    })
    .unwrap()
    .layer(ReadyService);
    g.bench_function("floodwall-no-slow-calls/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, untimed.clone().oneshot(black_box(1u32))).unwrap())
    });
    let resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("tower-resilience/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, resilience.clone().oneshot(black_box(1u32))).unwrap())
    });

    // The same services driven in place (no clone per request).
    let mut bare = bare;
    g.bench_function("bare/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut bare, black_box(1u32)).unwrap())
    });
    let mut timed = timed;
    g.bench_function("floodwall/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut timed, black_box(1u32)).unwrap())
    });
    let mut untimed = untimed;
    g.bench_function("floodwall-no-slow-calls/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut untimed, black_box(1u32)).unwrap())
    });
    let mut resilience = resilience;
    g.bench_function("tower-resilience/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut resilience, black_box(1u32)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = closed
}
criterion_main!(benches);
