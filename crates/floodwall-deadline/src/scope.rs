//! The task-scoped deadline: outbound calls made while handling a request
//! see the request's deadline without threading it through every function.

use std::future::Future;

use floodwall_core::Deadline;
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static CURRENT: Scoped;
}

/// A deadline in a task's scope, with where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scoped {
    deadline: Deadline,
    from_caller: bool,
}

impl Scoped {
    /// The deadline.
    pub const fn deadline(self) -> Deadline {
        self.deadline
    }

    /// Whether the deadline is the caller's (a timeout it sent, or one set
    /// by hand with [`scope`]) rather than the server's own budget (its
    /// configured maximum). Outbound calls limited by a caller's deadline
    /// that time out say nothing about their dependency
    /// ([`floodwall_core::outcome`]); calls limited by the server's own
    /// budget do.
    pub const fn from_caller(self) -> bool {
        self.from_caller
    }

    /// The earlier of the two (the first on a tie).
    fn min(self, other: Scoped) -> Scoped {
        if other.deadline < self.deadline {
            other
        } else {
            self
        }
    }
}

/// The deadline in scope for the running task, if any.
///
/// The server layer puts each request's deadline in scope for its handler;
/// [`scope`] does it by hand; [`spawn`] carries it into a new task.
pub fn current() -> Option<Deadline> {
    current_scoped().map(Scoped::deadline)
}

/// The deadline in scope for the running task with where it came from.
pub fn current_scoped() -> Option<Scoped> {
    CURRENT.try_with(|d| *d).ok()
}

/// Runs `fut` with `deadline` in scope, or with the deadline in scope where
/// `scope` is called if that one is earlier (a callee never gets more time
/// than its caller). Call it inside the scoped code, not as an argument
/// built before the outer scope is entered.
///
/// A deadline scoped by hand counts as the caller's
/// ([`Scoped::from_caller`]).
pub fn scope<F: Future>(deadline: Deadline, fut: F) -> TaskLocalFuture<Scoped, F> {
    let scoped = Scoped {
        deadline,
        from_caller: true,
    };
    CURRENT.scope(
        current_scoped().map_or(scoped, |outer| outer.min(scoped)),
        fut,
    )
}

/// Calls `call` with `deadline` in scope, and runs the future it returns in
/// that scope too (for services that start work in `call`).
pub(crate) fn enter<F: Future>(
    deadline: Deadline,
    from_caller: bool,
    call: impl FnOnce() -> F,
) -> TaskLocalFuture<Scoped, F> {
    let scoped = Scoped {
        deadline,
        from_caller,
    };
    let fut = CURRENT.sync_scope(scoped, call);
    CURRENT.scope(scoped, fut)
}

/// Wraps `fut` so that it runs with the current deadline (if any) in scope,
/// wherever it is polled: for work handed to another task.
pub fn carry<F: Future>(fut: F) -> Carried<F> {
    match current_scoped() {
        Some(d) => Carried {
            inner: CarriedInner::Scoped {
                fut: CURRENT.scope(d, fut),
            },
        },
        None => Carried {
            inner: CarriedInner::Bare { fut },
        },
    }
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

pin_project_lite::pin_project! {
    /// A future carrying the deadline that was in scope when it was made;
    /// see [`carry`].
    pub struct Carried<F: Future> {
        #[pin]
        inner: CarriedInner<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = CarriedProj]
    enum CarriedInner<F: Future> {
        Scoped { #[pin] fut: TaskLocalFuture<Scoped, F> },
        Bare { #[pin] fut: F },
    }
}

impl<F: Future> Future for Carried<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project().inner.project() {
            CarriedProj::Scoped { fut } => fut.poll(cx),
            CarriedProj::Bare { fut } => fut.poll(cx),
        }
    }
}

impl<F: Future> std::fmt::Debug for Carried<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried").finish_non_exhaustive()
    }
}
