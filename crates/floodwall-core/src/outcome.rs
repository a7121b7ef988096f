//! The one outcome rule: what a finished call says about the dependency
//! behind a layer.
//!
//! The breaker, the adaptive throttle, adaptive concurrency and the retry
//! budget all learn from finished calls. They read those calls through
//! [`judge`], so that all four agree on what counts:
//!
//! - **Success / Failure / Overloaded / TimedOut** come from a
//!   [`Classify`] on an answer the dependency gave.
//! - **Says nothing** ([`Verdict::Silent`]): a refusal by a floodwall layer
//!   below that never reached the dependency; a response future dropped by
//!   the caller (the layers see that as a drop, not through `judge`); a
//!   deadline the caller imposed that gave this call less time than its own
//!   configured budget, whether the deadline ran out here
//!   ([`DeadlineExceeded::caller_limited`]) or the dependency answered
//!   "deadline exceeded" to the short deadline it was told.
//! - A call that had its full budget and ran out of it is
//!   [`Verdict::TimedOut`]: the dependency's failure. When a deadline layer
//!   above a judging layer drops the call at its deadline, the judging
//!   layer learns it from [`dropped`] (the deadline layer drops inside
//!   [`expire_scope`]).
//!
//! Without this rule any client could open a breaker for everyone by
//! sending a tiny `grpc-timeout`: every call it makes would time out and
//! count as the dependency's failure.
//!
//! # How a layer learns that its call was limited by the caller
//!
//! The deadline layer decides it, because only it knows both the deadline
//! the request inherited and the budget configured for the call. When it
//! wraps the judging layers (the recommended order: deadline propagation
//! outermost on a client stack), it marks its synchronous call into them
//! with [`limit_scope`]; a judging layer reads the mark in its own `call`
//! with [`caller_limited`] and keeps it with the request. When it sits
//! below them, its own timeout reaches them as a [`DeadlineExceeded`]
//! that says whether the caller's deadline was the one that ran out.
//!
//! ```
//! use floodwall_core::outcome::{self, Silence, Verdict};
//! use floodwall_core::{BoxError, DeadlineExceeded, Outcome, Phase, Rejected, ResultClassifier};
//!
//! let ok: Result<&(), &BoxError> = Ok(&());
//! assert_eq!(outcome::judge(&ResultClassifier, ok, false), Verdict::Answered(Outcome::Success));
//!
//! // A deadline the caller imposed ran out: nothing learned.
//! let short: BoxError = Rejected::boxed(DeadlineExceeded::new(Phase::AwaitingResponse, true));
//! assert_eq!(
//!     outcome::judge::<(), _>(&ResultClassifier, Err(&short), false),
//!     Verdict::Silent(Silence::CallerDeadline),
//! );
//! // The call had its whole budget: the dependency is too slow.
//! let full: BoxError = Rejected::boxed(DeadlineExceeded::new(Phase::AwaitingResponse, false));
//! assert_eq!(outcome::judge::<(), _>(&ResultClassifier, Err(&full), false), Verdict::TimedOut);
//! ```

use std::cell::Cell;

use crate::{BoxError, Classify, DeadlineExceeded, Outcome, RejectKind, Rejected};

/// What a finished call says about the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The dependency answered; the classifier read the answer. An answer
    /// the classifier calls [`Outcome::TimedOut`] from a call that had its
    /// full budget is reported as [`Verdict::TimedOut`] instead.
    Answered(Outcome),
    /// The call used its whole budget and ran out of time: the dependency
    /// is slow (a failure and a slow call for a breaker, not accepted for a
    /// throttle, a drop for an adaptive limit).
    TimedOut,
    /// The call says nothing about the dependency.
    Silent(Silence),
}

impl Verdict {
    /// Whether the dependency's health is unaffected by this call.
    pub const fn is_silent(self) -> bool {
        matches!(self, Verdict::Silent(_))
    }
}

/// Why a call says nothing about the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Silence {
    /// A floodwall layer below refused the call before it reached the
    /// dependency (rate limited, shed, throttled, circuit open, dropped by
    /// priority, or refused because its deadline could not be met).
    RefusedBelow(RejectKind),
    /// The caller's deadline, shorter than this call's configured budget,
    /// ran out (here or at the dependency).
    CallerDeadline,
    /// The caller dropped the response future before it finished.
    Cancelled,
}

impl Silence {
    /// A short name for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Silence::RefusedBelow(_) => "refused_below",
            Silence::CallerDeadline => "caller_deadline",
            Silence::Cancelled => "cancelled",
        }
    }
}

/// Judges a finished call by the one outcome rule.
///
/// `caller_limited` is what [`caller_limited`] said when the call was made:
/// whether the caller's deadline gave this call less than its configured
/// budget.
#[inline]
pub fn judge<T, C>(classify: &C, result: Result<&T, &BoxError>, caller_limited: bool) -> Verdict
where
    C: Classify<T, BoxError> + ?Sized,
{
    if let Err(err) = result
        && let Some(rejected) = Rejected::find(&**err)
    {
        return judge_rejection(rejected, caller_limited);
    }
    match classify.classify(result) {
        Outcome::TimedOut if caller_limited => Verdict::Silent(Silence::CallerDeadline),
        Outcome::TimedOut => Verdict::TimedOut,
        outcome => Verdict::Answered(outcome),
    }
}

#[cold]
fn judge_rejection(rejected: &Rejected, caller_limited: bool) -> Verdict {
    match rejected.get::<DeadlineExceeded>() {
        // A call that was sent and ran out of time.
        Some(d) if d.was_sent() => {
            if d.caller_limited() || caller_limited {
                Verdict::Silent(Silence::CallerDeadline)
            } else {
                Verdict::TimedOut
            }
        }
        // Never sent (expired on arrival or before sending), or any other
        // refusal by a layer below: the dependency never saw it.
        _ => Verdict::Silent(Silence::RefusedBelow(rejected.kind())),
    }
}

thread_local! {
    static CALLER_LIMITED: Cell<bool> = const { Cell::new(false) };
    /// While a deadline layer drops the futures below it because its
    /// deadline ran out: whether that deadline was the caller's.
    static EXPIRING: Cell<Option<bool>> = const { Cell::new(None) };
}

/// What a response future dropped before it finished says: nothing when
/// its caller went away ([`Silence::Cancelled`]); when a deadline layer
/// above dropped it because its deadline ran out (see [`expire_scope`]),
/// the same as that deadline's [`DeadlineExceeded`] would:
/// [`Verdict::TimedOut`], or [`Silence::CallerDeadline`] if the caller's
/// deadline limited the call (`caller_limited`, as read when it was made).
#[inline]
pub fn dropped(caller_limited: bool) -> Verdict {
    match EXPIRING.with(Cell::get) {
        None => Verdict::Silent(Silence::Cancelled),
        Some(true) => Verdict::Silent(Silence::CallerDeadline),
        Some(false) if caller_limited => Verdict::Silent(Silence::CallerDeadline),
        Some(false) => Verdict::TimedOut,
    }
}

/// Runs `drop` (dropping the futures below a deadline layer whose deadline
/// ran out) so that the layers below read the drop with [`dropped`] as a
/// timeout: `caller_limited` says whether the deadline that ran out was the
/// caller's. The previous state is restored afterwards, even on a panic.
pub fn expire_scope<R>(caller_limited: bool, drop: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPIRING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(EXPIRING.with(|c| c.replace(Some(caller_limited))));
    drop()
}

/// Whether the call being made now, on this thread, was given less time by
/// its caller's deadline than its configured budget. A judging layer reads
/// this in its `call` and keeps it with the request.
#[inline]
pub fn caller_limited() -> bool {
    CALLER_LIMITED.with(Cell::get)
}

/// Runs `call` (a synchronous `Service::call` into the layers below) with
/// [`caller_limited`] reading `limited`; the previous mark is restored
/// afterwards, even if `call` panics.
#[inline]
pub fn limit_scope<R>(limited: bool, call: impl FnOnce() -> R) -> R {
    let _limit = limit(limited);
    call()
}

/// [`limit_scope`] as a guard, for a `call` that takes a large request by
/// value (a closure would copy it): [`caller_limited`] reads `limited`
/// until the guard drops, and the previous mark is restored then.
///
/// ```
/// use floodwall_core::outcome;
///
/// {
///     let _limit = outcome::limit(true);
///     assert!(outcome::caller_limited());
/// }
/// assert!(!outcome::caller_limited());
/// ```
#[inline]
pub fn limit(limited: bool) -> Limit {
    let previous = CALLER_LIMITED.with(|c| c.replace(limited));
    Limit {
        previous,
        _thread: std::marker::PhantomData,
    }
}

/// The guard [`limit`] returns: restores the previous mark when dropped.
/// Not `Send`: it must drop on the thread it marked (hold it across a
/// synchronous call, never across an `.await`).
#[derive(Debug)]
#[must_use = "the mark is restored when the guard drops"]
pub struct Limit {
    previous: bool,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Limit {
    #[inline]
    fn drop(&mut self) {
        CALLER_LIMITED.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Phase, Rejection, ResultClassifier};

    #[derive(Debug)]
    struct Shed;
    impl std::fmt::Display for Shed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("shed")
        }
    }
    impl std::error::Error for Shed {}
    impl Rejection for Shed {
        fn kind(&self) -> RejectKind {
            RejectKind::Overloaded
        }
    }

    fn err(e: BoxError) -> Verdict {
        judge::<(), _>(&ResultClassifier, Err(&e), false)
    }

    #[test]
    fn refusals_below_say_nothing() {
        assert_eq!(
            err(Rejected::boxed(Shed)),
            Verdict::Silent(Silence::RefusedBelow(RejectKind::Overloaded))
        );
        for phase in [Phase::OnArrival, Phase::BeforeSend] {
            assert_eq!(
                err(Rejected::boxed(DeadlineExceeded::new(phase, false))),
                Verdict::Silent(Silence::RefusedBelow(RejectKind::DeadlineExceeded)),
                "{phase:?}: never sent"
            );
        }
    }

    #[test]
    fn deadlines_count_only_with_the_full_budget() {
        for phase in [Phase::InFlight, Phase::AwaitingResponse] {
            assert_eq!(
                err(Rejected::boxed(DeadlineExceeded::new(phase, false))),
                Verdict::TimedOut
            );
            assert_eq!(
                err(Rejected::boxed(DeadlineExceeded::new(phase, true))),
                Verdict::Silent(Silence::CallerDeadline)
            );
            let e: BoxError = Rejected::boxed(DeadlineExceeded::new(phase, false));
            assert_eq!(
                judge::<(), _>(&ResultClassifier, Err(&e), true),
                Verdict::Silent(Silence::CallerDeadline),
                "marked caller-limited when the call was made"
            );
        }
    }

    #[test]
    fn answers_go_through_the_classifier() {
        let timed_out = |_: Result<&u8, &BoxError>| Outcome::TimedOut;
        assert_eq!(judge(&timed_out, Ok(&0), false), Verdict::TimedOut);
        assert_eq!(
            judge(&timed_out, Ok(&0), true),
            Verdict::Silent(Silence::CallerDeadline)
        );
        let plain: BoxError = "connection reset".into();
        assert_eq!(err(plain), Verdict::Answered(Outcome::Failure));
        assert_eq!(
            judge::<u8, _>(&ResultClassifier, Ok(&0), true),
            Verdict::Answered(Outcome::Success)
        );
    }

    #[test]
    fn a_drop_is_a_timeout_only_inside_an_expiring_deadline() {
        assert_eq!(dropped(false), Verdict::Silent(Silence::Cancelled));
        assert_eq!(dropped(true), Verdict::Silent(Silence::Cancelled));
        expire_scope(false, || {
            assert_eq!(dropped(false), Verdict::TimedOut);
            assert_eq!(dropped(true), Verdict::Silent(Silence::CallerDeadline));
        });
        expire_scope(true, || {
            assert_eq!(dropped(false), Verdict::Silent(Silence::CallerDeadline));
        });
        assert_eq!(dropped(false), Verdict::Silent(Silence::Cancelled));
    }

    #[test]
    fn the_mark_is_scoped_and_restored() {
        assert!(!caller_limited());
        limit_scope(true, || {
            assert!(caller_limited());
            limit_scope(false, || assert!(!caller_limited()));
            assert!(caller_limited());
        });
        assert!(!caller_limited());
        let panicked = std::panic::catch_unwind(|| limit_scope(true, || panic!("inner call")));
        assert!(panicked.is_err());
        assert!(!caller_limited(), "restored after a panic");
    }
}
