//! The hot-key layer and its cache under virtual time: a room asked
//! 10,000 times a second reaches the backend at most once per TTL while the
//! other rooms are untouched; the hot set through the handle, `watch` and
//! callbacks; each hot key's own quota; the cache's allow and deny rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::{BoxError, RejectKind, Rejected};
use floodwall_hotkey::{Hot, HotCacheConfig, HotCacheLayer, HotKeyConfig, HotKeyLayer};
use floodwall_ratelimit::Quota;
use parking_lot::Mutex;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

type Req = http::Request<u64>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Res = http::Response<String>;

/// A room service taking 5 ms, counting calls per room; room 404 is
/// missing (a 404 answer).
fn rooms(
    calls: Arc<Mutex<HashMap<u64, u64>>>,
) -> impl Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone + Send + 'static {
    service_fn(move |req: Req| {
        let room = *req.body();
        *calls.lock().entry(room).or_default() += 1;
        async move {
            sleep(ms(5)).await;
            let mut res = http::Response::new(format!("room {room}"));
            if room == 404 {
                *res.status_mut() = http::StatusCode::NOT_FOUND;
            }
            Ok::<_, BoxError>(res)
        }
    })
}

/// Keys heated and cooled in one change.
type Change = (Vec<u64>, Vec<u64>);

fn by_room(req: &Req) -> Option<u64> {
    Some(*req.body())
}

#[tokio::test(start_paused = true)]
async fn a_room_asked_10_000_times_a_second_reaches_the_backend_once_per_ttl() {
    let calls: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let hot = HotKeyLayer::new(HotKeyConfig::default(), by_room).unwrap();
    let handle = hot.handle();
    let cache: HotCacheLayer<u64, Res> = HotCacheLayer::new(HotCacheConfig {
        ttl: Duration::from_secs(1),
        ..HotCacheConfig::default()
    })
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(hot)
        .layer(cache)
        .service(rooms(calls.clone()));
    let start = Instant::now();
    let mut detected = None;
    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut tasks = Vec::new();
    // 5 s: room 1 ten times a millisecond (10,000/s), rooms 100..110 once
    // every 50 ms each (20/s: under the 50 arrivals per two fading periods
    // that make a key hot).
    for t in 0..5_000u64 {
        let mut rooms: Vec<u64> = vec![1; 10];
        if t % 50 == 0 {
            rooms.extend(100..110);
        }
        for room in rooms {
            *sent.entry(room).or_default() += 1;
            tasks.push(tokio::spawn(svc.clone().oneshot(http::Request::new(room))));
        }
        if detected.is_none() && handle.hot().contains(&1) {
            detected = Some(start.elapsed());
        }
        advance(ms(1)).await;
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let calls = calls.lock();
    let detected = detected.expect("room 1 detected");
    eprintln!(
        "room 1: detected after {detected:?}, {} backend calls for {} requests",
        calls[&1], sent[&1]
    );
    // Before detection its reads were coalesced (one call in flight, 5 ms,
    // while it turned hot); after it, one call per TTL: at most once per
    // TTL over the 5 s.
    assert!(detected <= ms(10), "{detected:?}");
    assert!(calls[&1] <= 6, "{} calls", calls[&1]);
    // The other rooms are not hot: every request reached the backend.
    for room in 100..110 {
        assert_eq!(calls[&room], sent[&room], "room {room}");
        assert!(!handle.hot().contains(&room));
    }
}

#[tokio::test(start_paused = true)]
async fn the_hot_set_is_published_through_the_handle_a_watch_and_callbacks() {
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let log = changes.clone();
    let layer = HotKeyLayer::builder(
        HotKeyConfig {
            min_count: 20,
            ..HotKeyConfig::default()
        },
        by_room,
    )
    .on_change(move |c| log.lock().push((c.heated.to_vec(), c.cooled.to_vec())))
    .build()
    .unwrap();
    let handle = layer.handle();
    let mut watch = handle.subscribe();
    let svc = layer.layer(service_fn(|req: Req| async move {
        Ok::<_, BoxError>(req.extensions().get::<Hot<u64>>().cloned())
    }));
    let mut marked = None;
    for i in 0..50u64 {
        if let Some(hot) = svc.clone().oneshot(http::Request::new(7)).await.unwrap() {
            marked.get_or_insert((i, hot));
        }
        advance(ms(1)).await;
    }
    let (at, hot) = marked.expect("room 7 marked hot");
    assert_eq!(at, 19, "hot from its 20th request");
    assert_eq!(hot.key, 7);
    assert!(watch.has_changed().unwrap());
    assert!(watch.borrow_and_update().contains(&7));
    // Room 7 goes quiet; another room's traffic reads the faded sketch.
    for _ in 0..30 {
        svc.clone().oneshot(http::Request::new(8)).await.unwrap();
        advance(ms(100)).await;
    }
    assert!(!handle.hot().contains(&7), "cooled after it stopped");
    let changes = changes.lock();
    assert_eq!(changes[0], (vec![7], vec![]));
    assert!(
        changes.iter().any(|(_, cooled)| cooled.contains(&7)),
        "{changes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_hot_key_is_limited_on_its_own_quota() {
    let layer = HotKeyLayer::new(
        HotKeyConfig {
            min_count: 10,
            hot_limit: Some(Quota::per_second(100).unwrap().with_burst(5).unwrap()),
            ..HotKeyConfig::default()
        },
        by_room,
    )
    .unwrap();
    let svc = layer.layer(service_fn(|_: Req| async { Ok::<_, BoxError>(()) }));
    // Room 1: 100 requests in 10 ms; room 2: 9, never hot.
    let (mut refused, mut ok) = (0, 0);
    for i in 0..100u64 {
        match svc.clone().oneshot(http::Request::new(1)).await {
            Ok(()) => ok += 1,
            Err(e) => {
                assert_eq!(Rejected::find(&*e).unwrap().kind(), RejectKind::RateLimited);
                refused += 1;
            }
        }
        if i < 9 {
            svc.clone().oneshot(http::Request::new(2)).await.unwrap();
        }
        advance(Duration::from_micros(100)).await;
    }
    // 9 before it was hot, then its burst of 5 and one token per 10 ms.
    assert_eq!(ok, 9 + 5 + 1, "{ok} admitted");
    assert_eq!(refused, 100 - ok);
}

#[tokio::test(start_paused = true)]
async fn allow_and_deny_rules_choose_which_hot_keys_are_cached() {
    let calls: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let cache = HotCacheLayer::builder(HotCacheConfig::default())
        .allow(|room: &u64| *room < 100)
        .deny(|room: &u64| *room == 13)
        .build::<Res>()
        .unwrap();
    let cache_handle = cache.handle();
    let svc = ServiceBuilder::new()
        .layer(
            HotKeyLayer::new(
                HotKeyConfig {
                    min_count: 2,
                    ..HotKeyConfig::default()
                },
                by_room,
            )
            .unwrap(),
        )
        .layer(cache)
        .service(rooms(calls.clone()));
    for room in [7u64, 13, 700, 404] {
        for _ in 0..20 {
            svc.clone().oneshot(http::Request::new(room)).await.unwrap();
            advance(ms(1)).await;
        }
    }
    let calls = calls.lock();
    assert_eq!(calls[&7], 2, "cached once hot");
    assert_eq!(calls[&13], 20, "denied");
    assert_eq!(calls[&700], 20, "not allowed");
    assert_eq!(calls[&404], 20, "an error answer is never cached");
    assert_eq!(cache_handle.cached(), 1);
}

#[test]
fn configs_are_validated() {
    assert!(
        HotKeyLayer::<u64, _>::new(
            HotKeyConfig {
                min_count: 0,
                ..HotKeyConfig::default()
            },
            by_room
        )
        .is_err()
    );
    assert!(
        HotKeyLayer::<u64, _>::new(
            HotKeyConfig {
                refresh: Duration::ZERO,
                ..HotKeyConfig::default()
            },
            by_room
        )
        .is_err()
    );
    assert!(
        HotCacheLayer::<u64, Res>::new(HotCacheConfig {
            ttl: Duration::ZERO,
            ..HotCacheConfig::default()
        })
        .is_err()
    );
    assert!(
        HotCacheLayer::<u64, Res>::new(HotCacheConfig {
            max_entries: 0,
            ..HotCacheConfig::default()
        })
        .is_err()
    );
}
