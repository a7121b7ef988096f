//! Hot keys for Tower.
//!
//! - [`HeavyKeeper`]: the HeavyKeeper Top-K sketch (Gong et al., USENIX ATC
//!   2018): the `k` heaviest keys of a stream in bounded memory, faded so
//!   that heavy means heavy now, sharded so that concurrent adds rarely
//!   wait. Sans-IO.
//! - [`AggregateLayer`]: write aggregation: additive updates to one key
//!   within a window merged into one downstream write, every caller
//!   answered with its batch's outcome, pending keys bounded.
#![forbid(unsafe_code)]

mod aggregate;
mod topk;

pub use aggregate::{
    AGGREGATE_METRIC_PREFIX, AGGREGATE_NAME, Aggregate, AggregateBuilder, AggregateConfig,
    AggregateError, AggregateFull, AggregateHandle, AggregateLayer, Merge, Sum, Update,
};
pub use floodwall_core::ConfigError;
pub use topk::{HeavyKeeper, TopKConfig};

/// The errors the layers return.
pub mod error {
    pub use crate::aggregate::{AggregateError, AggregateFull};
    pub use floodwall_core::ConfigError;
}

/// The response futures.
pub mod future {
    pub use crate::aggregate::AggregateFuture;
}
