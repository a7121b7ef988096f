use std::future::Future;

use floodwall_core::Priority;
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static PRIORITY: Priority;
}

/// The priority of the request this task is handling, if a floodwall layer
/// (or [`scope`]) set one. Outbound calls made through
/// [`PriorityClientLayer`](crate::PriorityClientLayer) send it downstream.
pub fn current() -> Option<Priority> {
    PRIORITY.try_with(|p| *p).ok()
}

/// Runs `fut` with `priority` as the task's [`current`] priority. The
/// server layers do this around the inner service's future; use it for work
/// spawned off the request's task (`tokio::spawn(scope(p, fut))`).
pub fn scope<F: Future>(priority: Priority, fut: F) -> TaskLocalFuture<Priority, F> {
    PRIORITY.scope(priority, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_sets_current() {
        assert_eq!(current(), None);
        let p = Priority::new(4, 2).unwrap();
        assert_eq!(scope(p, async { current() }).await, Some(p));
        assert_eq!(current(), None);
    }
}
