//! The server deadline layer's per-request overhead, next to tower's
//! `Timeout`, in one run. `cargo bench -p floodwall-benches --bench deadline`.

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall_benches::{ReadyService, poll_once};
use tower::timeout::TimeoutLayer;
use tower::{Layer, ServiceExt};

fn server(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("deadline");
    let with_header = http::Request::builder()
        .header("grpc-timeout", "2S")
        .body(())
        .unwrap();
    let without = http::Request::new(());

    let bare = ReadyService;
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| {
            poll_once(
                &mut cx,
                bare.clone().oneshot(black_box(with_header.clone())),
            )
            .unwrap()
        })
    });
    let timeout = TimeoutLayer::new(Duration::from_secs(2)).layer(ReadyService);
    g.bench_function("tower-timeout/clone+oneshot", |b| {
        b.iter(|| {
            poll_once(
                &mut cx,
                timeout.clone().oneshot(black_box(with_header.clone())),
            )
            .unwrap()
        })
    });
    let deadline = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall-grpc-timeout/clone+oneshot", |b| {
        b.iter(|| {
            poll_once(
                &mut cx,
                deadline.clone().oneshot(black_box(with_header.clone())),
            )
            .unwrap()
        })
    });
    g.bench_function("floodwall-no-header/clone+oneshot", |b| {
        b.iter(|| {
            poll_once(
                &mut cx,
                deadline.clone().oneshot(black_box(without.clone())),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = server
}
criterion_main!(benches);
