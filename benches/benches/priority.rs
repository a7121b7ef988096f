//! The priority admission server layer's per-request overhead when not
//! overloaded, next to tower's `LoadShed` (the nearest existing shedding
//! layer), in one run. `cargo bench -p floodwall-benches --bench priority`.

use std::hint::black_box;
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::core::{Criticality, Priority};
use floodwall::priority::{AdmissionConfig, AdmissionLayer, Mode};
use floodwall_benches::{Respond, ready_call};
use tower::Layer;
use tower::load_shed::LoadShedLayer;

fn server(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("priority");
    let mut with_extension = http::Request::new(());
    with_extension
        .extensions_mut()
        .insert(Priority::new(3, 40).unwrap());
    let with_header = http::Request::builder()
        .header("x-floodwall-priority", "3-40")
        .body(())
        .unwrap();
    let mut with_class = http::Request::new(());
    with_class.extensions_mut().insert(Criticality::Critical);

    let mut bare = Respond;
    g.bench_function("bare/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut bare, black_box(with_extension.clone())).unwrap())
    });
    let mut shed = LoadShedLayer::new().layer(Respond);
    g.bench_function("tower-load-shed/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut shed, black_box(with_extension.clone())).unwrap())
    });
    let mut dagor = AdmissionLayer::new(AdmissionConfig::default())
        .unwrap()
        .layer(Respond);
    g.bench_function("floodwall-extension/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut dagor, black_box(with_extension.clone())).unwrap())
    });
    let mut trusted = AdmissionLayer::builder(AdmissionConfig::default())
        .trust_inbound(true)
        .build()
        .unwrap()
        .layer(Respond);
    g.bench_function("floodwall-header/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut trusted, black_box(with_header.clone())).unwrap())
    });
    let mut criticality = AdmissionLayer::builder(AdmissionConfig::default())
        .mode(Mode::Criticality)
        .build()
        .unwrap()
        .layer(Respond);
    g.bench_function("floodwall-criticality/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut criticality, black_box(with_class.clone())).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = server
}
criterion_main!(benches);
