//! The closed state's sliding windows: the last N calls (a ring), or the
//! last T seconds (one-second buckets).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

/// One call's record in a count window: bit 0 failed, bit 1 slow, bit 2
/// present.
const PRESENT: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Calls recorded.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

pub(crate) fn code(failed: bool, slow: bool) -> u8 {
    PRESENT | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 }
}

/// The last `n` calls exactly: a ring of `n` one-byte records and running
/// counts. Recording is a `fetch_add` on the head, a `swap` of the slot,
/// and a counter update only when the evicted record differs.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    pub(crate) fn new(n: u32) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, code: u8) -> WindowCounts {
        let n = self.slots.len() as u64;
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        let old = self.slots[(i % n) as usize].swap(code, Ordering::AcqRel);
        let changed = old ^ code;
        let failures = if changed & FAILED == 0 {
            self.failures.load(Ordering::Acquire)
        } else if code & FAILED != 0 {
            self.failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.failures.fetch_sub(1, Ordering::AcqRel) - 1
        };
        let slow = if changed & SLOW == 0 {
            self.slow.load(Ordering::Acquire)
        } else if code & SLOW != 0 {
            self.slow.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.slow.fetch_sub(1, Ordering::AcqRel) - 1
        };
        WindowCounts {
            calls: (i + 1).min(n) as u32,
            failures,
            slow,
        }
    }

    pub(crate) fn counts(&self) -> WindowCounts {
        let n = self.slots.len() as u64;
        WindowCounts {
            calls: self.head.load(Ordering::Acquire).min(n) as u32,
            failures: self.failures.load(Ordering::Acquire),
            slow: self.slow.load(Ordering::Acquire),
        }
    }

    /// Empties the window (under the breaker's transition lock).
    pub(crate) fn reset(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Release);
        }
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
        self.head.store(0, Ordering::Release);
    }
}

#[derive(Default)]
struct Bucket {
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// The last `n` seconds, in one-second buckets, with running totals;
/// crossing into a new second expires old buckets under a lock.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    total: Bucket,
    current: AtomicU64,
    advance: Mutex<()>,
}

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self {
            buckets: (0..seconds.max(1)).map(|_| Bucket::default()).collect(),
            total: Bucket::default(),
            current: AtomicU64::new(0),
            advance: Mutex::new(()),
        }
    }

    fn at(&self, second: u64) -> u64 {
        let current = self.current.load(Ordering::Acquire);
        if second <= current {
            return current;
        }
        let _guard = self.advance.lock();
        let current = self.current.load(Ordering::Acquire);
        if second <= current {
            return current;
        }
        let n = self.buckets.len() as u64;
        for j in (current + 1).max(second.saturating_sub(n - 1))..=second {
            let b = &self.buckets[(j % n) as usize];
            for (slot, total) in [
                (&b.calls, &self.total.calls),
                (&b.failures, &self.total.failures),
                (&b.slow, &self.total.slow),
            ] {
                total.fetch_sub(slot.swap(0, Ordering::AcqRel), Ordering::AcqRel);
            }
        }
        self.current.store(second, Ordering::Release);
        second
    }

    pub(crate) fn record(&self, second: u64, code: u8) -> WindowCounts {
        let second = self.at(second);
        let b = &self.buckets[(second % self.buckets.len() as u64) as usize];
        let add = |slot: &AtomicU32, total: &AtomicU32| {
            // The total first, so expiry never takes it below zero.
            let t = total.fetch_add(1, Ordering::AcqRel) + 1;
            slot.fetch_add(1, Ordering::AcqRel);
            t
        };
        let calls = add(&b.calls, &self.total.calls);
        let failures = if code & FAILED != 0 {
            add(&b.failures, &self.total.failures)
        } else {
            self.total.failures.load(Ordering::Acquire)
        };
        let slow = if code & SLOW != 0 {
            add(&b.slow, &self.total.slow)
        } else {
            self.total.slow.load(Ordering::Acquire)
        };
        WindowCounts {
            calls,
            failures,
            slow,
        }
    }

    pub(crate) fn counts(&self, second: u64) -> WindowCounts {
        self.at(second);
        WindowCounts {
            calls: self.total.calls.load(Ordering::Acquire),
            failures: self.total.failures.load(Ordering::Acquire),
            slow: self.total.slow.load(Ordering::Acquire),
        }
    }

    /// Empties the window (under the breaker's transition lock).
    pub(crate) fn reset(&self) {
        let _guard = self.advance.lock();
        for b in self.buckets.iter().chain(std::iter::once(&self.total)) {
            b.calls.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
            b.slow.store(0, Ordering::Release);
        }
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
        // The two failures leave as two successes arrive.
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
