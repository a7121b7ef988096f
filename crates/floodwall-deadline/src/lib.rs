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
//! - [`current`], [`scope`], [`carry`], [`spawn`]: the task-scoped deadline.
//!
//! Both layers create a Tokio timer in `call`, as tower's `Timeout` does:
//! they need a Tokio runtime with the time driver.
#![forbid(unsafe_code)]

mod layer;
mod scope;
mod timeout;

pub use floodwall_core::{DeadlineExceeded, Phase};
pub use layer::{
    ClientConfig, ClientFuture, DEFAULT_NAME, PropagateDeadline, PropagateDeadlineLayer,
    ResponseFuture, ServerConfig, ServerDeadline, ServerDeadlineLayer, ServerFuture, Wire,
};
pub use scope::{Carried, Scoped, carry, current, current_scoped, scope, spawn};
pub use timeout::{
    DEFAULT_HTTP_HEADER, GRPC_MAX_DIGITS, GRPC_TIMEOUT_HEADER, HTTP_MAX_DIGITS, TimeoutError,
    encode_grpc_timeout, encode_http_timeout, parse_grpc_timeout, parse_http_timeout,
};
