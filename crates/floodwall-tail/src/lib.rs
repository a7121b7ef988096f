//! Tail latency and graceful degradation for Tower.
//!
//! - [`CoalesceLayer`]: request coalescing (singleflight): while a call for
//!   a key is in flight, later requests with that key share its response
//!   instead of calling; the call goes on for the followers if the leader's
//!   caller goes away, and is cancelled once nobody waits for it.
#![forbid(unsafe_code)]

mod coalesce;

pub use coalesce::{
    Builder, Coalesce, CoalesceConfig, CoalesceFull, CoalesceHandle, CoalesceLayer, CoalescedError,
    DEFAULT_NAME, METRIC_PREFIX, OnError, ResponseFuture, WhenFull,
};
pub use floodwall_core::ConfigError;

/// The errors the layers return.
pub mod error {
    pub use crate::coalesce::{CoalesceFull, CoalescedError};
    pub use floodwall_core::ConfigError;
}

/// The response futures.
pub mod future {
    pub use crate::coalesce::ResponseFuture;
}
