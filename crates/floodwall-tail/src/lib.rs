//! Tail latency and graceful degradation for Tower.
//!
//! - [`HedgeLayer`]: hedged requests (gRPC A6 hedging policy): when an
//!   attempt is slow (a fixed delay, or a percentile of recent latencies),
//!   another is sent, up to five; the first good answer wins and the others
//!   are cancelled; non-fatal failures send the next hedge at once; server
//!   pushback delays or stops hedging; hedges draw on the A6 retry budget,
//!   shared with floodwall's retry layer. [`HedgeCall`] is its sans-IO core.
//! - [`CoalesceLayer`]: request coalescing (singleflight): while a call for
//!   a key is in flight, later requests with that key share its response
//!   instead of calling; the call goes on for the followers if the leader's
//!   caller goes away, and is cancelled once nobody waits for it.
//!   [`Singleflight`] is its core, for other layers to coalesce with.
//! - [`FallbackLayer`]: on a floodwall rejection, a classified failure or a
//!   timeout, an answer from a fallback ([`fallback::value`],
//!   [`fallback::from_fn`], [`fallback::service`]); the fallback's own
//!   failures are returned ([`FallbackFailed`]) and counted.
#![forbid(unsafe_code)]

mod coalesce;
mod fallback_layer;
mod hedge;
mod latency;
mod singleflight;

pub use coalesce::{
    Builder, Coalesce, CoalesceConfig, CoalesceFull, CoalesceHandle, CoalesceLayer, CoalescedError,
    DEFAULT_NAME, METRIC_PREFIX, OnError, ResponseFuture, WhenFull,
};
pub use fallback_layer::{
    Cause, FALLBACK_METRIC_PREFIX, FALLBACK_NAME, Fallback, FallbackBuilder, FallbackConfig,
    FallbackFailed, FallbackHandle, FallbackLayer, FallbackService, Trigger, fallback_trigger,
};
pub use floodwall_core::ConfigError;
pub use hedge::{
    HEDGE_METRIC_PREFIX, HEDGE_NAME, Hedge, HedgeBuilder, HedgeCall, HedgeConfig, HedgeDelay,
    HedgeHandle, HedgeLayer, HedgeSkip, HedgeStep, MAX_ATTEMPTS,
};
pub use singleflight::{Call, Entry, Follower, Lead, Leader, Singleflight};

/// Where a [`FallbackLayer`]'s answer comes from.
pub mod fallback {
    pub use crate::fallback_layer::{
        FallbackFuture, FromFn, ServiceFallback, Value, from_fn, service, value,
    };
}

/// The errors the layers return.
pub mod error {
    pub use crate::coalesce::{CoalesceFull, CoalescedError};
    pub use crate::fallback_layer::FallbackFailed;
    pub use floodwall_core::ConfigError;
}

/// The response futures.
pub mod future {
    pub use crate::coalesce::ResponseFuture;
    pub use crate::fallback_layer::FallbackResponseFuture;
    pub use crate::hedge::HedgeFuture;
}
