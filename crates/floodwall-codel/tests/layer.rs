//! The Tower layer under virtual time: worker limit, queueing, drops that
//! never reach the service, deadlines, cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_codel::{CodelConfig, CodelLayer, DropReason, Lifo, Shed, TimingFromExtensions};
use floodwall_core::{Deadline, RejectKind, Rejected};
use tokio::time::{Instant, sleep};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Req = http::Request<u64>;

/// A service that sleeps for the request body's milliseconds and counts the
/// requests it started.
fn sleeper(
    started: Arc<AtomicUsize>,
) -> impl Service<Req, Response = u64, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |req: Req| {
        started.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(ms(*req.body())).await;
            Ok::<_, BoxError>(*req.body())
        }
    })
}

/// A service that yields once, then answers.
fn yielder() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|_: Req| async {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(())
    })
}

fn shed_reason(err: &BoxError) -> DropReason {
    Rejected::find(err.as_ref())
        .expect("a floodwall rejection")
        .get::<Shed>()
        .expect("a Shed")
        .reason()
}

#[tokio::test(start_paused = true)]
async fn at_most_workers_run_and_the_rest_wait() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::builder(CodelConfig::with_workers(2))
        .timing(TimingFromExtensions)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(started.clone()));
    let t0 = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(http::Request::new(10))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(handle.in_flight(), 2);
    assert_eq!(handle.queue_len(), 1);
    let mut done = Vec::new();
    for c in calls {
        c.await.unwrap().unwrap();
        done.push(Instant::now() - t0);
    }
    assert_eq!(done, [ms(10), ms(10), ms(20)]);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queue_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_at_once_without_calling_the_service() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::new(CodelConfig {
        workers: 1,
        max_queue: 1,
        ..Default::default()
    })
    .unwrap();
    let svc = layer.layer(sleeper(started.clone()));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(50)));
    let queued = tokio::spawn(svc.clone().oneshot(http::Request::new(1)));
    tokio::task::yield_now().await;
    let t = Instant::now();
    let err = svc
        .clone()
        .oneshot(http::Request::new(1))
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), t, "rejected at once");
    assert_eq!(shed_reason(&err), DropReason::Full);
    assert_eq!(
        Rejected::find(err.as_ref()).unwrap().kind(),
        RejectKind::Overloaded
    );
    assert_eq!(started.load(Ordering::SeqCst), 1);
    running.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_past_its_timeout_is_shed() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::new(CodelConfig::with_workers(1)).unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(started.clone()));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(300)));
    tokio::task::yield_now().await;
    let t = Instant::now();
    // Queued into an empty queue: timeout N = 100 ms.
    let err = svc
        .clone()
        .oneshot(http::Request::new(1))
        .await
        .unwrap_err();
    assert!(Instant::now() - t > ms(100) && Instant::now() - t <= ms(102));
    assert_eq!(shed_reason(&err), DropReason::Timeout);
    assert_eq!(handle.queue_len(), 0);
    running.await.unwrap().unwrap();
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the shed request never ran"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_cannot_be_met_is_shed_before_running() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::builder(CodelConfig::with_workers(1))
        .timing(TimingFromExtensions)
        .build()
        .unwrap();
    let svc = layer.layer(sleeper(started.clone()));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(50)));
    tokio::task::yield_now().await;
    let t = Instant::now();
    let mut req = http::Request::new(1);
    req.extensions_mut().insert(Deadline::after(t, ms(20)));
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(Instant::now() - t, ms(20));
    assert_eq!(shed_reason(&err), DropReason::Deadline);
    assert_eq!(
        Rejected::find(err.as_ref()).unwrap().kind(),
        RejectKind::DeadlineExceeded
    );
    // Already expired on arrival: refused at once.
    let mut req = http::Request::new(1);
    req.extensions_mut().insert(Deadline::new(Instant::now()));
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(shed_reason(&err), DropReason::Deadline);
    running.await.unwrap().unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn congested_queues_serve_newest_first() {
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let layer = CodelLayer::new(CodelConfig {
        workers: 1,
        lifo: Lifo::Length(1),
        ..Default::default()
    })
    .unwrap();
    let seen = order.clone();
    let svc = layer.layer(service_fn(move |req: Req| {
        seen.lock().push(*req.body());
        async move {
            sleep(ms(5)).await;
            Ok::<_, BoxError>(())
        }
    }));
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(svc.clone().oneshot(http::Request::new(i))))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // 0 runs; 1, 2, 3 wait: 3 waiting > 1, newest (3) first; then 2
    // waiting > 1, newest (2); then 1 alone (HHVM: more than T wait).
    assert_eq!(*order.lock(), [0, 3, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_leave_and_take_no_worker() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::new(CodelConfig::with_workers(1)).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(sleeper(started.clone()));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(20)));
    tokio::task::yield_now().await;
    svc.ready().await.unwrap();
    let waiting = svc.call(http::Request::new(1));
    assert_eq!(handle.queue_len(), 1);
    drop(waiting);
    assert_eq!(handle.queue_len(), 0);
    running.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_granted_but_unpolled_waiter_gives_its_worker_back() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::new(CodelConfig::with_workers(1)).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(sleeper(started.clone()));
    let running = tokio::spawn(svc.clone().oneshot(http::Request::new(10)));
    tokio::task::yield_now().await;
    svc.ready().await.unwrap();
    let waiting = svc.call(http::Request::new(1));
    running.await.unwrap().unwrap();
    // The worker was handed to the waiter, which never ran.
    assert_eq!(handle.in_flight(), 1);
    drop(waiting);
    assert_eq!(handle.in_flight(), 0);
    svc.clone().oneshot(http::Request::new(1)).await.unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn random_cancellation_leaves_nothing_behind() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::new(CodelConfig {
        workers: 3,
        max_queue: 20,
        ..Default::default()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(started.clone()));
    let rng = floodwall_core::random::SplitMix::new(7);
    let mut tasks = Vec::new();
    for i in 0..2_000u64 {
        let work = 1 + rng.next_u64() % 20;
        let give_up = ms(rng.next_u64() % 40);
        let call = svc.clone().oneshot(http::Request::new(work));
        tasks.push(tokio::spawn(async move {
            // Some callers give up while queued, some while running.
            let _ = tokio::time::timeout(give_up, call).await;
        }));
        if i % 7 == 0 {
            sleep(ms(1)).await;
        }
        if i % 11 == 0 {
            // Abort a task outright, wherever it is.
            tasks[(rng.next_u64() % tasks.len() as u64) as usize].abort();
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queue_len(), 0);
    assert_eq!(handle.waiters(), 0);
    assert!(started.load(Ordering::SeqCst) > 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_is_refused_even_with_a_free_worker() {
    let started = Arc::new(AtomicUsize::new(0));
    let layer = CodelLayer::builder(CodelConfig::with_workers(4))
        .timing(TimingFromExtensions)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sleeper(started.clone()));
    let t = Instant::now();
    let mut req = http::Request::new(1);
    req.extensions_mut().insert(Deadline::new(t));
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(Instant::now(), t, "refused at once");
    assert_eq!(shed_reason(&err), DropReason::Deadline);
    assert_eq!(started.load(Ordering::SeqCst), 0);
    assert_eq!(handle.in_flight(), 0);
}

/// Real threads, real races: every call that is not cancelled completes
/// (no lost wake-ups, no worker stranded), and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threads_racing_lose_no_wakeup_and_leak_nothing() {
    let hour = Duration::from_secs(3600);
    let layer = CodelLayer::new(CodelConfig {
        workers: 3,
        max_queue: 100_000,
        // Nothing times out: every waiter must be served.
        policy: floodwall_codel::Policy::FailAtScale {
            target: hour,
            interval: hour,
        },
        ..Default::default()
    })
    .unwrap();
    let handle = layer.handle();
    let completed = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(yielder());
    let tasks: Vec<_> = (0..8u64)
        .map(|id| {
            let (svc, completed) = (svc.clone(), completed.clone());
            tokio::spawn(async move {
                let rng = floodwall_core::random::SplitMix::new(id);
                let mut kept = 0;
                for _ in 0..2_000 {
                    let call = svc.clone().oneshot(http::Request::new(0));
                    if rng.next_u64().is_multiple_of(5) {
                        // Poll once, then give up wherever it is.
                        let mut call = Box::pin(call);
                        let _ = futures_poll_once(call.as_mut()).await;
                    } else {
                        call.await.unwrap();
                        kept += 1;
                    }
                }
                completed.fetch_add(kept, Ordering::SeqCst);
                kept
            })
        })
        .collect();
    let mut kept = 0;
    for t in tasks {
        kept += tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a call never completed: lost wake-up or stranded worker")
            .unwrap();
    }
    assert_eq!(completed.load(Ordering::SeqCst), kept);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queue_len(), 0);
    assert_eq!(handle.waiters(), 0);
}

/// Polls a future once; whether it finished.
async fn futures_poll_once<F: std::future::Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> bool {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx| {
        let done = fut.take().unwrap().poll(cx).is_ready();
        std::task::Poll::Ready(done)
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_sojourn_hook_hears_every_served_request() {
    let heard = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let layer = CodelLayer::builder(CodelConfig::with_workers(1))
        .timing(TimingFromExtensions)
        .on_sojourn({
            let heard = heard.clone();
            move |d| heard.lock().push(d)
        })
        .build()
        .unwrap();
    let svc = layer.layer(sleeper(Arc::new(AtomicUsize::new(0))));
    // Served at once: reports its time since arrival (3 ms in outer layers).
    let mut req = http::Request::new(4);
    req.extensions_mut()
        .insert(floodwall_core::Arrival::new(Instant::now()));
    tokio::time::advance(ms(3)).await;
    let first = tokio::spawn(svc.clone().oneshot(req));
    tokio::task::yield_now().await;
    // Queued behind it for the 4 ms it runs: reports the wait.
    let second = tokio::spawn(svc.clone().oneshot(http::Request::new(1)));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(*heard.lock(), [ms(3), ms(4)]);
}
