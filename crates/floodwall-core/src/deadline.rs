//! Where and why a deadline ran out: the rejection every deadline-enforcing
//! layer raises, shared so that the outcome rule can read it; and the
//! deadline in the running task's scope, which the deadline layers set and
//! every layer below them reads ([`Deadline::effective`](crate::Deadline::effective)).

use std::cell::Cell;
use std::fmt;

use crate::{Deadline, RejectKind, Rejection};

thread_local! {
    /// The deadline of the future being polled (or the call being made) on
    /// this thread, if it runs in a scope. A plain cell, set around each
    /// poll and restored after: cheaper than a tokio task-local, which
    /// borrows a `RefCell` and moves the future into its own wrapper.
    static SCOPE: Cell<Option<Scoped>> = const { Cell::new(None) };
}

/// A deadline in a task's scope, with where it came from. The
/// `floodwall-deadline` layers put one in scope around the calls and polls
/// of the layers below them; [`current_scoped`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scoped {
    deadline: Deadline,
    from_caller: bool,
    enforced: bool,
}

impl Scoped {
    /// A scoped `deadline`; `from_caller` as [`from_caller`](Self::from_caller).
    pub const fn new(deadline: Deadline, from_caller: bool) -> Scoped {
        Scoped {
            deadline,
            from_caller,
            enforced: false,
        }
    }

    /// The deadline.
    pub const fn deadline(self) -> Deadline {
        self.deadline
    }

    /// Whether the deadline is the caller's (a timeout it sent, or one set
    /// by hand) rather than the server's own budget (its configured
    /// maximum). Outbound calls limited by a caller's deadline that time
    /// out say nothing about their dependency ([`crate::outcome`]); calls
    /// limited by the server's own budget do.
    pub const fn from_caller(self) -> bool {
        self.from_caller
    }

    /// This scope, marked as enforced: a timer polled in the **same task**,
    /// around the scoped work, ends that work at the deadline (the deadline
    /// layers' own timers). A call inside that waits for no later deadline
    /// needs no timer of its own. Work carried into another task must not
    /// keep the mark ([`unenforced`](Self::unenforced)).
    pub const fn enforced(self) -> Scoped {
        Scoped {
            enforced: true,
            ..self
        }
    }

    /// This scope without the [`enforced`](Self::enforced) mark: for work
    /// handed to another task, where the timer does not wake it.
    pub const fn unenforced(self) -> Scoped {
        Scoped {
            enforced: false,
            ..self
        }
    }

    /// Whether a timer polled around the scoped work in the same task ends
    /// it at the deadline ([`enforced`](Self::enforced)).
    pub const fn is_enforced(self) -> bool {
        self.enforced
    }

    /// The earlier of the two (the first on a tie).
    pub fn min(self, other: Scoped) -> Scoped {
        if other.deadline < self.deadline {
            other
        } else {
            self
        }
    }
}

/// The deadline in scope for the running task, with where it came from.
#[inline]
pub fn current_scoped() -> Option<Scoped> {
    SCOPE.with(Cell::get)
}

/// Puts `scoped` in scope (or takes the scope away, with `None`) until the
/// guard drops, which puts the previous scope back, even on a panic: for a
/// layer's synchronous `call` into the layers below, and around each poll
/// of their future. Not `Send`: hold it across a synchronous call, never
/// across an `.await`.
///
/// ```
/// use floodwall_core::Deadline;
/// use floodwall_core::deadline::{Scoped, current_scoped, enter_scope};
///
/// let d = Deadline::new(tokio::time::Instant::now());
/// {
///     let _scope = enter_scope(Some(Scoped::new(d, true)));
///     assert_eq!(current_scoped().map(Scoped::deadline), Some(d));
/// }
/// assert_eq!(current_scoped(), None);
/// ```
#[inline]
pub fn enter_scope(scoped: Option<Scoped>) -> ScopeGuard {
    ScopeGuard {
        previous: SCOPE.with(|c| c.replace(scoped)),
        _thread: std::marker::PhantomData,
    }
}

/// The guard [`enter_scope`] returns.
#[derive(Debug)]
#[must_use = "the scope ends when the guard drops"]
pub struct ScopeGuard {
    previous: Option<Scoped>,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for ScopeGuard {
    #[inline]
    fn drop(&mut self) {
        SCOPE.with(|c| c.set(self.previous));
    }
}

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
