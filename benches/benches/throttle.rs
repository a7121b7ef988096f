//! Adaptive throttling and the retry layer: per-request overhead when
//! nothing is throttled and no retry is taken, next to tower's `Retry` with
//! its `TpsBudget`, in one run. `cargo bench -p floodwall-benches --bench throttle`.

use std::future::Ready;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::throttle::{
    RetryBudget, RetryConfig, RetryLayer, SplitMix, ThrottleConfig, ThrottleLayer,
};
use floodwall_benches::{ReadyService, poll_once};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, ServiceExt};

/// tower's retry policy as its documentation builds one: retry errors while
/// the `TpsBudget` allows, deposit on success.
#[derive(Clone)]
struct BudgetPolicy(Arc<TpsBudget>);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for BudgetPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| std::future::ready(())),
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn overhead(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("throttle");

    let bare = ReadyService;
    g.bench_function("bare/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, bare.clone().oneshot(black_box(1u32))).unwrap())
    });
    let throttle = ThrottleLayer::builder(ThrottleConfig::default())
        .rng(SplitMix::new(1))
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall-throttle/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, throttle.clone().oneshot(black_box(1u32))).unwrap())
    });
    let retry = RetryLayer::builder(RetryConfig::default())
        .budget(Arc::new(RetryBudget::new(10.0, 0.1).unwrap()))
        .build()
        .unwrap()
        .layer(ReadyService);
    g.bench_function("floodwall-retry/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, retry.clone().oneshot(black_box(1u32))).unwrap())
    });
    let tower_retry = tower::retry::RetryLayer::new(BudgetPolicy(Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        10,
        0.2,
    ))))
    .layer(ReadyService);
    g.bench_function("tower-retry-tpsbudget/clone+oneshot", |b| {
        b.iter(|| poll_once(&mut cx, tower_retry.clone().oneshot(black_box(1u32))).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = overhead
}
criterion_main!(benches);
