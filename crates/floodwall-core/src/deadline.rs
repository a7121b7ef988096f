//! Where and why a deadline ran out: the rejection every deadline-enforcing
//! layer raises, shared so that the outcome rule can read it.

use std::fmt;

use crate::{RejectKind, Rejection};

/// Where a deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The request arrived with no time left; its handler never ran.
    OnArrival,
    /// The handler was still running at the deadline; it was dropped.
    InFlight,
    /// An outbound call had no time left; it was not sent.
    BeforeSend,
    /// An outbound call's response did not come back in time.
    AwaitingResponse,
}

impl Phase {
    /// All phases, in metric-label order.
    pub const ALL: [Phase; 4] = [
        Phase::OnArrival,
        Phase::InFlight,
        Phase::BeforeSend,
        Phase::AwaitingResponse,
    ];

    /// A short lowercase name, for metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::OnArrival => "on_arrival",
            Phase::InFlight => "in_flight",
            Phase::BeforeSend => "before_send",
            Phase::AwaitingResponse => "awaiting_response",
        }
    }
}

/// The request's deadline passed. HTTP 504, gRPC `DEADLINE_EXCEEDED` (never
/// `CANCELLED`) through floodwall-http / floodwall-grpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    phase: Phase,
    caller_limited: bool,
}

impl DeadlineExceeded {
    /// A deadline that ran out in `phase`. `caller_limited`: the deadline
    /// that ran out was the caller's, and it gave the call less time than
    /// the call's own configured budget (see [`crate::outcome`]).
    pub const fn new(phase: Phase, caller_limited: bool) -> Self {
        Self {
            phase,
            caller_limited,
        }
    }

    /// Where it ran out.
    pub const fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the caller's deadline, shorter than the call's configured
    /// budget, is the one that ran out. Such a timeout says nothing about
    /// the dependency.
    pub const fn caller_limited(&self) -> bool {
        self.caller_limited
    }

    /// Whether the request had been handed on (a handler running, an
    /// outbound call sent) when the deadline ran out.
    pub const fn was_sent(&self) -> bool {
        matches!(self.phase, Phase::InFlight | Phase::AwaitingResponse)
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::OnArrival => f.write_str("deadline exceeded before the request arrived"),
            Phase::InFlight => f.write_str("deadline exceeded while handling the request"),
            Phase::BeforeSend => f.write_str("deadline exceeded: outbound call not sent"),
            Phase::AwaitingResponse => {
                f.write_str("deadline exceeded while waiting for the response")
            }
        }
    }
}

impl std::error::Error for DeadlineExceeded {}

impl Rejection for DeadlineExceeded {
    fn kind(&self) -> RejectKind {
        RejectKind::DeadlineExceeded
    }
}
