//! The whole floodwall stack on one request path, next to the nearest
//! stacks built from tower's and tower-resilience's middleware, in one run.
//! `cargo bench -p floodwall-benches --bench stack`.
//!
//! The floodwall stack is what a service in the middle of a call graph runs
//! (the room service's server side, then the gateway's client side toward
//! the next service): the server deadline (`grpc-timeout`), a token bucket,
//! DAGOR admission, the CoDel queue, and for the outbound call a retry with
//! its budget, deadline propagation, collaborative priority admission, the
//! circuit breaker and SRE throttling. Nothing is refused: every layer
//! takes its admit path. Every iteration clones the inbound request (with
//! its `grpc-timeout` and priority headers); `bare` is that clone and the
//! answer alone. The `by-layer/*` rows build the same stack one layer at a
//! time, so each row less the one before is what that layer adds in place.

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::breaker::{BreakerConfig, BreakerLayer};
use floodwall::codel::{CodelConfig, CodelLayer, TimingFromExtensions};
use floodwall::deadline::{
    PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    Wire,
};
use floodwall::priority::{
    AdmissionConfig, AdmissionLayer, PriorityClientConfig, PriorityClientLayer,
};
use floodwall::throttle::{RetryConfig, RetryLayer, ThrottleConfig, ThrottleLayer};
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use floodwall_benches::{Respond, ready_call};
use tower::ServiceBuilder;

/// Benchmarks `ServiceBuilder::new().layer(a)`, then `.layer(a).layer(b)`,
/// and so on, each around [`Respond`], named `by-layer/{n}-{name}`. The
/// layer expressions are evaluated afresh for each stack.
macro_rules! by_layer {
    ($g:expr, $cx:expr, $req:expr; $($name:literal => $layer:expr),+ $(,)?) => {
        by_layer!(@next $g, $cx, $req, 1usize; []; $($name => $layer),+)
    };
    (@next $g:expr, $cx:expr, $req:expr, $n:expr; [$($done:expr),*]; $name:literal => $layer:expr $(, $rest:literal => $more:expr)*) => {
        {
            let mut stack = ServiceBuilder::new()$(.layer($done))*.layer($layer).service(Respond);
            $g.bench_function(format!("by-layer/{}-{}", $n, $name), |b| {
                b.iter(|| ready_call($cx, &mut stack, black_box($req.clone())).unwrap())
            });
        }
        by_layer!(@next $g, $cx, $req, $n + 1; [$($done,)* $layer]; $($rest => $more),*)
    };
    (@next $g:expr, $cx:expr, $req:expr, $n:expr; [$($done:expr),*];) => {};
}

fn stacks(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("stack");
    let inbound = http::Request::builder()
        .header("grpc-timeout", "2S")
        .header("x-floodwall-priority", "3-40")
        .body(())
        .unwrap();

    let mut bare = Respond;
    g.bench_function("bare/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut bare, black_box(inbound.clone())).unwrap())
    });

    let open = Quota::per_second(1_000_000_000)
        .unwrap()
        .with_burst(u32::MAX)
        .unwrap();
    let deadline = || {
        ServerDeadlineLayer::new(ServerDeadlineConfig {
            wire: Wire::Grpc,
            trust_inbound: true,
            max: Some(Duration::from_secs(2)),
        })
        .unwrap()
    };
    let bucket = || TokenBucketLayer::new(open).unwrap();
    let admission = || {
        AdmissionLayer::builder(AdmissionConfig::default())
            .trust_inbound(true)
            .build()
            .unwrap()
    };
    let codel = || {
        CodelLayer::builder(CodelConfig::with_workers(64))
            .timing(TimingFromExtensions)
            .build()
            .unwrap()
    };
    let retry = || RetryLayer::builder(RetryConfig::default()).build().unwrap();
    let propagate = || {
        PropagateDeadlineLayer::new(PropagateDeadlineConfig {
            wire: Wire::Grpc,
            ..PropagateDeadlineConfig::default()
        })
        .unwrap()
    };
    let collaborative = || PriorityClientLayer::new(PriorityClientConfig::default()).unwrap();
    let breaker = || BreakerLayer::new(BreakerConfig::default()).unwrap();
    let throttle = || ThrottleLayer::new(ThrottleConfig::default()).unwrap();
    let server = || {
        ServiceBuilder::new()
            .layer(deadline())
            .layer(bucket())
            .layer(admission())
            .layer(codel())
    };
    let client = || {
        ServiceBuilder::new()
            .layer(retry())
            .layer(propagate())
            .layer(collaborative())
            .layer(breaker())
            .layer(throttle())
    };

    let mut full = server().layer(client()).service(Respond);
    g.bench_function("floodwall-full/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut full, black_box(inbound.clone())).unwrap())
    });
    let mut server_half = server().service(Respond);
    g.bench_function("floodwall-server/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut server_half, black_box(inbound.clone())).unwrap())
    });
    let mut client_half = client().service(Respond);
    g.bench_function("floodwall-client/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut client_half, black_box(inbound.clone())).unwrap())
    });
    by_layer!(g, &mut cx, inbound;
        "deadline" => deadline(),
        "token-bucket" => bucket(),
        "admission" => admission(),
        "codel" => codel(),
        "retry" => retry(),
        "propagate" => propagate(),
        "collaborative" => collaborative(),
        "breaker" => breaker(),
        "throttle" => throttle(),
    );

    // tower's nearest: a timeout, load shedding over a concurrency limit, a
    // rate limit (per instance: driven in place, as behind a `Buffer`).
    let mut tower_stack = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .load_shed()
        .concurrency_limit(64)
        .rate_limit(u64::MAX, Duration::from_secs(1))
        .service(Respond);
    g.bench_function("tower/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut tower_stack, black_box(inbound.clone())).unwrap())
    });

    // tower-resilience's nearest: rate limiter, bulkhead, circuit breaker.
    let mut resilience = ServiceBuilder::new()
        .layer(
            tower_resilience_ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(usize::MAX / 2)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::ZERO)
                .build()
                .unwrap(),
        )
        .layer(
            tower_resilience_bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(64)
                .reject_when_full()
                .build()
                .unwrap(),
        )
        .layer(
            tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .unwrap(),
        )
        .service(Respond);
    g.bench_function("tower-resilience/ready+call", |b| {
        b.iter(|| ready_call(&mut cx, &mut resilience, black_box(inbound.clone())).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = stacks
}
criterion_main!(benches);
