//! Injectable random numbers, for the layers that draw them (throttling,
//! jitter, ramps), so that tests and simulations are deterministic.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of uniform random numbers in `[0, 1)`, injectable so that tests
/// and simulations are deterministic.
pub trait Random: Send + Sync + 'static {
    /// The next number in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// SplitMix64 over one `AtomicU64`: lock-free (one `fetch_add` per draw),
/// seedable, and deterministic for a given seed and call order.
pub struct SplitMix(AtomicU64);

impl SplitMix {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A generator seeded from the clock and the address of a local, for
    /// production use.
    pub fn from_entropy() -> Self {
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as u64;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(time ^ addr.rotate_left(32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Random for SplitMix {
    fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl fmt::Debug for SplitMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitMix").finish_non_exhaustive()
    }
}

impl<F: Fn() -> f64 + Send + Sync + 'static> Random for F {
    fn next_f64(&self) -> f64 {
        self()
    }
}

impl Random for Box<dyn Random> {
    fn next_f64(&self) -> f64 {
        (**self).next_f64()
    }
}
