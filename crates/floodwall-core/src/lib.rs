//! The shared vocabulary of the floodwall layers.
//!
//! Every floodwall layer is an independent crate; this one holds the few types
//! they exchange, so that a rejection raised by any layer can be turned into
//! the right HTTP or gRPC response, and so that arrival times, deadlines and
//! priorities travel between layers and services in one agreed form.
//!
//! - [`Rejection`], [`RejectKind`] and the [`Rejected`] envelope: how every
//!   layer reports that it refused a request, with an optional retry-after
//!   and, for rate limiters, the [`RateLimitPolicy`] that was exceeded.
//! - [`Classify`] and [`Outcome`]: whether a response (or error) counts as a
//!   success, a failure, or a sign that the backend is overloaded.
//! - [`Arrival`], [`Deadline`], [`Priority`] and [`Criticality`]: request
//!   extensions shared by the queueing, deadline, throttling and admission
//!   layers.
//! - [`metrics`]: the metric names every layer reports under.
//! - [`random`]: an injectable, seedable random source.
//! - [`wire`]: the header names floodwall layers exchange between services.
//! - [`window`]: a trailing window of counters in buckets, with O(1) totals,
//!   kept by the circuit breaker and the SRE throttle.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::{BoxError, RejectKind, Rejected, Rejection};
//!
//! #[derive(Debug)]
//! struct TooBusy;
//!
//! impl std::fmt::Display for TooBusy {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("too busy")
//!     }
//! }
//! impl std::error::Error for TooBusy {}
//! impl Rejection for TooBusy {
//!     fn kind(&self) -> RejectKind {
//!         RejectKind::Overloaded
//!     }
//!     fn retry_after(&self) -> Option<Duration> {
//!         Some(Duration::from_millis(250))
//!     }
//! }
//!
//! // A layer returns the rejection boxed in the envelope...
//! let err: BoxError = Rejected::boxed(TooBusy);
//! // ...and anything downstream finds it again, whatever layer raised it.
//! let rejected = Rejected::find(&*err).expect("a floodwall rejection");
//! assert_eq!(rejected.kind(), RejectKind::Overloaded);
//! assert_eq!(rejected.retry_after(), Some(Duration::from_millis(250)));
//! assert!(rejected.get::<TooBusy>().is_some());
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod classify;
pub mod clock;
pub mod config;
pub mod deadline;
mod extensions;
pub mod hook;
pub mod key;
pub mod metrics;
pub mod outcome;
mod priority;
pub mod random;
mod rejection;
pub mod service;
pub mod sync;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod window;
pub mod wire;

pub use classify::{Classify, GrpcClassifier, GrpcCode, HttpClassifier, Outcome, ResultClassifier};
pub use config::ConfigError;
pub use deadline::{DeadlineExceeded, Phase};
pub use extensions::{Arrival, Deadline, Stamp};
pub use priority::{Criticality, InvalidPriority, ParsePriorityError, Priority};
pub use rejection::{RateLimitPolicy, RejectKind, Rejected, Rejection};

/// The boxed error type returned by every floodwall service.
///
/// Layers that add a failure of their own return it boxed, as tower does;
/// errors of the inner service are boxed unchanged and pass through untouched.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
