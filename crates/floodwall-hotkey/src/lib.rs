//! Hot keys for Tower.
//!
//! - [`HeavyKeeper`]: the HeavyKeeper Top-K sketch (Gong et al., USENIX ATC
//!   2018): the `k` heaviest keys of a stream in bounded memory, faded so
//!   that heavy means heavy now, sharded so that concurrent adds rarely
//!   wait. Sans-IO.
//! - [`HotKeyLayer`]: counts each request's key, publishes the hot set
//!   (handle, `watch`, callbacks), marks hot requests ([`Hot`]) and limits
//!   each hot key on its own quota; [`HotCacheLayer`] below it answers hot
//!   keys from a bounded TTL cache, misses coalesced, so a hot key reaches
//!   the backend at most once per TTL.
//! - [`AggregateLayer`]: write aggregation: additive updates to one key
//!   within a window merged into one downstream write, every caller
//!   answered with its batch's outcome, pending keys bounded.
#![forbid(unsafe_code)]

mod aggregate;
mod cache;
mod hot;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod topk;

pub use aggregate::{
    AGGREGATE_METRIC_PREFIX, AGGREGATE_NAME, Aggregate, AggregateBuilder, AggregateConfig,
    AggregateError, AggregateFull, AggregateHandle, AggregateLayer, Merge, Sum, Update,
};
pub use cache::{
    HOT_CACHE_METRIC_PREFIX, HOT_CACHE_NAME, HotCache, HotCacheBuilder, HotCacheConfig,
    HotCacheFuture, HotCacheHandle, HotCacheLayer,
};
pub use floodwall_core::ConfigError;
pub use hot::{
    HOT_KEY_METRIC_PREFIX, HOT_KEY_NAME, Hot, HotChange, HotKey, HotKeyBuilder, HotKeyConfig,
    HotKeyFuture, HotKeyHandle, HotKeyLayer, HotSet, Keyed,
};
pub use topk::{HeavyKeeper, TopKConfig};

/// The errors the layers return.
pub mod error {
    pub use crate::aggregate::{AggregateError, AggregateFull};
    pub use floodwall_core::ConfigError;
}

/// The response futures.
pub mod future {
    pub use crate::aggregate::AggregateFuture;
    pub use crate::cache::HotCacheFuture;
    pub use crate::hot::HotKeyFuture;
}
