//! DAGOR-style priority admission for Tower services (Zhou et al., "Overload
//! Control for Scaling WeChat Microservices", SoCC 2018).
//!
//! Under overload a service should refuse the least important work first,
//! and refuse it consistently: a user whose request was admitted by the first
//! service should see the rest of that request admitted downstream too.
//! DAGOR gets both from one compound priority, `(business, user)`, assigned
//! once at the entry and inherited by every downstream call, and one
//! adaptive admission level per server.
//!
//! - [`AssignPriorityLayer`] (entry services): business priority from a
//!   [`BusinessTable`] keyed by route or gRPC method, user priority from an
//!   hourly-rekeyed hash of the user id; into the [`Priority`] extension,
//!   onto the wire ([`PRIORITY_HEADER`](floodwall_core::wire::PRIORITY_HEADER)),
//!   and into the task scope ([`current`]). Forged inbound headers are
//!   replaced.
//! - [`AdmissionLayer`] (every server): admits a request iff its priority
//!   is at or above the [`AdmissionController`]'s level, which follows the
//!   average queuing time over windows of 1 s or 2000 requests; refused
//!   requests fail with [`Prioritized`] (HTTP 503 / gRPC `UNAVAILABLE`).
//!   Responses carry the level back. [`Mode::Criticality`] orders by the
//!   four SRE criticality classes instead.
//! - [`PriorityClientLayer`] (every client): sends the priority downstream
//!   and drops locally what the downstream's advertised level would refuse.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::Priority;
//! use floodwall_priority::{AdmissionConfig, AdmissionController};
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let controller = AdmissionController::new(&AdmissionConfig::default(), t0)?;
//! let vip = Priority::new(0, 3)?;
//! let batch = Priority::new(9, 100)?;
//! assert!(controller.admit(t0, vip).is_ok());
//! assert!(controller.admit(t0, batch).is_ok(), "everything is admitted until overload");
//! controller.record_queuing(t0, Duration::from_millis(50));
//! // The window ends after 1 s: 50 ms average queuing is overload, so the
//! // level drops below the batch request's priority.
//! let report = controller.poll_window(t0 + Duration::from_secs(1)).unwrap();
//! assert!(report.overloaded);
//! assert!(controller.admit(t0 + Duration::from_secs(1), batch).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

/// The prefix of the priority layers' metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_priority_requests_total{name,
/// outcome, reason, priority}` (DAGOR admission, by business priority or
/// criticality class); the gauges `floodwall_priority_level{name}` and
/// `floodwall_priority_queuing_seconds{name}`; and, on the collaborative
/// client, `floodwall_priority_local_dropped_total{name}`.
pub const METRIC_PREFIX: &str = "priority";

/// The label carrying a request's business priority (or criticality class)
/// on `floodwall_priority_requests_total`.
pub const LABEL_PRIORITY: &str = "priority";

mod assign;
mod client;
mod config;
mod controller;
pub mod error;
mod scope;
mod server;

pub use assign::{AssignConfig, AssignPriority, AssignPriorityLayer, BusinessTable};
pub use client::{
    ClientBuilder, DEFAULT_CLIENT_NAME, PriorityClient, PriorityClientConfig, PriorityClientHandle,
    PriorityClientLayer,
};
pub use config::{AdmissionConfig, ConfigError};
pub use controller::{AdmissionController, WindowReport};
pub use error::Prioritized;
pub use floodwall_core::Priority;
pub use scope::{Scoped, current, scope};
pub use server::{
    Admission, AdmissionHandle, AdmissionLayer, Builder, DEFAULT_NAME, Mode, Queuing,
};

/// The response futures of this crate's services.
pub mod future {
    pub use crate::client::ClientFuture;
    pub use crate::server::ResponseFuture;
}
#[doc(inline)]
pub use future::{ClientFuture, ResponseFuture};
