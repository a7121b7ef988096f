//! The response future: waiting in the queue, running, or shed.

use super::*;

/// The response future of [`Codel`]: the inner call holding a worker, a
/// ready refusal, or a wait in the queue followed by the inner call. The
/// wait is boxed: a request that runs at once moves a small future, and one
/// that waits pays one allocation next to its queue slot.
pub type ResponseFuture<S, Req, X> = Gated<Pin<Box<Queued<S, Req, X>>>>;

/// A request waiting in the queue for a worker; it owns the service and the
/// request until it gets one, and leaves the queue when dropped.
pub struct Queued<S, Req, X> {
    pub(crate) waiter: Waiter<X>,
    pub(crate) service: Option<S>,
    pub(crate) req: Option<Req>,
    pub(crate) timer: Option<(Instant, DropReason)>,
    // Made on first poll, so `call` works outside a runtime.
    pub(crate) sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, Req, X> Unpin for Queued<S, Req, X> {}

pub(crate) fn shed(reason: DropReason) -> BoxError {
    Rejected::boxed(Shed { reason })
}

impl<S, Req, X> Gate for Queued<S, Req, X>
where
    S: Service<Req>,
{
    type Future = S::Future;
    type Hold = Permit<X>;

    fn poll_open(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self> {
        let Queued {
            waiter,
            service,
            req,
            timer,
            sleep,
        } = self.get_mut();
        let id = waiter.id.expect("a waiting request has an id");
        let shared = &waiter.shared;
        let mut w = shared.waiters.lock();
        let slot = w.slots.get_mut(&id).expect("a waiting request has a slot");
        match slot.outcome {
            Some(Ok(())) => {
                w.slots.remove(&id);
                drop(w);
                waiter.id = None;
                shared.metrics.requests.admitted();
                let permit = Permit {
                    shared: shared.clone(),
                };
                let mut service = service.take().expect("service kept until granted");
                let fut = service.call(req.take().expect("request kept until granted"));
                Poll::Ready(Ok((fut, permit)))
            }
            Some(Err(reason)) => {
                w.slots.remove(&id);
                drop(w);
                waiter.id = None;
                Poll::Ready(Err(shed(reason)))
            }
            None => {
                if let Some((at, reason)) = *timer
                    && sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                        .as_mut()
                        .poll(cx)
                        .is_ready()
                {
                    w.slots.remove(&id);
                    w.queue.remove(|x| *x == id);
                    shared.queued.store(w.queue.len(), Ordering::SeqCst);
                    shared.metrics.queue_length.set(w.queue.len() as f64);
                    drop(w);
                    shared.metrics.shed(reason);
                    waiter.id = None;
                    return Poll::Ready(Err(shed(reason)));
                }
                let slot = w.slots.get_mut(&id).expect("checked above");
                match &slot.waker {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<S, Req, X> fmt::Debug for Queued<S, Req, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.waiter.id)
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}
