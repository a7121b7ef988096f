//! The adapter's contract with a small counting policy: permits come back
//! exactly once however a request ends, in every mode.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use floodwall_admit::{
    Admit, Backpressure, Guarded, NotReady, Policy, Read, Reserve, UntilBodyEnd, Wait,
};
use floodwall_core::outcome::{Silence, Verdict};
use floodwall_core::{BoxError, Outcome, RejectKind, Rejected, Rejection};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::{Service, ServiceExt, service_fn};

/// At most `max` permits; records every release.
struct Slots {
    max: u32,
    held: AtomicU32,
    released: Mutex<Vec<Verdict>>,
    notify: Arc<Notify>,
    /// `Some`: `reserve` asks to wait this long instead of for a release.
    wait_for: Option<Duration>,
}

impl Slots {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: AtomicU32::new(0),
            released: Mutex::new(Vec::new()),
            notify: Arc::new(Notify::new()),
            wait_for: None,
        })
    }

    fn held(&self) -> u32 {
        self.held.load(Ordering::Acquire)
    }

    fn released(&self) -> Vec<Verdict> {
        self.released.lock().unwrap().clone()
    }

    fn take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

#[derive(Debug)]
struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("full")
    }
}

impl std::error::Error for Full {}

impl Rejection for Full {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}

impl Policy for Slots {
    type Permit = ();

    fn release(&self, (): (), verdict: Verdict) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        self.released.lock().unwrap().push(verdict);
        self.notify.notify_waiters();
    }
}

impl<Req> Admit<Req> for Slots {
    fn admit(&self, _: &mut Req) -> Result<(), BoxError> {
        if self.take() {
            Ok(())
        } else {
            Err(Rejected::boxed(Full))
        }
    }
}

/// `Ok` is a success, `Err` a failure (through the outcome rule).
impl<Res> Read<Res> for Slots {
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        floodwall_core::outcome::judge(&floodwall_core::ResultClassifier, result, caller_limited)
    }
}

impl Reserve for Slots {
    fn reserve(&self) -> Result<(), Wait> {
        if self.take() {
            Ok(())
        } else if let Some(d) = self.wait_for {
            Err(Wait::For(d))
        } else {
            Err(Wait::Released(self.notify.clone()))
        }
    }
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

const SUCCESS: Verdict = Verdict::Answered(Outcome::Success);
const FAILURE: Verdict = Verdict::Answered(Outcome::Failure);
const CANCELLED: Verdict = Verdict::Silent(Silence::Cancelled);

#[tokio::test(start_paused = true)]
async fn guarded_releases_once_on_success_failure_refusal_and_drop() {
    let slots = Slots::new(1);
    let svc = Guarded::new(
        service_fn(|ok: bool| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if ok {
                Ok(1u8)
            } else {
                Err(BoxError::from("down"))
            }
        }),
        slots.clone(),
    );
    assert_eq!(svc.clone().oneshot(true).await.unwrap(), 1);
    svc.clone().oneshot(false).await.unwrap_err();
    assert_eq!(slots.released(), [SUCCESS, FAILURE]);

    // Full: refused in call, the inner service never runs.
    let mut first = svc.clone();
    let running = first.call(true);
    let err = svc.clone().oneshot(true).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectKind::Overloaded
    );
    drop(running);
    assert_eq!(slots.held(), 0, "dropped before it finished");
    assert_eq!(slots.released(), [SUCCESS, FAILURE, CANCELLED]);
}

#[tokio::test]
async fn a_panicking_inner_call_still_gives_the_permit_back() {
    let slots = Slots::new(1);
    let mut svc = Guarded::new(
        service_fn(|_: ()| -> std::future::Ready<Result<(), Infallible>> { panic!("inner call") }),
        slots.clone(),
    );
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(())));
    assert!(caught.is_err());
    assert_eq!(slots.held(), 0);
    assert_eq!(slots.released(), [CANCELLED]);
}

/// A body that yields `frames` chunks, one per poll, then ends (or fails).
struct Chunks {
    left: u32,
    fail: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(if self.fail {
                self.fail = false;
                Some(Err("stream broke".into()))
            } else {
                None
            });
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && !self.fail
    }
}

fn streaming(
    slots: &Arc<Slots>,
) -> UntilBodyEnd<
    impl Service<(u32, bool), Response = http::Response<Chunks>, Error = BoxError, Future = impl Send>
    + Clone,
    Slots,
> {
    UntilBodyEnd::new(
        service_fn(|(left, fail): (u32, bool)| async move {
            Ok::<_, BoxError>(http::Response::new(Chunks { left, fail }))
        }),
        slots.clone(),
    )
}

#[tokio::test]
async fn until_body_end_holds_the_permit_for_the_whole_stream() {
    let slots = Slots::new(2);
    let svc = streaming(&slots);
    let res = svc.clone().oneshot((3, false)).await.unwrap();
    assert_eq!(slots.held(), 1, "the head arrived: the stream still counts");
    let mut body = res.into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
        assert_eq!(slots.held(), 1);
    }
    assert!(body.frame().await.is_none());
    assert_eq!(slots.held(), 0, "the stream ended");
    assert_eq!(slots.released(), [SUCCESS]);

    // A stream that breaks part-way is a failure.
    let mut body = svc.clone().oneshot((1, true)).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap_err();
    assert_eq!(slots.released(), [SUCCESS, FAILURE]);

    // A stream dropped before its end: cancelled.
    let body = svc.clone().oneshot((5, false)).await.unwrap().into_body();
    assert_eq!(slots.held(), 1);
    drop(body);
    assert_eq!(slots.held(), 0);
    assert_eq!(slots.released(), [SUCCESS, FAILURE, CANCELLED]);

    // An empty body ends with its head.
    let _res = svc.clone().oneshot((0, false)).await.unwrap();
    assert_eq!(slots.held(), 0);
    assert_eq!(slots.released().len(), 4);
}

#[tokio::test]
async fn backpressure_waits_for_a_release_and_never_leaks_a_reservation() {
    let slots = Slots::new(1);
    let inner = service_fn(|x: u32| async move { Ok::<_, BoxError>(x) });
    let mut a = Backpressure::new(inner, slots.clone());
    let mut b = a.clone();
    assert!(a.poll_ready(&mut noop_cx()).is_ready());
    assert!(a.holds_permit());
    assert_eq!(slots.held(), 1);
    // b is not ready while a holds the only permit.
    let mut ready_b = Box::pin(async move {
        std::future::poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
        b
    });
    assert!(futures_poll(&mut ready_b).is_pending());
    // A clone of a does not inherit its permit.
    let c = a.clone();
    assert!(!c.holds_permit());
    drop(c);
    // a's call uses the permit; when it ends, b becomes ready.
    assert_eq!(a.call(7).await.unwrap(), 7);
    let b = ready_b.await;
    assert!(b.holds_permit());
    // Dropped without a call: the permit comes back, as a cancellation.
    drop(b);
    assert_eq!(slots.held(), 0);
    assert_eq!(slots.released(), [SUCCESS, CANCELLED]);
    // A call without poll_ready takes a free permit if there is one...
    assert_eq!(a.call(8).await.unwrap(), 8);
    // ...and is refused (no panic) if there is none.
    let mut holder = a.clone();
    assert!(holder.poll_ready(&mut noop_cx()).is_ready());
    let err = a.call(9).await.unwrap_err();
    assert!(Rejected::find(&*err).unwrap().is::<NotReady>());
}

#[tokio::test(start_paused = true)]
async fn backpressure_sleeps_for_a_timed_wait() {
    let slots = Arc::new(Slots {
        wait_for: Some(Duration::from_millis(100)),
        ..Arc::into_inner(Slots::new(1)).unwrap()
    });
    let inner = service_fn(|x: u32| async move { Ok::<_, BoxError>(x) });
    let mut a = Backpressure::new(inner, slots.clone());
    let mut b = a.clone();
    std::future::poll_fn(|cx| a.poll_ready(cx)).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let waiter = tokio::spawn(async move {
        std::future::poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
        tokio::time::Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(a);
    let ready_at = waiter.await.unwrap();
    assert_eq!(
        ready_at - t0,
        Duration::from_millis(300),
        "looked again every 100 ms"
    );
}

fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut noop_cx())
}
