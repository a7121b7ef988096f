//! The priority admission server layer's per-request overhead when not
//! overloaded, next to tower's `LoadShed` (the nearest existing shedding
//! layer), in one run. `cargo bench -p floodwall-benches --bench priority`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::core::{Criticality, Priority};
use floodwall::priority::{AdmissionConfig, AdmissionLayer, Mode};
use floodwall_benches::ready_call;
use tower::load_shed::LoadShedLayer;
use tower::{Layer, Service};

/// Answers every request at once with an empty body and a `content-type`,
/// as every gRPC response and nearly every HTTP response has (so the header
/// map already exists, as in real servers).
#[derive(Clone, Copy, Debug)]
struct Respond;

impl Service<http::Request<()>> for Respond {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        let mut res = http::Response::new(());
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        ready(Ok(res))
    }
}

fn server(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
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
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = server
}
criterion_main!(benches);
