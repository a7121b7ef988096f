//! The errors of this crate: the throttle's rejection and the
//! configuration error (of the throttle, the retry budget and the retry
//! layer).

use std::fmt;

use floodwall_core::{RejectKind, Rejection};

pub use floodwall_core::ConfigError;

/// The request was dropped locally by adaptive throttling: the backend has
/// been refusing, and sending it would only add load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    probability: f64,
}

impl Throttled {
    /// The rejection probability the request was dropped with.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request throttled locally (rejection probability {:.3})",
            self.probability
        )
    }
}

impl std::error::Error for Throttled {}

impl Rejection for Throttled {
    fn kind(&self) -> RejectKind {
        RejectKind::Throttled
    }
}

impl Throttled {
    pub(crate) const fn new(probability: f64) -> Self {
        Self { probability }
    }
}
