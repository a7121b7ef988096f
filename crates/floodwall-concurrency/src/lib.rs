//! Adaptive concurrency limits: how many requests may be in flight at once,
//! learned from the latency (and the losses) the requests see.
//!
//! This crate holds the algorithms as sans-IO cores. Each takes one
//! [`Sample`] per finished request — its round-trip time, how many requests
//! were in flight when it started, and whether it was dropped (timed out or
//! refused as overloaded) — and returns the new limit:
//!
//! - [`Vegas`]: TCP Vegas' queue estimate, `limit × (1 − RTT_noload / RTT)`,
//!   held between α and β;
//! - [`Gradient2`]: the gradient between a long-term average RTT and the
//!   latest one, plus a fixed headroom;
//! - [`Aimd`]: additive increase while requests succeed, multiplicative
//!   decrease on a drop.
//!
//! The formulas and every default are those of Netflix's concurrency-limits
//! library (`VegasLimit`, `Gradient2Limit`, `AIMDLimit`); each type's docs
//! give them. The Tower layer, the Envoy-style and BBR-style controllers
//! and partitioned limits are not built yet (issue 13).
//!
//! ```
//! use std::time::Duration;
//! use floodwall_concurrency::{Algorithm, Aimd, AimdConfig, Sample};
//!
//! let mut aimd = Aimd::new(AimdConfig::default())?;
//! assert_eq!(aimd.limit(), 10);
//! // Busy (at least half the limit in flight) and fast: +1.
//! let ok = Sample { rtt: Duration::from_millis(20), inflight: 8, dropped: false };
//! assert_eq!(aimd.update(&ok), 11);
//! // A drop: × 0.9, rounded down.
//! let lost = Sample { dropped: true, ..ok };
//! assert_eq!(aimd.update(&lost), 9);
//! # Ok::<(), floodwall_core::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

mod aimd;
mod gradient2;
mod vegas;

use std::time::Duration;

pub use aimd::{Aimd, AimdConfig};
pub use gradient2::{Gradient2, Gradient2Config};
pub use vegas::{Vegas, VegasConfig};

/// What one finished request tells the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// From sending the request to its answer (or its drop).
    pub rtt: Duration,
    /// Requests in flight when this one started, itself included.
    pub inflight: u32,
    /// It timed out or was refused as overloaded.
    pub dropped: bool,
}

/// A concurrency-limit algorithm: a sans-IO state machine fed one sample per
/// finished request.
pub trait Algorithm: Send + 'static {
    /// The limit now.
    fn limit(&self) -> u32;

    /// Takes one sample and returns the new limit.
    fn update(&mut self, sample: &Sample) -> u32;
}

/// Netflix's `Log10RootFunction`: `max(1, ⌊log10 n⌋)` for `n < 1000`, and
/// `⌊√n⌋` from 1000 on (sic: the library switches to the square root there).
pub fn log10_root(n: u32) -> u32 {
    if n < 1000 {
        // ⌊log10 n⌋ for n in 0..1000, at least 1.
        match n {
            0..=99 => 1,
            _ => 2,
        }
    } else {
        (f64::from(n)).sqrt() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log10_root_matches_the_library_table() {
        assert_eq!(log10_root(0), 1);
        assert_eq!(log10_root(9), 1);
        assert_eq!(log10_root(10), 1);
        assert_eq!(log10_root(99), 1);
        assert_eq!(log10_root(100), 2);
        assert_eq!(log10_root(999), 2);
        assert_eq!(log10_root(1000), 31);
        assert_eq!(log10_root(10_000), 100);
    }
}
