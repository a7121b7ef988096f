//! The errors of this crate: the rejection priority admission answers with
//! and the configuration error.

use std::fmt;

use floodwall_core::{Priority, RejectKind, Rejection};

pub use floodwall_core::ConfigError;

/// Priority admission refused the request: its priority is below the
/// admission level. HTTP 503 / gRPC `UNAVAILABLE`, with the level in
/// [`ADMISSION_LEVEL_HEADER`](floodwall_core::wire::ADMISSION_LEVEL_HEADER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prioritized {
    priority: Priority,
    level: Priority,
    local: bool,
    advertise: bool,
}

impl Prioritized {
    /// A refusal of `priority` by `level`; `local` when a collaborative
    /// client dropped it on the downstream's behalf without sending it.
    pub const fn new(priority: Priority, level: Priority, local: bool) -> Self {
        Self {
            priority,
            level,
            local,
            advertise: !local,
        }
    }

    /// The same refusal, but its level is not sent back to the caller (in
    /// criticality mode the level is on the class scale, which DAGOR
    /// clients would misread).
    pub(crate) const fn unadvertised(mut self) -> Self {
        self.advertise = false;
        self
    }

    /// The request's priority.
    pub const fn priority(&self) -> Priority {
        self.priority
    }

    /// The admission level that refused it.
    pub const fn level(&self) -> Priority {
        self.level
    }

    /// Whether a collaborative client dropped it locally (it was never sent).
    pub const fn is_local(&self) -> bool {
        self.local
    }
}

impl fmt::Display for Prioritized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local {
            write!(
                f,
                "dropped locally: priority {} is below the downstream's admission level {}",
                self.priority, self.level
            )
        } else {
            write!(
                f,
                "dropped by priority admission: priority {} is below the admission level {}",
                self.priority, self.level
            )
        }
    }
}

impl std::error::Error for Prioritized {}

impl Rejection for Prioritized {
    fn kind(&self) -> RejectKind {
        RejectKind::Prioritized
    }

    /// The server's level, for refusals by this server. `None` for local
    /// drops (the level is the downstream's, not this server's) and in
    /// criticality mode.
    fn admission_level(&self) -> Option<Priority> {
        self.advertise.then_some(self.level)
    }
}
