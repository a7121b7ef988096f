//! Request coalescing against SPECS.md: 1,000 concurrent identical
//! requests make exactly one inner call; the leader's caller going away
//! fails no follower, a call nobody waits for is cancelled; errors shared or retried by config; a follower's own
//! deadline bounds its wait; the bound on keys in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_core::{BoxError, Deadline, DeadlineExceeded, RejectKind, Rejected};
use floodwall_tail::{CoalesceConfig, CoalesceLayer, CoalescedError, OnError, WhenFull};
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

type Req = http::Request<u64>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A backend that takes 50 ms, counts its calls, and fails while `fail`
/// calls remain.
fn backend(
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Arc<String>, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |req: Req| {
        let (calls, fail) = (calls.clone(), fail.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            sleep(ms(50)).await;
            if fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                return Err(BoxError::from("backend down"));
            }
            Ok(Arc::new(format!("room {}", req.body())))
        }
    })
}

fn layer(
    config: CoalesceConfig,
) -> CoalesceLayer<impl Fn(&Req) -> Option<u64> + Clone, u64, Arc<String>> {
    CoalesceLayer::new(config, |req: &Req| Some(*req.body())).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_identical_requests_make_exactly_one_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(CoalesceConfig::default()).layer(backend(calls.clone(), Arc::default()));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(7))))
        .collect();
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), "room 7");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Another key, and the same key once the flight landed: calls of their own.
    svc.clone().oneshot(http::Request::new(8)).await.unwrap();
    svc.clone().oneshot(http::Request::new(7)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_leaders_caller_going_away_fails_no_follower_and_the_call_goes_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(CoalesceConfig::default());
    let svc = layer.layer(backend(calls.clone(), Arc::default()));
    let leader = tokio::spawn(svc.clone().oneshot(http::Request::new(1)));
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(1))))
        .collect();
    sleep(ms(10)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for follower in followers {
        assert_eq!(*follower.await.unwrap().unwrap(), "room 1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.in_flight(), 0);
}

/// Marks its drop: the backend future's end, finished or cancelled.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_nobody_waits_for_is_cancelled_and_its_key_freed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (calls, dropped, finished) = (calls.clone(), dropped.clone(), finished.clone());
        service_fn(move |req: Req| {
            let (calls, dropped, finished) = (calls.clone(), dropped.clone(), finished.clone());
            async move {
                let _flag = DropFlag(dropped);
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(ms(50)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(Arc::new(format!("room {}", req.body())))
            }
        })
    };
    let layer = layer(CoalesceConfig::default());
    let svc = layer.layer(slow);
    let callers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(5))))
        .collect();
    sleep(ms(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.in_flight(), 1);
    for caller in callers {
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    tokio::task::yield_now().await;
    // Cancelled at 10 ms, not run to its end for nobody.
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(layer.in_flight(), 0);
    // The key is free: the next request leads a call of its own.
    let start = Instant::now();
    assert_eq!(
        *svc.clone().oneshot(http::Request::new(5)).await.unwrap(),
        "room 5"
    );
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_is_shared_or_retried_by_each_follower() {
    // Shared: one call, every waiter gets its error.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(CoalesceConfig::default())
        .layer(backend(calls.clone(), Arc::new(AtomicUsize::new(1))));
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(3))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(err.is::<CoalescedError>(), "{err}");
        assert!(err.to_string().contains("backend down"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Retried: the leader fails, each of the 4 followers calls again.
    let calls = Arc::new(AtomicUsize::new(0));
    let config = CoalesceConfig {
        on_error: OnError::Retry,
        ..CoalesceConfig::default()
    };
    let svc = layer(config).layer(backend(calls.clone(), Arc::new(AtomicUsize::new(1))));
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(3))))
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 4, "the followers succeed on their own calls");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_followers_own_deadline_bounds_its_wait() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(CoalesceConfig::default()).layer(backend(calls.clone(), Arc::default()));
    let leader = tokio::spawn(svc.clone().oneshot(http::Request::new(9)));
    tokio::task::yield_now().await;
    let mut hurried = http::Request::new(9);
    hurried
        .extensions_mut()
        .insert(Deadline::after(Instant::now(), ms(5)));
    let start = Instant::now();
    let err = svc.clone().oneshot(hurried).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(5));
    assert!(Rejected::find(err.as_ref()).is_some_and(|r| r.get::<DeadlineExceeded>().is_some()));
    assert_eq!(
        *leader.await.unwrap().unwrap(),
        "room 9",
        "the call went on"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn over_the_bound_on_keys_a_request_passes_through_or_is_refused() {
    for when_full in [WhenFull::PassThrough, WhenFull::Refuse] {
        let calls = Arc::new(AtomicUsize::new(0));
        let config = CoalesceConfig {
            max_keys: 1,
            when_full,
            ..CoalesceConfig::default()
        };
        let svc = layer(config).layer(backend(calls.clone(), Arc::default()));
        let first = tokio::spawn(svc.clone().oneshot(http::Request::new(1)));
        tokio::task::yield_now().await;
        let second = svc.clone().oneshot(http::Request::new(2)).await;
        match when_full {
            WhenFull::PassThrough => assert_eq!(*second.unwrap(), "room 2"),
            WhenFull::Refuse => {
                let err = second.unwrap_err();
                let rejected = Rejected::find(err.as_ref()).expect("a rejection");
                assert_eq!(rejected.kind(), RejectKind::Overloaded);
            }
        }
        first.await.unwrap().unwrap();
    }
    assert!(
        CoalesceLayer::new(
            CoalesceConfig {
                max_keys: 0,
                ..CoalesceConfig::default()
            },
            |_: &Req| Some(0u64)
        )
        .map(|_: CoalesceLayer<_, u64, Arc<String>>| ())
        .is_err()
    );
}
