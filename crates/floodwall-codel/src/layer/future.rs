//! The response future: waiting in the queue, running, or shed.

use super::*;

pin_project! {
    /// The response future of [`Codel`].
    pub struct ResponseFuture<S, Req, X>
    where
        S: Service<Req>,
    {
        #[pin]
        pub(crate) state: State<S, Req, X>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<S, Req, X>
    where
        S: Service<Req>,
    {
        Waiting {
            waiter: Waiter<X>,
            service: Option<S>,
            req: Option<Req>,
            timer: Option<(Instant, DropReason)>,
            // Made on first poll, so `call` works outside a runtime.
            sleep: Option<Pin<Box<Sleep>>>,
        },
        Running { #[pin] fut: S::Future, permit: Permit<X> },
        Shed { reason: Option<DropReason> },
    }
}

impl<S: Service<Req>, Req, X> ResponseFuture<S, Req, X> {
    pub(crate) fn shed(reason: DropReason) -> Self {
        Self {
            state: State::Shed {
                reason: Some(reason),
            },
        }
    }
}

pub(crate) fn shed_error(reason: DropReason) -> BoxError {
    Rejected::boxed(Shed { reason })
}

impl<S, Req, X> Future for ResponseFuture<S, Req, X>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { fut, .. } => {
                    return Poll::Ready(ready!(fut.poll(cx)).map_err(Into::into));
                }
                StateProj::Shed { reason } => {
                    let reason = reason.take().expect("polled after completion");
                    return Poll::Ready(Err(shed_error(reason)));
                }
                StateProj::Waiting {
                    waiter,
                    service,
                    req,
                    timer,
                    sleep,
                } => {
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
                            state.set(State::Running { fut, permit });
                        }
                        Some(Err(reason)) => {
                            w.slots.remove(&id);
                            drop(w);
                            waiter.id = None;
                            state.set(State::Shed { reason: None });
                            return Poll::Ready(Err(shed_error(reason)));
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
                                state.set(State::Shed { reason: None });
                                return Poll::Ready(Err(shed_error(reason)));
                            }
                            let slot = w.slots.get_mut(&id).expect("checked above");
                            match &slot.waker {
                                Some(old) if old.will_wake(cx.waker()) => {}
                                _ => slot.waker = Some(cx.waker().clone()),
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, X> fmt::Debug for ResponseFuture<S, Req, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
