//! Deadline propagation for Tower.
//!
//! - [`parse_grpc_timeout`] / [`encode_grpc_timeout`]: the `grpc-timeout`
//!   header, strictly (1–8 digits and a unit) and encoded as grpc-go does;
//!   [`parse_http_timeout`] / [`encode_http_timeout`]: an HTTP header of
//!   integer milliseconds ([`DEFAULT_HTTP_HEADER`]).
//! - [`ServerDeadlineLayer`]: fixes each request's
//!   [`Deadline`](floodwall_core::Deadline) as `arrival + min(header, max)`,
//!   refuses requests that arrive expired, drops the handler at the
//!   deadline with [`DeadlineExceeded`], and puts the deadline in the task
//!   scope for the handler's outbound calls.
//! - [`PropagateDeadlineLayer`]: sends an outbound call the time that
//!   remains, less a margin, capped by the call's own timeout; fails it
//!   locally when nothing remains.
//! - [`EmaTimeoutLayer`]: the ema-timeout algorithm, a per-call timeout
//!   from the EMA of the calls' latencies ([`EmaTimeout`]): long while the
//!   dependency is fast, short once it is slow; a sooner deadline in force
//!   wins.
//! - [`current`], [`scope`], [`carry`], [`spawn`]: the task-scoped deadline.
//!
//! Both layers create a Tokio timer in `call`, as tower's `Timeout` does:
//! they need a Tokio runtime with the time driver.
#![forbid(unsafe_code)]

mod builder;
mod client;
mod ema;
pub mod future;
mod scope;
mod server;
mod timeout;
mod wire;

/// The prefix of the deadline layers' metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_deadline_requests_total{name,
/// outcome, reason}` (rejected: expired before it was handed on);
/// `floodwall_deadline_exceeded_total{name, phase}` for every deadline that
/// ran out, by phase; the histogram
/// `floodwall_deadline_inbound_seconds{name}` of the time requests arrive
/// with.
pub const METRIC_PREFIX: &str = "deadline";

/// The default name of a deadline layer (metric label).
pub const DEFAULT_NAME: &str = "deadline";

pub use builder::{Builder, DeadlineHandle};
pub use client::{PropagateDeadline, PropagateDeadlineConfig, PropagateDeadlineLayer};
/// The errors of this crate: the rejection a deadline layer answers with,
/// its configuration error, and a timeout header that does not parse.
pub mod error {
    pub use crate::timeout::TimeoutError;
    pub use floodwall_core::{ConfigError, DeadlineExceeded, Phase};
}
pub use ema::{EmaFuture, EmaTimeout, EmaTimeoutConfig, EmaTimeoutLayer, EmaTimeoutService};
pub use error::{ConfigError, DeadlineExceeded, Phase};
pub use future::{ClientFuture, ResponseFuture, ServerFuture};
pub use scope::{Carried, Scoped, ScopedFuture, carry, current, current_scoped, scope, spawn};
pub use server::{ServerDeadline, ServerDeadlineConfig, ServerDeadlineLayer};
pub use timeout::{
    DEFAULT_HTTP_HEADER, GRPC_MAX_DIGITS, GRPC_TIMEOUT_HEADER, HTTP_MAX_DIGITS, TimeoutError,
    encode_grpc_timeout, encode_http_timeout, parse_grpc_timeout, parse_http_timeout,
};
pub use wire::Wire;
