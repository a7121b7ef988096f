use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use floodwall_core::Priority;
use pin_project_lite::pin_project;

thread_local! {
    /// The priority of the future being polled on this thread, if it runs
    /// inside a [`scope`].
    static CURRENT: Cell<Option<Priority>> = const { Cell::new(None) };
}

/// The priority of the request this task is handling, if a floodwall layer
/// (or [`scope`]) set one. Outbound calls made through
/// [`PriorityClientLayer`](crate::PriorityClientLayer) send it downstream.
pub fn current() -> Option<Priority> {
    CURRENT.with(Cell::get)
}

/// Runs `fut` with `priority` as its [`current`] priority: set while `fut`
/// is polled, restored after each poll. The server layers do this around the
/// inner service's future; use it for work spawned off the request's task
/// (`tokio::spawn(scope(p, fut))`).
pub fn scope<F: Future>(priority: Priority, fut: F) -> Scoped<F> {
    Scoped {
        fut,
        priority: Some(priority),
    }
}

/// `fut` with no priority of its own: polled as is, leaving any outer
/// scope's priority in place.
pub(crate) fn unscoped<F: Future>(fut: F) -> Scoped<F> {
    Scoped {
        fut,
        priority: None,
    }
}

pin_project! {
    /// A future running in a priority [`scope`].
    pub struct Scoped<F> {
        #[pin]
        fut: F,
        priority: Option<Priority>,
    }
}

/// Puts the previous priority back, even if the inner poll panics.
struct Restore(Option<Priority>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(priority) = *this.priority else {
            return this.fut.poll(cx);
        };
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(priority))));
        this.fut.poll(cx)
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_sets_current_and_nests() {
        assert_eq!(current(), None);
        let outer = Priority::new(4, 2).unwrap();
        let inner = Priority::new(1, 1).unwrap();
        let seen = scope(outer, async {
            let a = current();
            let b = scope(inner, async { current() }).await;
            (a, b, current())
        })
        .await;
        assert_eq!(seen, (Some(outer), Some(inner), Some(outer)));
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn scope_survives_task_switches() {
        let p = Priority::new(2, 9).unwrap();
        let other = tokio::spawn(async { current() });
        let mine = scope(p, async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(mine, Some(p));
        assert_eq!(other.await.unwrap(), None);
    }
}
