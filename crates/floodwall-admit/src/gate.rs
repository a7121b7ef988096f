//! The response future of a layer that may make a request wait before it
//! calls the inner service: a queue (CoDel, the bulkhead), a rate limiter's
//! wait mode, a remote decision (the Redis limiter).
//!
//! The layer decides in `call`: run now ([`Gated::running`]), refuse now
//! ([`Gated::rejected`]) or wait ([`Gated::waiting`]) on a [`Gate`] that
//! owns the service and the request until it opens. The state machine is
//! written once here; a layer writes only its gate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use floodwall_core::BoxError;
use pin_project_lite::pin_project;

/// What a waiting request waits on. When it opens, it calls the inner
/// service itself (it owns the service and the request) and hands over the
/// call's future with what the running call must hold (a worker permit,
/// say); or it refuses, and the request is never sent. Dropping the gate
/// before it opens must give back whatever the request had claimed.
pub trait Gate {
    /// The inner call's future.
    type Future;
    /// What the running call holds until it finishes (dropped with it).
    type Hold;

    /// Polls the gate.
    ///
    /// # Errors
    /// The refusal, already boxed (typically a `Rejected`), or the inner
    /// service's readiness error.
    fn poll_open(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self>;
}

/// What [`Gate::poll_open`] returns: pending, the inner call's future with
/// what it holds, or the refusal.
pub type Open<G> = Poll<Result<(<G as Gate>::Future, <G as Gate>::Hold), BoxError>>;

impl<G: Gate + ?Sized> Gate for Pin<Box<G>> {
    type Future = G::Future;
    type Hold = G::Hold;

    fn poll_open(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self> {
        self.get_mut().as_mut().poll_open(cx)
    }
}

pin_project! {
    /// A gated layer's response future: the inner call, a ready refusal, or
    /// a wait on a [`Gate`] followed by the inner call.
    pub struct Gated<G: Gate> {
        #[pin]
        state: State<G>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<G: Gate> {
        Running { #[pin] fut: G::Future, hold: Option<G::Hold> },
        Rejected { error: Option<BoxError> },
        Waiting { #[pin] gate: G },
    }
}

impl<G: Gate> Gated<G> {
    /// The inner call, started now, holding `hold` until it finishes.
    #[inline]
    pub fn running(fut: G::Future, hold: G::Hold) -> Self {
        Self {
            state: State::Running {
                fut,
                hold: Some(hold),
            },
        }
    }

    /// A refusal, answered at the first poll.
    #[inline]
    pub fn rejected(error: BoxError) -> Self {
        Self {
            state: State::Rejected { error: Some(error) },
        }
    }

    /// A wait on `gate`, then the call it makes.
    pub fn waiting(gate: G) -> Self {
        Self {
            state: State::Waiting { gate },
        }
    }
}

impl<G, T, E> Future for Gated<G>
where
    G: Gate,
    G::Future: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { fut, hold } => {
                    let out = ready!(fut.poll(cx)).map_err(Into::into);
                    // Released as the answer leaves, not when the future is dropped.
                    drop(hold.take());
                    return Poll::Ready(out);
                }
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Waiting { gate } => match ready!(gate.poll_open(cx)) {
                    Ok((fut, hold)) => state.set(State::Running {
                        fut,
                        hold: Some(hold),
                    }),
                    Err(error) => {
                        state.set(State::Rejected { error: None });
                        return Poll::Ready(Err(error));
                    }
                },
            }
        }
    }
}

impl<G: Gate> fmt::Debug for Gated<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "Running",
            State::Rejected { .. } => "Rejected",
            State::Waiting { .. } => "Waiting",
        };
        f.debug_struct("Gated").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{Ready, ready as ready_fut};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Waker;

    /// Opens on the second poll (or refuses), holding a flag that is
    /// lowered when the hold is dropped.
    struct TwoPolls {
        polled: bool,
        refuse: bool,
        held: Arc<AtomicBool>,
    }

    struct Hold(Arc<AtomicBool>);

    impl Drop for Hold {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }

    impl Gate for TwoPolls {
        type Future = Ready<Result<u32, BoxError>>;
        type Hold = Hold;

        fn poll_open(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Open<Self> {
            if !self.polled {
                self.polled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.refuse {
                return Poll::Ready(Err("refused".into()));
            }
            self.held.store(true, Ordering::SeqCst);
            Poll::Ready(Ok((ready_fut(Ok(7)), Hold(self.held.clone()))))
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_gate_that_opens_runs_the_call_and_releases_the_hold_with_the_answer() {
        let held = Arc::new(AtomicBool::new(false));
        let mut fut = Gated::waiting(TwoPolls {
            polled: false,
            refuse: false,
            held: held.clone(),
        });
        assert!(poll(&mut fut).is_pending());
        match poll(&mut fut) {
            Poll::Ready(Ok(7)) => {}
            other => panic!("expected the call's answer, got {other:?}"),
        }
        assert!(!held.load(Ordering::SeqCst), "released as the answer left");
    }

    #[test]
    fn a_gate_that_refuses_never_calls() {
        let held = Arc::new(AtomicBool::new(false));
        let mut fut = Gated::waiting(TwoPolls {
            polled: true,
            refuse: true,
            held: held.clone(),
        });
        match poll(&mut fut) {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "refused"),
            other => panic!("expected the refusal, got {other:?}"),
        }
        assert!(!held.load(Ordering::SeqCst));
    }

    #[test]
    fn running_and_rejected_answer_at_the_first_poll() {
        let held = Arc::new(AtomicBool::new(true));
        let mut run: Gated<TwoPolls> = Gated::running(ready_fut(Ok(1)), Hold(held.clone()));
        assert!(matches!(poll(&mut run), Poll::Ready(Ok(1))));
        assert!(!held.load(Ordering::SeqCst));
        let mut rejected: Gated<TwoPolls> = Gated::rejected("no".into());
        assert!(matches!(poll(&mut rejected), Poll::Ready(Err(_))));
        assert_eq!(format!("{rejected:?}"), "Gated { state: \"Rejected\" }");
    }
}
