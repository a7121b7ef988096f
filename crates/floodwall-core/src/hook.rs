//! Calling user hooks (listeners, observers) from inside a layer's
//! bookkeeping without letting them break it.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Calls `hook`, containing a panic: a hook runs in the middle of a layer's
/// bookkeeping (under its lock, while it hands a worker to a request, in a
/// permit's drop), where unwinding would strand a worker or a permit, or
/// abort the process when it happens during another unwind. Returns `false`
/// when the hook panicked (the panic message has been printed by the panic
/// hook as usual); the layer goes on as if the hook had returned.
///
/// ```
/// use floodwall_core::hook::contain;
///
/// assert!(contain(|| ()));
/// let previous = std::panic::take_hook();
/// std::panic::set_hook(Box::new(|_| {})); // keep the test output quiet
/// assert!(!contain(|| panic!("a broken listener")));
/// std::panic::set_hook(previous);
/// ```
pub fn contain(hook: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(hook)).is_ok()
}
