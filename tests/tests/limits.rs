//! Every duration in every layer's config is bounded by
//! `floodwall::core::config::MAX_DURATION` (365 days) or a tighter bound of
//! its own, checked at build: past the bound (`Duration::MAX`, and one
//! nanosecond past 365 days) the layer is refused with a `ConfigError`
//! naming the field; at the bound it is refused naming the field (a tighter
//! bound) or it serves requests, an hour of virtual time apart, without a
//! panic. Nothing that passes validation may overflow an `Instant` on a
//! request.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use floodwall::core::ConfigError;
use floodwall::core::config::MAX_DURATION;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = Request<()>;

fn plain()
-> impl Service<Req, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    service_fn(|_: Req| async { Ok::<_, Infallible>(Response::new(())) })
}

/// Past every bound: far past, and one nanosecond past the shared one.
const PAST: [Duration; 2] = [
    Duration::MAX,
    MAX_DURATION.saturating_add(Duration::from_nanos(1)),
];

/// Past the bound `build` must refuse naming `field`; at the bound it must
/// refuse naming `field` or serve three requests without a panic.
async fn probe<L, F>(what: &str, field: &str, build: F)
where
    F: Fn(Duration) -> Result<L, ConfigError>,
    L: Layer<tower::util::BoxCloneSyncService<Req, Response<()>, Infallible>>,
    L::Service: Service<Req> + Send + 'static,
    <L::Service as Service<Req>>::Future: Send,
{
    for d in PAST {
        match build(d) {
            Err(err) => assert!(
                err.field().contains(field),
                "{what} = {d:?}: refused naming `{}` ({err}), not `{field}`",
                err.field()
            ),
            Ok(_) => panic!("{what} = {d:?} is past every bound and was accepted"),
        }
    }
    match build(MAX_DURATION) {
        Err(err) => assert!(
            err.field().contains(field),
            "{what} = MAX_DURATION: refused naming `{}` ({err}), not `{field}`",
            err.field()
        ),
        Ok(layer) => {
            let svc = layer.layer(tower::util::BoxCloneSyncService::new(plain()));
            let served = tokio::spawn(async move {
                let mut svc = svc;
                for _ in 0..3 {
                    if svc.ready().await.is_err() {
                        break;
                    }
                    let call = svc.call(Request::new(()));
                    drop(tokio::time::timeout(Duration::from_secs(1), call).await);
                    tokio::time::advance(Duration::from_secs(3600)).await;
                }
            })
            .await;
            assert!(
                served.is_ok(),
                "{what} = MAX_DURATION panicked on a request"
            );
        }
    }
}

fn run<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f);
}

#[test]
fn rate_limiters() {
    use floodwall::leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
    use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window};
    use floodwall::token_bucket::{Quota, TokenBucketConfig, TokenBucketLayer};
    run(async {
        probe("Quota period", "per", |d| {
            TokenBucketLayer::new(Quota::new(1, d)?)
        })
        .await;
        probe("token bucket max_wait", "max_wait", |d| {
            TokenBucketLayer::new(TokenBucketConfig {
                max_wait: d,
                ..TokenBucketConfig::from(Quota::per_second(10).unwrap())
            })
        })
        .await;
        probe("leaky bucket period", "per", |d| {
            LeakyBucketLayer::new(LeakyBucketConfig::from(Quota::new(1, d)?))
        })
        .await;
        probe("sliding window", "window", |d| {
            SlidingWindowLayer::new(SlidingWindowConfig::from(Window::new(10, d)?))
        })
        .await;
    });
}

#[test]
fn throttle_and_retry() {
    use floodwall::throttle::{Backoff, RetryConfig, RetryLayer, ThrottleConfig, ThrottleLayer};
    run(async {
        probe("throttle window", "window", |d| {
            ThrottleLayer::new(ThrottleConfig {
                window: d,
                ..ThrottleConfig::default()
            })
        })
        .await;
        probe("retry backoff.max", "backoff", |d| {
            RetryLayer::new(RetryConfig {
                backoff: Backoff {
                    max: d,
                    ..Backoff::default()
                },
                ..RetryConfig::default()
            })
        })
        .await;
        probe("retry max_pushback", "max_pushback", |d| {
            RetryLayer::new(RetryConfig {
                max_pushback: d,
                ..RetryConfig::default()
            })
        })
        .await;
    });
}

#[test]
fn breaker() {
    use floodwall::breaker::{BreakerConfig, BreakerLayer, Growth};
    run(async {
        probe("breaker open_duration", "open_duration", |d| {
            BreakerLayer::new(BreakerConfig {
                open_duration: d,
                ..BreakerConfig::default()
            })
        })
        .await;
        probe("breaker slow_call_duration", "slow_call_duration", |d| {
            BreakerLayer::new(BreakerConfig {
                slow_call_duration: d,
                ..BreakerConfig::default()
            })
        })
        .await;
        probe("breaker ramp", "ramp", |d| {
            BreakerLayer::new(BreakerConfig {
                ramp: Some(d),
                ..BreakerConfig::default()
            })
        })
        .await;
        probe("breaker growth.max", "growth", |d| {
            BreakerLayer::new(BreakerConfig {
                growth: Some(Growth {
                    multiplier: 2.0,
                    max: d,
                    jitter: 0.0,
                }),
                ..BreakerConfig::default()
            })
        })
        .await;
    });
}

#[test]
fn queues() {
    use floodwall::bulkhead::{BulkheadConfig, BulkheadLayer};
    use floodwall::codel::{CodelConfig, CodelLayer, Policy};
    run(async {
        probe("codel min_remaining", "min_remaining", |d| {
            CodelLayer::new(CodelConfig {
                min_remaining: d,
                ..CodelConfig::with_workers(4)
            })
        })
        .await;
        probe("codel interval", "interval", |d| {
            CodelLayer::new(CodelConfig {
                policy: Policy::FailAtScale {
                    target: Duration::from_millis(5),
                    interval: d,
                },
                ..CodelConfig::with_workers(4)
            })
        })
        .await;
        probe("bulkhead max_wait", "max_wait", |d| {
            BulkheadLayer::new(BulkheadConfig {
                max_wait: d,
                ..BulkheadConfig::default()
            })
        })
        .await;
    });
}

#[test]
fn adaptive_concurrency() {
    use floodwall::concurrency::{AdaptiveLimitLayer, AimdConfig, BbrConfig, EnvoyGradientConfig};
    run(async {
        probe("aimd timeout", "timeout", |d| {
            AdaptiveLimitLayer::new(AimdConfig {
                timeout: d,
                ..AimdConfig::default()
            })
        })
        .await;
        probe("envoy min_rtt_interval", "min_rtt_interval", |d| {
            AdaptiveLimitLayer::new(EnvoyGradientConfig {
                min_rtt_interval: d,
                ..EnvoyGradientConfig::default()
            })
        })
        .await;
        probe("envoy update_interval", "update_interval", |d| {
            AdaptiveLimitLayer::new(EnvoyGradientConfig {
                update_interval: d,
                ..EnvoyGradientConfig::default()
            })
        })
        .await;
        probe("bbr window", "window", |d| {
            AdaptiveLimitLayer::new(BbrConfig {
                window: d,
                ..BbrConfig::default()
            })
        })
        .await;
        probe("bbr cooling", "cooling", |d| {
            AdaptiveLimitLayer::new(BbrConfig {
                cooling: d,
                ..BbrConfig::default()
            })
        })
        .await;
        probe("bbr probe_rtt", "probe_rtt", |d| {
            AdaptiveLimitLayer::new(BbrConfig {
                probe_rtt: d,
                ..BbrConfig::default()
            })
        })
        .await;
    });
}

#[test]
fn deadlines_and_priority() {
    use floodwall::deadline::{
        PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    };
    use floodwall::priority::{
        AdmissionConfig, AdmissionLayer, AssignConfig, AssignPriorityLayer, PriorityClientConfig,
        PriorityClientLayer,
    };
    run(async {
        probe("server deadline max", "max", |d| {
            ServerDeadlineLayer::new(ServerDeadlineConfig {
                max: Some(d),
                ..Default::default()
            })
        })
        .await;
        probe("propagate timeout", "timeout", |d| {
            PropagateDeadlineLayer::new(PropagateDeadlineConfig {
                timeout: Some(d),
                ..Default::default()
            })
        })
        .await;
        probe("propagate margin", "margin", |d| {
            PropagateDeadlineLayer::new(PropagateDeadlineConfig {
                margin: d,
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            })
        })
        .await;
        probe("admission window", "window", |d| {
            AdmissionLayer::new(AdmissionConfig {
                window: d,
                ..AdmissionConfig::default()
            })
        })
        .await;
        probe("admission threshold", "threshold", |d| {
            AdmissionLayer::new(AdmissionConfig {
                threshold: d,
                ..AdmissionConfig::default()
            })
        })
        .await;
        probe("priority client level_ttl", "level_ttl", |d| {
            PriorityClientLayer::new(PriorityClientConfig {
                level_ttl: d,
                ..PriorityClientConfig::default()
            })
        })
        .await;
        probe("assign rotation", "rotation", |d| {
            AssignPriorityLayer::new(AssignConfig {
                rotation: d,
                ..AssignConfig::default()
            })
        })
        .await;
    });
}

#[test]
fn redis_limiter() {
    use floodwall::redis::{Quota, RedisConnection, RedisLimiter};
    run(async {
        let client = || RedisConnection::open("redis://127.0.0.1:9/").unwrap();
        let quota = Quota::per_second(10).unwrap();
        for d in PAST {
            let err = RedisLimiter::builder(client(), quota)
                .timeout(d)
                .build::<String>()
                .unwrap_err();
            assert_eq!(err.field(), "timeout", "{err}");
            let err = RedisLimiter::builder(client(), quota)
                .lease(10, d)
                .build::<String>()
                .unwrap_err();
            assert_eq!(err.field(), "lease.max_age", "{err}");
        }
        // Long keys name Redis keys of bounded length, one-to-one.
        let limiter = RedisLimiter::builder(client(), quota)
            .name("api")
            .build::<String>()
            .unwrap();
        let long = limiter.redis_key(&"u".repeat(100_000));
        assert!(
            long.len() <= limiter.redis_key(&String::new()).len() + 33,
            "{long}"
        );
        assert_ne!(long, limiter.redis_key(&"u".repeat(100_001)));
        assert!(limiter.redis_key(&"alice".to_owned()).ends_with("alice"));
    });
}

#[test]
fn a_keyed_exact_log_that_could_not_fit_in_memory_is_refused() {
    use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode};
    let config = |limit, capacity| SlidingWindowConfig {
        capacity,
        ..SlidingWindowConfig::from(Window::new(limit, Duration::from_secs(60)).unwrap())
            .mode(WindowMode::Log)
    };
    let keyed = |c: SlidingWindowConfig| {
        SlidingWindowLayer::builder(c)
            .build_keyed(|_: &Req| Some(1u8))
            .map(drop)
    };
    // 65,535 per window for 100,000 keys: 52 GB of rings. Refused.
    let err = keyed(config(65_535, 100_000)).unwrap_err();
    assert_eq!(err.field(), "capacity");
    assert!(err.to_string().contains("1 GiB"), "{err}");
    // 1,000 per window for 100,000 keys: 800 MB, accepted.
    keyed(config(1_000, 100_000)).unwrap();
    // The counter keeps 16 bytes per key whatever the limit.
    let counter = SlidingWindowConfig {
        mode: WindowMode::Sliding,
        ..config(65_535, 100_000)
    };
    keyed(counter).unwrap();
}

#[test]
fn bbr_buckets_are_bounded() {
    use floodwall::concurrency::{Bbr, BbrConfig};
    let err = Bbr::new(BbrConfig {
        buckets: u32::MAX,
        window: Duration::from_secs(3600),
        ..BbrConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.field(), "buckets");
    assert!(
        Bbr::new(BbrConfig {
            buckets: BbrConfig::MAX_BUCKETS,
            window: Duration::from_secs(3600),
            ..BbrConfig::default()
        })
        .is_ok()
    );
}
