//! The leaky-bucket layers: meter refusals, shaper start times, and shaper
//! cancellation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer, LeakyMode};
use floodwall_ratelimit::Quota;
use tokio::time::{Instant, advance};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

type Svc = BoxCloneService<u32, u32, BoxError>;
type Starts = Arc<Mutex<Vec<Instant>>>;

/// A service that records when each call started, holding a token so that
/// leaked clones would show.
fn recording(token: Arc<()>) -> (Svc, Starts) {
    let starts: Starts = Arc::default();
    let log = starts.clone();
    let svc = BoxCloneService::new(service_fn(move |n: u32| {
        let _held = &token;
        log.lock().unwrap().push(Instant::now());
        async move { Ok::<_, BoxError>(n) }
    }));
    (svc, starts)
}

#[tokio::test(start_paused = true)]
async fn the_meter_refuses_overflow_with_retry_after() {
    let layer = LeakyBucketLayer::builder(Quota::per_second(10).unwrap().with_burst(2).unwrap())
        .name("uploads")
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, starts) = recording(Arc::new(()));
    let svc = layer.layer(inner);
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(2).await.unwrap();
    let err = svc.clone().oneshot(3).await.unwrap_err();
    let r = Rejected::find(&*err).unwrap();
    assert_eq!(r.kind(), RejectKind::RateLimited);
    assert_eq!(r.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(r.rate_limit().unwrap().name(), "uploads");
    assert_eq!(
        starts.lock().unwrap().len(),
        2,
        "the refused request never ran"
    );
    assert_eq!(handle.limiter().level(Instant::now()), 2);
}

#[tokio::test(start_paused = true)]
async fn the_shaper_starts_requests_one_interval_apart_and_refuses_a_full_queue() {
    let layer =
        LeakyBucketLayer::builder(LeakyBucketConfig::shaper(Quota::per_second(10).unwrap(), 2))
            .build()
            .unwrap();
    let handle = layer.handle();
    let (inner, starts) = recording(Arc::new(()));
    let svc = layer.layer(inner);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(handle.limiter().queued(Instant::now()), 2);
    let err = svc.clone().oneshot(9).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().retry_after(),
        Some(Duration::from_millis(100)),
        "room in the queue once the first waiter starts"
    );
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let starts: Vec<_> = starts.lock().unwrap().iter().map(|s| *s - t0).collect();
    let ms = Duration::from_millis;
    assert_eq!(starts, [ms(0), ms(100), ms(200)]);
}

#[tokio::test(start_paused = true)]
async fn dropped_shaper_waiters_leak_nothing_and_starts_stay_spaced() {
    let interval = Duration::from_millis(10);
    let layer = LeakyBucketLayer::builder(LeakyBucketConfig::shaper(
        Quota::per_second(100).unwrap(),
        30,
    ))
    .build()
    .unwrap();
    let token = Arc::new(());
    let (inner, starts) = recording(token.clone());
    let svc = layer.layer(inner);
    let baseline = Arc::strong_count(&token);

    let mut cx = Context::from_waker(Waker::noop());
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut futs = Vec::new();
    let mut give_up = Vec::new();
    let (mut done, mut dropped, mut refused) = (0, 0, 0);
    for step in 0..1500u64 {
        if step < 1000 {
            for _ in 0..next() % 3 {
                futs.push(Box::pin(svc.clone().oneshot(step as u32)));
                give_up.push(step + next() % 400);
            }
        }
        let mut i = 0;
        while i < futs.len() {
            if give_up[i] == step {
                drop(futs.swap_remove(i));
                give_up.swap_remove(i);
                dropped += 1;
                continue;
            }
            if let Poll::Ready(res) = futs[i].as_mut().poll(&mut cx) {
                if res.is_ok() {
                    done += 1;
                } else {
                    refused += 1;
                }
                drop(futs.swap_remove(i));
                give_up.swap_remove(i);
                continue;
            }
            i += 1;
        }
        advance(Duration::from_millis(1)).await;
    }
    assert!(futs.is_empty());
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), done, "dropped waiters never ran");
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= interval, "starts {:?} apart", w[1] - w[0]);
    }
    assert_eq!(
        Arc::strong_count(&token),
        baseline,
        "no service clone leaked"
    );
    assert!(done > 0 && dropped > 0 && refused > 0);
}

/// SPECS convention: a waiter that gives up does not give its slot back.
#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_keeps_its_slot_unused() {
    let layer =
        LeakyBucketLayer::builder(LeakyBucketConfig::shaper(Quota::per_second(10).unwrap(), 5))
            .build()
            .unwrap();
    let (inner, starts) = recording(Arc::new(()));
    let svc = layer.layer(inner);
    let t0 = Instant::now();
    let a = tokio::spawn(svc.clone().oneshot(1)); // starts at 0 ms
    let b = tokio::spawn(svc.clone().oneshot(2)); // slot at 100 ms
    tokio::task::yield_now().await;
    b.abort();
    let _ = b.await;
    // The newcomer is given the slot after B's, not B's.
    let c = tokio::spawn(svc.clone().oneshot(3));
    a.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    let starts: Vec<_> = starts.lock().unwrap().iter().map(|s| *s - t0).collect();
    let ms = Duration::from_millis;
    assert_eq!(starts, [ms(0), ms(200)]);
}

#[tokio::test(start_paused = true)]
async fn keyed_shaper_queues_each_key_separately() {
    let layer =
        LeakyBucketLayer::builder(LeakyBucketConfig::shaper(Quota::per_second(10).unwrap(), 1))
            .capacity(100)
            .build_keyed(|n: &u32| Some(*n % 2))
            .unwrap();
    let (inner, starts) = recording(Arc::new(()));
    let svc = layer.layer(inner);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let mut starts: Vec<_> = starts.lock().unwrap().iter().map(|s| *s - t0).collect();
    starts.sort();
    let ms = Duration::from_millis;
    assert_eq!(starts, [ms(0), ms(0), ms(100), ms(100)]);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn config_as_data() {
    let cfg: LeakyBucketConfig =
        serde_json::from_str(r#"{ "quota": { "rate": 5, "per": "1s", "burst": 2 } }"#).unwrap();
    let layer = LeakyBucketLayer::new(cfg.clone()).unwrap();
    assert_eq!(layer.handle().limiter().quota().burst(), 2);
    assert_eq!(layer.handle().limiter().queue(), None, "a meter by default");
    let shaper = LeakyBucketConfig {
        mode: LeakyMode::Shaper,
        ..cfg.clone()
    };
    let shaper = LeakyBucketLayer::new(shaper).unwrap();
    assert_eq!(shaper.handle().limiter().queue(), Some(0));
    let keyless = LeakyBucketLayer::builder(cfg.clone())
        .capacity(0)
        .build_keyed(|n: &u32| Some(*n))
        .unwrap_err();
    assert_eq!(keyless.to_string(), "capacity must be at least 1 key");
    let queued_meter = LeakyBucketConfig { queue: 3, ..cfg };
    assert_eq!(
        LeakyBucketLayer::new(queued_meter).unwrap_err().field(),
        "queue",
        "a meter never queues: a queue on one is a mistake, not ignored"
    );
    let typo = r#"{ "quota": { "rate": 1 }, "queu": 2 }"#;
    assert!(serde_json::from_str::<LeakyBucketConfig>(typo).is_err());
}
