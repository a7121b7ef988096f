//! The sliding-window layers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window, WindowMode};
use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt, service_fn};

fn echo() -> impl tower::Service<u32, Response = u32, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|n: u32| async move { Ok::<_, BoxError>(n) })
}

#[tokio::test(start_paused = true)]
async fn the_counter_layer_refuses_with_policy_and_exact_retry_after() {
    let layer = SlidingWindowLayer::builder(Window::per_second(2).unwrap())
        .name("search")
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(2).await.unwrap();
    let err = svc.clone().oneshot(3).await.unwrap_err();
    let r = Rejected::find(&*err).unwrap();
    assert_eq!(r.kind(), RejectKind::RateLimited);
    // Next window: 2·(W − e)/W < 2 from its second nanosecond.
    assert_eq!(
        r.retry_after(),
        Some(Duration::from_secs(1) + Duration::from_nanos(1))
    );
    let policy = r.rate_limit().unwrap();
    assert_eq!(
        (policy.name(), policy.quota(), policy.window()),
        ("search", 2, Duration::from_secs(1))
    );
    assert_eq!(handle.limiter().remaining(Instant::now()), 0);
    advance(Duration::from_millis(1500)).await;
    assert_eq!(svc.clone().oneshot(4).await.unwrap(), 4, "estimate 1.0 < 2");
}

#[tokio::test(start_paused = true)]
async fn clones_and_routes_share_one_window() {
    let layer = SlidingWindowLayer::builder(
        SlidingWindowConfig::from(Window::per_second(3).unwrap()).mode(WindowMode::Fixed),
    )
    .build()
    .unwrap();
    let a = layer.layer(echo());
    let b = layer.clone().layer(echo());
    let mut admitted = 0;
    for _ in 0..5 {
        admitted += usize::from(a.clone().oneshot(1).await.is_ok());
        admitted += usize::from(b.clone().oneshot(1).await.is_ok());
    }
    assert_eq!(admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn keyed_logs_limit_each_client() {
    let layer = SlidingWindowLayer::builder(
        SlidingWindowConfig::from(Window::new(2, Duration::from_secs(60)).unwrap())
            .mode(WindowMode::Log),
    )
    .capacity(1000)
    .build_keyed(|ip: &IpAddr| Some(*ip))
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        |ip: IpAddr| async move { Ok::<_, BoxError>(ip) },
    ));
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    for ip in [a, a, b, b] {
        svc.clone().oneshot(ip).await.unwrap();
    }
    assert!(svc.clone().oneshot(a).await.is_err());
    assert!(svc.clone().oneshot(b).await.is_err());
    assert_eq!(handle.limiter().limiter().len(), 2);
    assert_eq!(handle.limiter().limiter().remaining(&a, Instant::now()), 0);
}

#[tokio::test(start_paused = true)]
async fn keyed_counters_keep_memory_under_capacity() {
    let layer = SlidingWindowLayer::builder(Window::per_minute(5).unwrap())
        .capacity(1_000)
        .build_keyed(|n: &u32| Some(*n))
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    for n in 0..20_000 {
        svc.clone().oneshot(n).await.unwrap();
    }
    let keys = handle.limiter().limiter();
    assert!(keys.len() <= 1_000);
    assert_eq!(
        keys.evicted_idle() + keys.evicted_in_debt(),
        20_000 - keys.len() as u64
    );
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn config_as_data() {
    let cfg: SlidingWindowConfig =
        serde_json::from_str(r#"{ "name": "logins", "limit": 3, "window": "15m" }"#).unwrap();
    let layer = SlidingWindowLayer::new(cfg).unwrap();
    assert_eq!(layer.handle().name(), "logins");
    let bad = SlidingWindowConfig::new(70_000, Duration::from_secs(1)).mode(WindowMode::Log);
    assert_eq!(
        SlidingWindowLayer::new(bad).unwrap_err().to_string(),
        "limit must be at most 65,535 per window (use a shorter window or a token bucket) (got 70000)"
    );
    assert!(serde_json::from_str::<SlidingWindowConfig>(r#"{ "limit": 1 }"#).is_err());
}
