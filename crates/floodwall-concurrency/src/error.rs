//! The errors of this crate: the adaptive limit's rejection and the
//! configuration error.

use std::fmt;

use floodwall_core::{RejectKind, Rejection};

pub use floodwall_core::ConfigError;

use crate::LimitRefused;

/// The adaptive limit refused the request: the limit was reached (and its
/// class, with partitions, had its guaranteed slots in use). Overloaded:
/// HTTP 503 / gRPC `UNAVAILABLE` through floodwall-http/grpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    refused: LimitRefused,
}

impl LimitExceeded {
    /// A refusal of a request of `class` under `limit` with `in_flight`
    /// requests in flight.
    pub const fn new(limit: u32, in_flight: u32, class: usize) -> Self {
        Self {
            refused: LimitRefused {
                limit,
                in_flight,
                class,
            },
        }
    }

    /// The limit when the request was refused.
    pub fn limit(&self) -> u32 {
        self.refused.limit
    }

    /// Requests in flight then.
    pub fn in_flight(&self) -> u32 {
        self.refused.in_flight
    }

    /// The request's priority class.
    pub fn class(&self) -> usize {
        self.refused.class
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overloaded: concurrency limit {} reached ({} in flight)",
            self.refused.limit, self.refused.in_flight
        )
    }
}

impl std::error::Error for LimitExceeded {}

impl Rejection for LimitExceeded {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}

impl From<LimitRefused> for LimitExceeded {
    fn from(refused: LimitRefused) -> Self {
        Self { refused }
    }
}
