//! A CoDel + adaptive LIFO admission queue for Tower servers.
//!
//! - [`AdmissionQueue`]: the sans-IO queue. Fail-at-Scale queue timeouts
//!   ([`Policy::FailAtScale`], the default) or the RFC 8289 state machine
//!   and control law ([`Policy::Codel`]) on request sojourn times; newest
//!   first while congested ([`Lifo`]); requests whose deadline cannot be met
//!   dropped before they run.
//! - [`CodelLayer`] / [`Codel`]: at most `workers` requests in the
//!   inner service, the rest in the queue; dropped requests fail with a
//!   [`Shed`] rejection and never reach the service; a cancelled waiter
//!   leaves the queue at once. [`CodelHandle`] reads the live state.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_codel::{AdmissionQueue, CodelConfig, DropReason, Lifo, Policy};
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let ms = Duration::from_millis;
//! let config = CodelConfig { policy: Policy::codel(), lifo: Lifo::Never, ..Default::default() };
//! let mut q = AdmissionQueue::new(&config)?;
//! for i in 0..10 {
//!     q.push(t0, i, t0, None).unwrap();
//! }
//! let mut drops = Vec::new();
//! // Sojourn 10 ms ≥ TARGET: the first interval starts.
//! assert_eq!(q.pop(t0 + ms(10), |i, r| drops.push((i, r))), Some(0));
//! // Still above TARGET an INTERVAL later: drop one, serve the next.
//! assert_eq!(q.pop(t0 + ms(110), |i, r| drops.push((i, r))), Some(2));
//! assert_eq!(drops, [(1, DropReason::Codel)]);
//! assert!(q.is_dropping());
//! # Ok::<(), floodwall_codel::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

/// The prefix of the CoDel layer's metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_codel_requests_total{name,
/// outcome, reason}`; `floodwall_codel_dropped_total{name, reason}` by drop
/// reason (`timeout`, `codel`, `deadline`, `full`); the gauges
/// `floodwall_codel_queue_length{name}` and `floodwall_codel_lifo{name}`;
/// the histogram `floodwall_codel_sojourn_seconds{name}`.
pub const METRIC_PREFIX: &str = "codel";

pub mod bulkhead;
mod config;
mod layer;
mod queue;

pub use bulkhead::{Bulkhead, BulkheadBuilder, BulkheadConfig, BulkheadHandle, BulkheadLayer};
pub use config::{CodelConfig, ConfigError, Lifo, Policy};
pub use layer::{
    Builder, Codel, CodelHandle, CodelLayer, DEFAULT_NAME, NoTiming, ResponseFuture, Shed,
    TimingFromExtensions, TimingOf,
};
pub use queue::{AdmissionQueue, DropReason, Popped, control_law};

/// The errors of this crate: the queue's rejection and the configuration
/// error.
pub mod error {
    pub use crate::config::ConfigError;
    pub use crate::layer::Shed;
}

/// The response future of [`Codel`] (and [`Bulkhead`]).
pub mod future {
    pub use crate::layer::{Queued, ResponseFuture};
}
