//! The errors of write aggregation: a write's error shared by its batch
//! ([`AggregateError`]) and the refusal of an update when too many keys
//! gather ([`AggregateFull`]).

use std::fmt;
use std::sync::Arc;

use floodwall_core::{RejectKind, Rejection};

/// An aggregated write's error, shared by every update in its batch.
#[derive(Debug, Clone)]
pub struct AggregateError(pub(super) Arc<dyn std::error::Error + Send + Sync>);

impl AggregateError {
    /// The write's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for AggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the aggregated write failed: {}", self.0)
    }
}

impl std::error::Error for AggregateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Refused: `max_keys` keys were already gathering and the update is for
/// another. An `Overloaded` rejection (HTTP 503 / gRPC `UNAVAILABLE`): the
/// update was not taken.
#[derive(Debug, Clone, Copy)]
pub struct AggregateFull {
    pub(super) max_keys: usize,
}

impl fmt::Display for AggregateFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write aggregation is full ({} keys gathering)",
            self.max_keys
        )
    }
}

impl std::error::Error for AggregateFull {}

impl Rejection for AggregateFull {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}
