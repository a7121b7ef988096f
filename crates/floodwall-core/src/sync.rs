//! The atomics and the lock the lock-free cores use, swappable for
//! [loom](https://docs.rs/loom)'s.
//!
//! Normally these are `std`'s atomics and a poison-free wrapper over
//! `std::sync::Mutex`. Built with `RUSTFLAGS="--cfg floodwall_loom"`,
//! they are loom's, so that loom model tests explore every interleaving of
//! the cores' operations. Only the cores' shared state goes through here; nothing else
//! changes under loom.

#[cfg(not(floodwall_loom))]
pub use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(floodwall_loom)]
pub use loom::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Marks the point between a `SeqCst` store and a `SeqCst` load (or
/// read-modify-write) of *another* location whose correctness rests on
/// sequential consistency's single total order (the store-buffering, or
/// Dekker, pattern: each side writes its flag, then reads the other's).
///
/// The real `SeqCst` operations already forbid the outcome where both sides
/// miss each other's write, so normally this is nothing. loom, however,
/// models `SeqCst` accesses as acquire/release only (a documented
/// limitation) and would report that outcome; under `floodwall_loom` this
/// is a `SeqCst` fence, which loom does model and which forbids exactly the
/// same outcome.
#[inline(always)]
pub fn seqcst_handoff() {
    #[cfg(floodwall_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// One turn of a short wait for another thread to finish a few
/// instructions (a reconfiguration sealing a cell): a spin hint normally,
/// a yield under loom so the model lets the other thread run.
#[inline(always)]
pub fn spin_wait() {
    #[cfg(not(floodwall_loom))]
    std::hint::spin_loop();
    #[cfg(floodwall_loom)]
    loom::thread::yield_now();
}

/// A mutual-exclusion lock for the cores' slow paths: `std`'s (or loom's)
/// without poisoning — a panic while holding it cannot leave the cores'
/// plain data half-updated, because they keep none under it but `()` or
/// values written whole.
#[derive(Debug, Default)]
pub struct Mutex<T> {
    #[cfg(not(floodwall_loom))]
    inner: std::sync::Mutex<T>,
    #[cfg(floodwall_loom)]
    inner: loom::sync::Mutex<T>,
}

/// The guard of a locked [`Mutex`].
#[cfg(not(floodwall_loom))]
pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
/// The guard of a locked [`Mutex`].
#[cfg(floodwall_loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    /// A lock around `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(floodwall_loom))]
            inner: std::sync::Mutex::new(value),
            #[cfg(floodwall_loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Locks it, waiting for another holder to unlock. A poisoned lock (a
    /// holder panicked) is taken as it is.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
