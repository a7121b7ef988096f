//! The GCRA step on one atomic TAT cell, shared by the single and keyed buckets.

use floodwall_core::sync::{AtomicU32, AtomicU64, Ordering, spin_wait};
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

/// A TAT cell's value while a reconfiguration converts it: deciders that
/// read it wait (a few instructions) for the converted value.
pub(crate) const SEALED: u64 = u64::MAX;

/// The parameters of one GCRA decision, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// The decision for a request of weight `n` at `t` on a bucket whose
    /// TAT is `tat`, scheduled up to `max_wait` ns ahead (at most
    /// [`MAX_WAIT_NS`]): the reservation, whose `tat` is the TAT to store
    /// (nothing to store when it holds no tokens), or the refusal.
    ///
    /// `tat' = max(TAT, t) + n·I`; the request conforms at `tat' − b·I` (its
    /// earliest start), so it is admitted now iff `tat' − t ≤ b·I`, and
    /// reserved for later iff `tat' − t ≤ b·I + max_wait`. On refusal
    /// nothing changes and `retry_after = tat' − b·I − t`.
    #[inline]
    fn decide(self, tat: u64, t: u64, n: u32, max_wait: u64) -> Result<Reservation, Denied> {
        if n > self.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.burst,
            });
        }
        let new_tat = tat.max(t).saturating_add(u64::from(n) * self.interval);
        let ahead = new_tat - t;
        if ahead > self.tolerance + max_wait.min(MAX_WAIT_NS) {
            return Err(Denied::RateLimited {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            });
        }
        Ok(Reservation {
            wait_ns: ahead.saturating_sub(self.tolerance),
            tat: new_tat,
            tokens: n,
        })
    }

    /// Decides a request of weight `n` at `t` (see [`decide`](Self::decide))
    /// and updates `cell` on success.
    #[inline]
    pub(crate) fn step(
        self,
        cell: &AtomicU64,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Result<Reservation, Denied> {
        // Relaxed is enough: the TAT is the only shared datum and every
        // read-modify-write of one atomic is totally ordered.
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let reservation = self.decide(tat, t, n, max_wait)?;
            if reservation.tokens == 0 {
                return Ok(reservation);
            }
            match cell.compare_exchange_weak(
                tat,
                reservation.tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(reservation),
                Err(actual) => tat = actual,
            }
        }
    }

    /// One attempt of [`step`](Self::step) on an encoded cell (see
    /// [`LiveParams`]) from its raw value `raw`, not sealed:
    /// [`Stepped::Retry`] when the CAS finds the cell changed, so that the
    /// caller reads the cell *and the parameters* again.
    #[inline]
    pub(crate) fn step_once(
        self,
        cell: &AtomicU64,
        raw: u64,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Stepped {
        match self.decide(raw >> 1, t, n, max_wait) {
            Ok(reservation) if reservation.tokens > 0 => {
                let new_raw = encode(reservation.tat, raw & 1);
                match cell.compare_exchange_weak(raw, new_raw, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Stepped::Done(Ok(reservation)),
                    Err(_) => Stepped::Retry,
                }
            }
            // An answer that writes nothing is checked against the cell too:
            // if it still holds `raw`, no reconfiguration has sealed it
            // since, so the parameters read after it were the ones `raw` was
            // made under.
            answer => {
                if cell.load(Ordering::Acquire) == raw {
                    Stepped::Done(answer)
                } else {
                    Stepped::Retry
                }
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

    /// The TAT under `new` that carries over, at `t`, the tokens available
    /// under `self` with TAT `tat` (SPECS.md, "Reconfiguration"): with
    /// `a = min(b', max(0, b − (max(TAT, t) − t)/I))` tokens (fractions
    /// kept), `TAT' = t + (b' − a)·I'`. Reservations already made beyond a
    /// full bucket (wait mode) keep their start times: the newest started
    /// at `TAT − b·I`, and the next one queues one new interval behind it,
    /// so `TAT' = TAT − b·I + b'·I'`.
    pub(crate) fn carry(self, new: Params, tat: u64, t: u64) -> u64 {
        let ahead = tat.saturating_sub(t);
        if ahead >= self.tolerance {
            let queued = ahead - self.tolerance;
            return t.saturating_add(queued).saturating_add(new.tolerance);
        }
        let available_ns = self.tolerance - ahead;
        // a·I' = available_ns · I' / I, at most b'·I'.
        let carried = (u128::from(available_ns) * u128::from(new.interval)
            / u128::from(self.interval))
        .min(u128::from(new.tolerance)) as u64;
        t + (new.tolerance - carried)
    }

    /// Whole tokens available at `t`: `b − ⌈(max(TAT, t) − t) / I⌉`.
    pub(crate) fn available(self, tat: u64, t: u64) -> u32 {
        let debt = tat.saturating_sub(t);
        let owed = debt.div_ceil(self.interval);
        u64::from(self.burst).saturating_sub(owed) as u32
    }
}

/// [`Params`] that a reconfiguration can replace while deciders read them,
/// and the encoding of the TAT cell they govern.
///
/// The cell holds `TAT << 1 | era`, where `era` flips with every
/// reconfiguration (TATs stay below 2^62 ns, about 146 years, so the shift
/// loses nothing). A reconfiguration seals the cell ([`SEALED`]), stores
/// the new parameters, and unseals it with the converted TAT in the new
/// era. A decider reads the cell, then the parameters, then CASes the
/// cell: if it read the converted value, the parameters it read are the
/// new ones (release/acquire through the cell); if it read an older value,
/// its CAS fails — the cell was sealed, and every value after the
/// conversion is of the other era — and it starts over. So each decision
/// is wholly under the old parameters on the old state or wholly under the
/// new on the converted state.
#[derive(Debug)]
pub(crate) struct LiveParams {
    interval: AtomicU64,
    tolerance: AtomicU64,
    burst: AtomicU32,
}

/// A cell value: the TAT and the era bit.
#[inline]
fn encode(tat: u64, era: u64) -> u64 {
    (tat << 1) | era
}

impl LiveParams {
    pub(crate) fn new(params: Params) -> Self {
        Self {
            interval: AtomicU64::new(params.interval),
            tolerance: AtomicU64::new(params.tolerance),
            burst: AtomicU32::new(params.burst),
        }
    }

    /// The current parameters.
    #[inline]
    pub(crate) fn load(&self) -> Params {
        Params {
            interval: self.interval.load(Ordering::Acquire),
            tolerance: self.tolerance.load(Ordering::Acquire),
            burst: self.burst.load(Ordering::Acquire),
        }
    }

    /// The cell's raw value once no reconfiguration is converting it.
    #[inline]
    fn settled_raw(cell: &AtomicU64) -> u64 {
        loop {
            let raw = cell.load(Ordering::Acquire);
            if raw != SEALED {
                return raw;
            }
            spin_wait();
        }
    }

    /// The TAT in `cell` once no reconfiguration is converting it.
    #[inline]
    pub(crate) fn settled(cell: &AtomicU64) -> u64 {
        Self::settled_raw(cell) >> 1
    }

    /// [`Params::step`] under the live parameters, on an encoded cell.
    #[inline]
    pub(crate) fn step(
        &self,
        cell: &AtomicU64,
        t: u64,
        n: u32,
        max_wait: u64,
    ) -> Result<Reservation, Denied> {
        loop {
            let raw = Self::settled_raw(cell);
            let params = self.load();
            if let Stepped::Done(result) = params.step_once(cell, raw, t, n, max_wait) {
                return result;
            }
        }
    }

    /// [`Params::cancel`] on an encoded cell: undoes `reservation` if the
    /// cell still holds what it set, in the same era.
    pub(crate) fn cancel(&self, cell: &AtomicU64, reservation: Reservation, t: u64) -> bool {
        let raw = cell.load(Ordering::Acquire);
        if raw == SEALED || raw >> 1 != reservation.tat {
            return false;
        }
        let params = self.load();
        let cost = u64::from(reservation.tokens) * params.interval;
        if cost == 0 || reservation.tat <= t {
            return false;
        }
        let restored = reservation.tat.saturating_sub(cost).max(t);
        cell.compare_exchange(
            raw,
            encode(restored, raw & 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    }

    /// Replaces the parameters by `new` at `t`, converting `cell` by the
    /// carry-over rule ([`Params::carry`]), atomically for deciders (see
    /// the type's docs). Callers serialize reconfigurations (a lock).
    pub(crate) fn reconfigure(&self, cell: &AtomicU64, new: Params, t: u64) {
        let old = self.load();
        if old == new {
            return;
        }
        let raw = loop {
            let raw = cell.swap(SEALED, Ordering::AcqRel);
            if raw != SEALED {
                break raw;
            }
            spin_wait();
        };
        let converted = old.carry(new, raw >> 1, t);
        self.interval.store(new.interval, Ordering::Release);
        self.tolerance.store(new.tolerance, Ordering::Release);
        self.burst.store(new.burst, Ordering::Release);
        cell.store(encode(converted, (raw & 1) ^ 1), Ordering::Release);
    }
}

/// What one CAS attempt of a step came to.
pub(crate) enum Stepped {
    Done(Result<Reservation, Denied>),
    /// The cell changed under the attempt (another decision, or a
    /// reconfiguration): read it and the parameters again.
    Retry,
}
