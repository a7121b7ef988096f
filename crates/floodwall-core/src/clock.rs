//! One clock read per request: the instant a request's synchronous call
//! chain runs at.
//!
//! The outermost floodwall layer reads the clock once and runs the layers
//! below it [`within`] that instant; every layer that decides "now" in its
//! `call` asks [`now`], which returns that instant inside the chain and
//! reads the clock outside it (in a future polled later, in a task, after
//! a queue handed the request on). So a stack of five layers reads the
//! clock once per request instead of five times, and a request that waited
//! in a queue is decided at the time it leaves the queue, not when it
//! arrived.
//!
//! ```
//! use floodwall_core::clock;
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let seen = clock::within(t0, || clock::now());
//! assert_eq!(seen, t0, "inside the chain: the instant it runs at");
//! assert!(clock::now() >= t0, "outside: the clock");
//! ```

use std::cell::Cell;
use std::marker::PhantomData;

use tokio::time::Instant;

thread_local! {
    static CALL_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant of the call chain running on this thread, or the clock
/// (`tokio::time::Instant::now()`, so paused test time applies) outside
/// one.
#[inline]
pub fn now() -> Instant {
    CALL_AT.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Whether a call chain's instant is in force on this thread.
#[inline]
pub fn in_chain() -> bool {
    CALL_AT.with(Cell::get).is_some()
}

/// Runs `call` (a synchronous `Service::call` into the layers below) with
/// [`now`] reading `at`; the previous instant is restored afterwards, even
/// if `call` panics. Inside a chain already, the outer instant stays (the
/// chain has one instant).
#[inline]
pub fn within<R>(at: Instant, call: impl FnOnce() -> R) -> R {
    let _chain = enter(at);
    call()
}

/// [`within`] as a guard, for a `call` that takes a large request by value:
/// [`now`] reads `at` until the guard drops (unless a chain was in force
/// already, which keeps its instant). Moving the request into a closure
/// copies it; a guard leaves it where it is.
///
/// ```
/// use floodwall_core::clock;
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// {
///     let _chain = clock::enter(t0);
///     assert_eq!(clock::now(), t0);
/// }
/// assert!(!clock::in_chain());
/// ```
#[inline]
pub fn enter(at: Instant) -> Chain {
    if in_chain() {
        return Chain {
            owner: false,
            _thread: PhantomData,
        };
    }
    CALL_AT.with(|c| c.set(Some(at)));
    Chain {
        owner: true,
        _thread: PhantomData,
    }
}

/// The guard [`enter`] returns: ends the chain it began when dropped. Not
/// `Send`: it must drop on the thread whose chain it began (hold it across
/// a synchronous call, never across an `.await`).
#[derive(Debug)]
#[must_use = "the chain ends when the guard drops"]
pub struct Chain {
    owner: bool,
    _thread: PhantomData<*const ()>,
}

impl Drop for Chain {
    #[inline]
    fn drop(&mut self) {
        if self.owner {
            CALL_AT.with(|c| c.set(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_chain_has_one_instant_and_ends_with_the_call() {
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        let (outer, inner) = within(t0, || (now(), within(Instant::now(), now)));
        assert_eq!(
            (outer, inner),
            (t0, t0),
            "a nested chain keeps the outer instant"
        );
        assert!(!in_chain());
        assert_eq!(now(), t0 + Duration::from_millis(5), "the clock again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_call_ends_the_chain() {
        let t0 = Instant::now();
        let caught = std::panic::catch_unwind(|| within(t0, || panic!("boom")));
        assert!(caught.is_err());
        assert!(!in_chain(), "restored on unwind");
    }
}
