//! The GCRA step on one atomic TAT cell, shared by the single and keyed buckets.

use floodwall_core::sync::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Denied;

/// The longest wait a reservation may ask for, in nanoseconds (~36 years).
/// With the quota's tolerance capped at the same value, `TAT` stays below
/// `t + 2^63` and `TAT + n·I` cannot overflow for any clock value below
/// ~146 years.
pub(crate) const MAX_WAIT_NS: u64 = u64::MAX / 16;

/// The longest wait a reservation may ask for (about 36 years); longer
/// bounds are capped to it.
pub const MAX_WAIT: Duration = Duration::from_nanos(MAX_WAIT_NS);

pub(crate) use crate::time::nanos_since;

/// A wait bound in nanoseconds, capped at [`MAX_WAIT_NS`].
#[inline]
pub(crate) fn max_wait_ns(max_wait: Duration) -> u64 {
    if max_wait.as_secs() >= MAX_WAIT_NS / 1_000_000_000 {
        return MAX_WAIT_NS;
    }
    max_wait.as_secs() * 1_000_000_000 + u64::from(max_wait.subsec_nanos())
}

/// The parameters of one GCRA decision, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Emission interval `I`.
    pub(crate) interval: u64,
    /// Tolerance `b·I`.
    pub(crate) tolerance: u64,
    /// Burst `b`.
    pub(crate) burst: u32,
}

/// Tokens taken, possibly for a start in the future.
///
/// Returned by `reserve`; give it back to `cancel` if the request never
/// runs. It remembers the TAT its reservation set, so a cancellation can
/// only undo the newest reservation (see `Params::cancel`).
/// The default reservation holds nothing: cancelling it changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use = "a reservation that is neither used nor cancelled wastes its tokens"]
pub struct Reservation {
    wait_ns: u64,
    tat: u64,
    tokens: u32,
}

impl Reservation {
    /// How long after the reservation's instant the request may start
    /// (zero: at once).
    pub fn wait(&self) -> Duration {
        Duration::from_nanos(self.wait_ns)
    }

    /// Whether the request may start at once.
    pub fn is_immediate(&self) -> bool {
        self.wait_ns == 0
    }

    /// The tokens reserved.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }
}

impl Params {
    /// The GCRA parameters of `quota`.
    #[inline]
    pub(crate) fn of(quota: &crate::Quota) -> Self {
        Params {
            interval: quota.interval_ns(),
            tolerance: quota.tolerance_ns(),
            burst: quota.burst(),
        }
    }

    /// Decides a request of weight `n` at `t`, allowing it to be scheduled up
    /// to `max_wait` ns in the future (at most [`MAX_WAIT_NS`]), and updates
    /// `cell` on success.
    ///
    /// `tat' = max(TAT, t) + n·I`; the request conforms at `tat' − b·I` (its
    /// earliest start), so it is admitted now iff `tat' − t ≤ b·I`, and
    /// reserved for later iff `tat' − t ≤ b·I + max_wait`. On refusal
    /// nothing changes and `retry_after = tat' − b·I − t`.
    #[inline]
    pub(crate) fn step(
        self,
        cell: &AtomicU64,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Result<Reservation, Denied> {
        if n > self.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.burst,
            });
        }
        let cost = u64::from(n) * self.interval;
        let limit = self.tolerance + max_wait.min(MAX_WAIT_NS);
        // Relaxed is enough: the TAT is the only shared datum and every
        // read-modify-write of one atomic is totally ordered.
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(t).saturating_add(cost);
            let ahead = new_tat - t;
            if ahead > limit {
                return Err(Denied::RateLimited {
                    retry_after: Duration::from_nanos(ahead - self.tolerance),
                });
            }
            let reservation = Reservation {
                wait_ns: ahead.saturating_sub(self.tolerance),
                tat: new_tat,
                tokens: n,
            };
            if cost == 0 {
                return Ok(reservation);
            }
            match cell.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(reservation),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Undoes `reservation` at `t` if it is still the newest one on `cell`
    /// (the TAT is still what it set), and reports whether it did.
    ///
    /// Only the newest reservation can be undone exactly: later ones have
    /// start times that were computed from it, so taking an earlier one out
    /// would let a newcomer start at the same instant as a waiter. A
    /// cancelled reservation that is not the newest simply lets its slot
    /// pass unused: the bucket never admits more than its rate, and it is
    /// whole again once that slot's time has passed.
    pub(crate) fn cancel(self, cell: &AtomicU64, reservation: Reservation, t: u64) -> bool {
        let cost = u64::from(reservation.tokens) * self.interval;
        if cost == 0 || reservation.tat <= t {
            return false;
        }
        let restored = reservation.tat.saturating_sub(cost).max(t);
        cell.compare_exchange(
            reservation.tat,
            restored,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// Whole tokens available at `t`: `b − ⌈(max(TAT, t) − t) / I⌉`.
    pub(crate) fn available(self, tat: u64, t: u64) -> u32 {
        let debt = tat.saturating_sub(t);
        let owed = debt.div_ceil(self.interval);
        u64::from(self.burst).saturating_sub(owed) as u32
    }
}
