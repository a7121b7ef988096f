//! The closed state's sliding windows: the last N calls (a ring), or the
//! last T seconds (one-second buckets).
//!
//! The count window's counters are signed and its reads are clamped: a call
//! that reports while the breaker resets its window (a transition, a
//! handle's reset) may land on either side of the reset, and must never make
//! a count wrap. The time window is floodwall-core's [`TrailingCounts`],
//! whose reset takes each bucket out of the totals as expiry does, so its
//! totals never wrap.

use floodwall_core::sync::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use floodwall_core::window::TrailingCounts;

/// One call's record in a count window: bit 0 failed, bit 1 slow, bit 2
/// present.
const PRESENT: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Of which were slow.
    pub slow: u64,
}

impl WindowCounts {
    fn clamped(calls: i64, failures: i64, slow: i64) -> Self {
        Self::bounded(
            calls.max(0) as u64,
            failures.max(0) as u64,
            slow.max(0) as u64,
        )
    }

    /// No more failures or slow calls than calls: the counters are read one
    /// by one, so a read may see a call's failure and not yet the call.
    #[inline]
    fn bounded(calls: u64, failures: u64, slow: u64) -> Self {
        Self {
            calls,
            failures: failures.min(calls),
            slow: slow.min(calls),
        }
    }
}

pub(crate) fn code(failed: bool, slow: bool) -> u8 {
    PRESENT | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 }
}

/// Adds `+1`, `−1` or nothing to `counter` as `bit` appears in or leaves a
/// slot; returns the counter's value afterwards.
#[inline]
fn adjust(counter: &AtomicI64, old: u8, new: u8, bit: u8) -> i64 {
    match (old & bit != 0, new & bit != 0) {
        (false, true) => counter.fetch_add(1, Ordering::AcqRel).wrapping_add(1),
        (true, false) => counter.fetch_sub(1, Ordering::AcqRel).wrapping_sub(1),
        _ => counter.load(Ordering::Acquire),
    }
}

/// The last `n` calls exactly: a ring of `n` one-byte records and running
/// counts. Recording is a `fetch_add` on the head, a `swap` of the slot,
/// and a counter update only when the evicted record differs.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub(crate) fn new(n: u32) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, code: u8) -> WindowCounts {
        let n = self.slots.len() as u64;
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        let old = self.slots[(i % n) as usize].swap(code, Ordering::AcqRel);
        let failures = adjust(&self.failures, old, code, FAILED);
        let slow = adjust(&self.slow, old, code, SLOW);
        WindowCounts::clamped((i + 1).min(n) as i64, failures, slow)
    }

    pub(crate) fn counts(&self) -> WindowCounts {
        let n = self.slots.len() as u64;
        WindowCounts::clamped(
            self.head.load(Ordering::Acquire).min(n) as i64,
            self.failures.load(Ordering::Acquire),
            self.slow.load(Ordering::Acquire),
        )
    }

    /// A window of `n` calls holding the newest of this one's calls, as
    /// many as fit, in their order.
    pub(crate) fn resized(&self, n: u32) -> Self {
        let resized = Self::new(n);
        let len = self.slots.len() as u64;
        let head = self.head.load(Ordering::Acquire);
        let keep = head.min(len).min(u64::from(n.max(1)));
        for i in head - keep..head {
            let code = self.slots[(i % len) as usize].load(Ordering::Acquire);
            if code & PRESENT != 0 {
                resized.record(code);
            }
        }
        resized
    }

    /// Empties the window.
    pub(crate) fn reset(&self) {
        self.head.store(0, Ordering::Release);
        for s in self.slots.iter() {
            s.store(0, Ordering::Release);
        }
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
    }
}

/// Counter indices of the time window's buckets.
const CALLS: usize = 0;
const FAILURES: usize = 1;
const SLOWS: usize = 2;

/// The last `n` seconds, in one-second buckets, with running totals;
/// crossing into a new second expires old buckets under a lock.
pub(crate) struct TimeWindow(TrailingCounts<3>);

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self(TrailingCounts::new(seconds.max(1) as usize))
    }

    #[inline]
    pub(crate) fn record(&self, second: u64, code: u8) -> WindowCounts {
        let mut which = [false; 3];
        which[CALLS] = true;
        which[FAILURES] = code & FAILED != 0;
        which[SLOWS] = code & SLOW != 0;
        let t = self.0.record(second, which);
        WindowCounts::bounded(t[CALLS], t[FAILURES], t[SLOWS])
    }

    pub(crate) fn counts(&self, second: u64) -> WindowCounts {
        let t = self.0.totals(second);
        WindowCounts::bounded(t[CALLS], t[FAILURES], t[SLOWS])
    }

    /// Empties the window.
    pub(crate) fn reset(&self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_window_covers_exactly_the_last_n_calls() {
        let w = CountWindow::new(4);
        for failed in [true, true, false, false] {
            w.record(code(failed, false));
        }
        assert_eq!(
            w.counts(),
            WindowCounts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(code(false, true));
        assert_eq!(
            w.counts(),
            WindowCounts {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        w.record(code(false, false));
        assert_eq!(
            w.counts(),
            WindowCounts {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(), WindowCounts::default());
    }

    #[test]
    fn a_record_racing_a_reset_never_wraps() {
        let w = CountWindow::new(1);
        // A failure recorded, then a reset that zeroes the counter after the
        // slot: the next record evicts the old failure from a zero counter.
        w.record(code(true, false));
        w.failures.store(0, Ordering::Release);
        let c = w.record(code(false, false));
        assert_eq!(
            c,
            WindowCounts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn the_time_window_forgets_by_the_second() {
        let w = TimeWindow::new(3);
        w.record(0, code(true, false));
        w.record(1, code(false, true));
        w.record(2, code(false, false));
        assert_eq!(
            w.counts(2),
            WindowCounts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            w.counts(3),
            WindowCounts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.counts(10), WindowCounts::default());
    }
}
