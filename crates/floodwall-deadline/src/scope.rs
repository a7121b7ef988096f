//! The task-scoped deadline: outbound calls made while handling a request
//! see the request's deadline without threading it through every function.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use floodwall_core::Deadline;
use floodwall_core::deadline::{ScopeGuard, enter_scope};
pub use floodwall_core::deadline::{Scoped, current_scoped};

/// The deadline in scope for the running task, if any.
///
/// The server layer puts each request's deadline in scope for its handler;
/// [`scope`] does it by hand; [`spawn`] carries it into a new task.
pub fn current() -> Option<Deadline> {
    current_scoped().map(Scoped::deadline)
}

/// Runs `fut` with `deadline` in scope, or with the deadline in scope where
/// `scope` is called if that one is earlier (a callee never gets more time
/// than its caller). Call it inside the scoped code, not as an argument
/// built before the outer scope is entered.
///
/// A deadline scoped by hand counts as the caller's
/// ([`Scoped::from_caller`]).
pub fn scope<F: Future>(deadline: Deadline, fut: F) -> ScopedFuture<F> {
    let scoped = Scoped::new(deadline, true);
    // Not enforced: no timer ends the work at `deadline`, and the future
    // may be polled in another task than the outer scope's timer wakes.
    let scoped = current_scoped().map_or(scoped, |outer| outer.min(scoped));
    ScopedFuture::new(Some(scoped.unenforced()), fut)
}

/// Puts `deadline` in scope until the guard drops, for a `call` into the
/// layers below (a guard, not a closure, so the request is not copied);
/// [`ScopedFuture::entered`] keeps it in scope for the future the call
/// returns. Enforced ([`Scoped::enforced`]): the caller's response future
/// times the work out at `deadline`, polled around it in the same task.
#[inline]
pub(crate) fn enter(deadline: Deadline, from_caller: bool) -> (Scoped, ScopeGuard) {
    let scoped = Scoped::new(deadline, from_caller).enforced();
    (scoped, enter_scope(Some(scoped)))
}

/// Wraps `fut` so that it runs with the current deadline (if any) in scope,
/// wherever it is polled: for work handed to another task. (Not
/// [enforced](Scoped::enforced) there: the timer that ends the work here
/// does not wake the other task.)
pub fn carry<F: Future>(fut: F) -> Carried<F> {
    ScopedFuture::new(current_scoped().map(Scoped::unenforced), fut)
}

/// Spawns `fut` on the Tokio runtime with the current deadline in scope.
///
/// # Panics
/// As `tokio::spawn`: outside a Tokio runtime.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(carry(fut))
}

/// A future carrying the deadline that was in scope when it was made; see
/// [`carry`].
pub type Carried<F> = ScopedFuture<F>;

pin_project_lite::pin_project! {
    /// A future running in a deadline scope ([`scope`], [`carry`], and the
    /// server layer's handler future): the deadline is in scope while it is
    /// polled and while it is dropped, and restored after.
    pub struct ScopedFuture<F> {
        #[pin]
        fut: Option<F>,
        scoped: Option<Scoped>,
    }

    impl<F> PinnedDrop for ScopedFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Drop the inner future in its scope, as it was polled.
            if let Some(scoped) = *this.scoped {
                let _restore = enter_scope(Some(scoped));
                this.fut.set(None);
            }
        }
    }
}

impl<F> ScopedFuture<F> {
    /// `fut`, made in the scope [`enter`] returned, kept in it.
    #[inline]
    pub(crate) fn entered(scoped: Scoped, fut: F) -> Self {
        Self::new(Some(scoped), fut)
    }

    #[inline]
    fn new(scoped: Option<Scoped>, fut: F) -> Self {
        Self {
            fut: Some(fut),
            scoped,
        }
    }
}

impl<F: Future> Future for ScopedFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let fut = this.fut.as_pin_mut().expect("polled after drop");
        match *this.scoped {
            Some(scoped) => {
                let _restore = enter_scope(Some(scoped));
                fut.poll(cx)
            }
            None => fut.poll(cx),
        }
    }
}

impl<F> fmt::Debug for ScopedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedFuture")
            .field("scoped", &self.scoped)
            .finish_non_exhaustive()
    }
}
