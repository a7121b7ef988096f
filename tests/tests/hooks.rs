//! A user hook that panics cannot strand a worker or a permit: CoDel's
//! `on_sojourn` (called as a request gets a worker, on the request's task or
//! while a finishing request hands its worker on) and adaptive concurrency's
//! `on_limit_change` (called from a finishing request's bookkeeping). Every
//! request still gets its answer, and afterwards nothing is held.

use std::convert::Infallible;
use std::time::Duration;

use floodwall::codel::{CodelConfig, CodelLayer};
use floodwall::concurrency::{AdaptiveLimitLayer, AimdConfig};
use tower::{Layer, Service, ServiceExt, service_fn};

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;

/// Silences panic messages until dropped (the hooks' panics are expected).
fn quiet_panics() -> impl Drop {
    struct Restore(Option<PanicHook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(hook) = self.0.take() {
                std::panic::set_hook(hook);
            }
        }
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    Restore(Some(previous))
}

fn slow() -> impl Service<u32, Response = u32, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(|n: u32| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(n)
    })
}

#[tokio::test(start_paused = true)]
async fn a_panicking_sojourn_hook_strands_no_worker() {
    let _quiet = quiet_panics();
    let codel = CodelLayer::builder(CodelConfig::with_workers(2))
        .on_sojourn(|_| panic!("a broken observer"))
        .build()
        .unwrap();
    let handle = codel.handle();
    let svc = codel.layer(slow());
    // Ten at once on two workers: two start at once (the call path), the
    // rest are handed a worker as others finish (the dispatch path).
    let calls: Vec<_> = (0..10)
        .map(|n| tokio::spawn(svc.clone().oneshot(n)))
        .collect();
    let mut answered = 0;
    for call in calls {
        if call.await.expect("no panic reached the caller").is_ok() {
            answered += 1;
        }
    }
    assert!(answered >= 2, "requests were served: {answered}");
    assert_eq!(handle.in_flight(), 0, "every worker came back");
    assert_eq!(handle.queue_len(), 0);
    // The queue still works.
    svc.clone().oneshot(99).await.unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_limit_listener_strands_no_permit() {
    let _quiet = quiet_panics();
    let first = std::sync::atomic::AtomicBool::new(true);
    let layer = AdaptiveLimitLayer::builder(AimdConfig {
        initial_limit: 4,
        ..AimdConfig::default()
    })
    .on_limit_change(move |_| {
        // The first call (at build) passes; every later change panics.
        if !first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a broken listener");
        }
    })
    .build()
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(slow());
    for round in 0..20 {
        let calls: Vec<_> = (0..4)
            .map(|n| tokio::spawn(svc.clone().oneshot(n)))
            .collect();
        for call in calls {
            call.await
                .expect("no panic reached the caller")
                .unwrap_or_else(|e| {
                    panic!("round {round}: {e}");
                });
        }
    }
    assert_eq!(handle.in_flight(), 0, "every permit came back");
    assert!(
        handle.limit() > 4,
        "the limit still grows: {}",
        handle.limit()
    );
}
