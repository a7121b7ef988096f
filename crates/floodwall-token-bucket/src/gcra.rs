//! The GCRA step on one atomic TAT cell, shared by the single and keyed buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::Denied;

/// Nanoseconds from `epoch` to `now`, saturating at both ends.
#[inline]
pub(crate) fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    let d = now.saturating_duration_since(epoch);
    // `as_secs() * 1e9 + subsec` without the u128 of `as_nanos()`.
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
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

/// A conforming reservation: the request may start after `wait` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    pub(crate) wait: u64,
}

impl Params {
    /// Decides a request of weight `n` at `t`, allowing it to be scheduled up
    /// to `max_wait` ns in the future, and updates `cell` on success.
    ///
    /// `tat' = max(TAT, t) + n·I`; the request conforms at
    /// `tat' − b·I` (its earliest start), so it is admitted now iff
    /// `tat' − t ≤ b·I`, and reserved for later iff
    /// `tat' − t ≤ b·I + max_wait`. On refusal nothing changes.
    #[inline]
    pub(crate) fn step(
        self,
        cell: &AtomicU64,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Result<Reserved, Denied> {
        if n > self.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.burst,
            });
        }
        let cost = u64::from(n) * self.interval;
        let limit = self.tolerance.saturating_add(max_wait);
        // Relaxed is enough: the TAT is the only shared datum and every
        // read-modify-write of one atomic is totally ordered.
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(t) + cost;
            let ahead = new_tat - t;
            if ahead > limit {
                return Err(Denied::RateLimited {
                    retry_after: Duration::from_nanos(ahead - self.tolerance),
                });
            }
            if cost == 0 {
                return Ok(Reserved { wait: 0 });
            }
            match cell.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return Ok(Reserved {
                        wait: ahead.saturating_sub(self.tolerance),
                    });
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back the tokens of a reservation of weight `n` whose request
    /// never ran (its waiter was cancelled).
    ///
    /// Subtracts `n·I` from the TAT, never below `t`: the cancelled request's
    /// start lay in the future, so the schedule is simply one request shorter.
    pub(crate) fn refund(self, cell: &AtomicU64, t: u64, n: u32) {
        let cost = u64::from(n) * self.interval;
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            (tat > t).then(|| tat.saturating_sub(cost).max(t))
        });
    }

    /// Whole tokens available at `t`: `b − ⌈(max(TAT, t) − t) / I⌉`.
    pub(crate) fn available(self, tat: u64, t: u64) -> u32 {
        let debt = tat.saturating_sub(t);
        let owed = debt.div_ceil(self.interval);
        u64::from(self.burst).saturating_sub(owed) as u32
    }
}
