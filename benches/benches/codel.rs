//! The admission queue's uncontended per-request overhead (a free worker,
//! nobody waiting), next to tower's `ConcurrencyLimit`, in one run.
//! `cargo bench -p floodwall-benches --bench codel`.

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall_benches::{ReadyService, poll_once, ready_call};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, ServiceExt};

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("codel");

    let bare = ReadyService;
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, bare.clone().oneshot(black_box(1u32))).unwrap())
    });
    let codel = CodelLayer::new(CodelConfig::with_workers(64))
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, codel.clone().oneshot(black_box(1u32))).unwrap())
    });
    let limit = ConcurrencyLimitLayer::new(64).layer(ReadyService);
    g.bench_function("tower-concurrency-limit/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, limit.clone().oneshot(black_box(1u32))).unwrap())
    });

    // Driven in place, the way a connection drives its service.
    let mut bare = bare;
    g.bench_function("bare/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut bare, black_box(1u32)).unwrap())
    });
    let mut codel = codel;
    g.bench_function("floodwall/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut codel, black_box(1u32)).unwrap())
    });
    let mut limit = limit;
    g.bench_function("tower-concurrency-limit/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut limit, black_box(1u32)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended
}
criterion_main!(benches);
