//! The errors of this crate: the breaker's rejection and the configuration
//! error.

use std::fmt;
use std::time::Duration;

use floodwall_core::{RejectKind, Rejection};

pub use floodwall_core::ConfigError;

use crate::State;

/// The breaker refused the call: it is open (or forced open, or out of
/// half-open probes, or ramping). Never sent, never counted as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: State,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    /// The state that refused the call.
    pub fn state(&self) -> State {
        self.state
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(
                f,
                "circuit breaker {}; probing again in {d:?}",
                self.state.as_str()
            ),
            None => write!(f, "circuit breaker {}: call refused", self.state.as_str()),
        }
    }
}

impl std::error::Error for CircuitOpen {}

impl Rejection for CircuitOpen {
    fn kind(&self) -> RejectKind {
        RejectKind::CircuitOpen
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl CircuitOpen {
    pub(crate) const fn new(state: State, retry_after: Option<Duration>) -> Self {
        Self { state, retry_after }
    }
}
