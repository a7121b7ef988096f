//! The queue's rejection.

use super::*;

/// The admission queue dropped the request: it never reached the service.
///
/// Its kind is [`RejectKind::DeadlineExceeded`] when the request's own
/// deadline could not be met, [`RejectKind::Overloaded`] otherwise (HTTP
/// 504 and 503, gRPC `DEADLINE_EXCEEDED` and `UNAVAILABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub(crate) reason: DropReason,
}

impl Shed {
    /// Why it was dropped.
    pub fn reason(&self) -> DropReason {
        self.reason
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            DropReason::Timeout => f.write_str("overloaded: request waited past its queue timeout"),
            DropReason::Codel => f.write_str("overloaded: request dropped by CoDel"),
            DropReason::Deadline => {
                f.write_str("request deadline could not be met: dropped before it ran")
            }
            DropReason::Full => f.write_str("overloaded: admission queue full"),
        }
    }
}

impl std::error::Error for Shed {}

impl Rejection for Shed {
    fn kind(&self) -> RejectKind {
        match self.reason {
            DropReason::Deadline => RejectKind::DeadlineExceeded,
            _ => RejectKind::Overloaded,
        }
    }
}
