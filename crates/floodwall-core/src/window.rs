//! A trailing window of counters in buckets, with running totals.
//!
//! [`TrailingCounts`] is the bucketed window the circuit breaker's time
//! window and the SRE throttle keep: recording is two `fetch_add`s per
//! counter (the running total, then the bucket) after one load of the
//! current bucket, reading the totals is one load per counter, and crossing
//! into a newer bucket expires the ones that left the window under a lock,
//! once.

use std::fmt;

use crate::sync::{AtomicU64, Mutex, Ordering};

/// `N` counters over the last `len` buckets of a caller-chosen clock (the
/// bucket index is any `u64` that never goes backwards by much: seconds
/// since an epoch, bucket numbers), with running totals so that reading
/// them is O(1).
///
/// - Recording into the current bucket ([`add`](Self::add),
///   [`record`](Self::record)) takes one `Acquire` load of the current
///   bucket and two `fetch_add`s per counted field: no lock, no allocation.
/// - Recording into a bucket older than the current one counts in the
///   current one (a caller whose clock read lags).
/// - Recording or reading at a newer bucket makes it current and expires
///   every bucket that left the window, under a lock, once per crossing.
/// - [`remove`](Self::remove) takes back one count from a bucket still in
///   the window; [`reset`](Self::reset) empties the window.
///
/// Totals are never below zero and never wrap, whatever races with what.
/// Each counter is its own atomic: a read of several counters is not one
/// snapshot (a record in flight may show in one and not yet in another).
///
/// ```
/// use floodwall_core::window::TrailingCounts;
///
/// const REQUESTS: usize = 0;
/// const ACCEPTS: usize = 1;
///
/// // The last 3 buckets (say, seconds), two counters in each.
/// let w = TrailingCounts::<2>::new(3);
/// assert_eq!(w.add(0, REQUESTS), 1, "the total after the add");
/// w.add(1, REQUESTS);
/// w.add(1, ACCEPTS);
/// assert_eq!(w.totals(2), [2, 1]);
/// // A caller whose clock lags counts in the current bucket, 2.
/// w.add(0, REQUESTS);
/// assert_eq!(w.totals(3), [2, 1], "bucket 0 left the window");
/// // Take back the request counted in bucket 2.
/// assert!(w.remove(2, REQUESTS));
/// assert_eq!(w.totals(3), [1, 1]);
/// assert_eq!(w.totals(5), [0, 0], "everything left the window");
/// ```
pub struct TrailingCounts<const N: usize> {
    /// Bucket `b` lives in slot `b % len`.
    buckets: Box<[[AtomicU64; N]]>,
    /// Per counter, the sum of every live bucket, plus the records in flight
    /// that have added here and not yet to their bucket.
    totals: [AtomicU64; N],
    /// The newest bucket: every bucket older than `current − len + 1` has
    /// been expired.
    current: AtomicU64,
    /// Serialises what moves counts out of buckets: expiry, `remove` and
    /// `reset`.
    advance: Mutex<()>,
}

impl<const N: usize> TrailingCounts<N> {
    /// An empty window of `len` buckets (at least one), bucket 0 current.
    pub fn new(len: usize) -> Self {
        Self {
            buckets: (0..len.max(1)).map(|_| zeroes()).collect(),
            totals: zeroes(),
            current: AtomicU64::new(0),
            advance: Mutex::new(()),
        }
    }

    /// The window's length in buckets.
    #[inline]
    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// The slot that holds `bucket`.
    #[inline]
    fn slot(&self, bucket: u64) -> &[AtomicU64; N] {
        &self.buckets[(bucket % self.len()) as usize]
    }

    /// Makes `bucket` current if it is newer; the bucket to record in.
    #[inline]
    fn at(&self, bucket: u64) -> u64 {
        let current = self.current.load(Ordering::Acquire);
        if bucket <= current {
            // A caller whose clock read lags counts in the current bucket.
            return current;
        }
        self.advance_to(bucket)
    }

    /// Expires the buckets that leave the window when `bucket` becomes
    /// current, once, under the lock.
    #[cold]
    #[inline(never)]
    fn advance_to(&self, bucket: u64) -> u64 {
        let _guard = self.advance.lock();
        let current = self.current.load(Ordering::Acquire);
        if bucket <= current {
            return current; // another caller got here first
        }
        let n = self.len();
        // At most `len` slots: a long gap clears each once.
        for j in (current + 1).max(bucket.saturating_sub(n - 1))..=bucket {
            // The slot held bucket j − len or older: it has left the window.
            self.expire(self.slot(j));
        }
        self.current.store(bucket, Ordering::Release);
        bucket
    }

    /// Empties `slot`, taking what it held out of the totals. Under the lock.
    #[inline]
    fn expire(&self, slot: &[AtomicU64; N]) {
        for (count, total) in slot.iter().zip(&self.totals) {
            // Everything the swap takes was added to the total first (and
            // that add happens-before this subtraction: the bucket's
            // `fetch_add` releases it, the swap acquires it), so the total
            // never goes below zero.
            let old = count.swap(0, Ordering::AcqRel);
            if old != 0 {
                total.fetch_sub(old, Ordering::AcqRel);
            }
        }
    }

    /// Counts one in `count`'s bucket slot and its `total`; the total after.
    #[inline]
    fn count(total: &AtomicU64, count: &AtomicU64) -> u64 {
        // The total first, then the bucket: a bucket's count is always
        // already in the total, so expiring, removing or resetting (which
        // take from the bucket, then the same amount from the total) never
        // take the total below zero, even while this record is half done.
        let after = total.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        count.fetch_add(1, Ordering::AcqRel);
        after
    }

    /// Counts one in counter `field` of `bucket` (of the current bucket if
    /// `bucket` is older); returns that counter's total after the add.
    ///
    /// # Panics
    /// If `field >= N`.
    #[inline]
    pub fn add(&self, bucket: u64, field: usize) -> u64 {
        let slot = self.slot(self.at(bucket));
        Self::count(&self.totals[field], &slot[field])
    }

    /// Counts one in every counter `which` marks, all in `bucket` (or the
    /// current bucket if `bucket` is older), reading the current bucket
    /// once; returns every counter's total: for a counted one, its total
    /// right after its add; for the others, a load.
    ///
    /// The counters are separate atomics: an advance racing the record may
    /// expire the bucket between two of its adds, so that one counter
    /// leaves with the old bucket while the next counts in the new one.
    #[inline]
    pub fn record(&self, bucket: u64, which: [bool; N]) -> [u64; N] {
        let slot = self.slot(self.at(bucket));
        std::array::from_fn(|i| {
            if which[i] {
                Self::count(&self.totals[i], &slot[i])
            } else {
                self.totals[i].load(Ordering::Acquire)
            }
        })
    }

    /// Every counter's total over the window ending in `bucket` (or the
    /// current bucket if `bucket` is older).
    #[inline]
    pub fn totals(&self, bucket: u64) -> [u64; N] {
        self.at(bucket);
        std::array::from_fn(|i| self.totals[i].load(Ordering::Acquire))
    }

    /// Takes back one count of counter `field` from `bucket` (from the
    /// current bucket if `bucket` is newer), if that bucket is still in the
    /// window and holds one: whether it did. Never below zero.
    ///
    /// It takes the lock that expires buckets, so the bucket cannot leave
    /// the window between the check and the take: meant for the rare
    /// record that turns out to say nothing.
    ///
    /// # Panics
    /// If `field >= N`.
    pub fn remove(&self, bucket: u64, field: usize) -> bool {
        let _guard = self.advance.lock();
        let current = self.current.load(Ordering::Acquire);
        if bucket.saturating_add(self.len()) <= current {
            return false; // it has left the window with its bucket
        }
        let taken = self.slot(bucket.min(current))[field]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok();
        if taken {
            // The count was in the total before it was in the bucket.
            self.totals[field].fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }

    /// Empties the window (the current bucket stays current).
    ///
    /// A record racing the reset lands wholly on one side of it: each
    /// bucket is emptied as expiry empties it, taking what it held out of
    /// the totals, so a record that had counted in a total and not yet in
    /// its bucket stays counted in both, and no total goes below zero.
    pub fn reset(&self) {
        let _guard = self.advance.lock();
        for slot in self.buckets.iter() {
            self.expire(slot);
        }
    }
}

impl<const N: usize> fmt::Debug for TrailingCounts<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let totals: [u64; N] = std::array::from_fn(|i| self.totals[i].load(Ordering::Acquire));
        f.debug_struct("TrailingCounts")
            .field("len", &self.buckets.len())
            .field("current", &self.current.load(Ordering::Acquire))
            .field("totals", &totals)
            .finish()
    }
}

fn zeroes<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

#[cfg(all(test, not(floodwall_loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    const REQUESTS: usize = 0;
    const ACCEPTS: usize = 1;

    #[test]
    fn counts_expire_with_their_bucket() {
        let c = TrailingCounts::<2>::new(3);
        c.add(0, REQUESTS);
        c.add(1, REQUESTS);
        c.add(1, ACCEPTS);
        c.add(2, REQUESTS);
        assert_eq!(c.totals(2), [3, 1]);
        assert_eq!(c.totals(3), [2, 1], "bucket 0 left the window");
        assert_eq!(c.totals(4), [1, 0]);
        c.add(4, REQUESTS);
        c.add(4, ACCEPTS);
        assert_eq!(c.totals(4), [2, 1]);
        assert_eq!(c.totals(100), [0, 0], "a long gap clears everything");
        c.add(100, REQUESTS);
        assert_eq!(c.totals(101), [1, 0]);
    }

    #[test]
    fn expiry_by_the_bucket_with_several_counters() {
        let w = TrailingCounts::<3>::new(3);
        assert_eq!(w.record(0, [true, true, false]), [1, 1, 0]);
        assert_eq!(w.record(1, [true, false, true]), [2, 1, 1]);
        assert_eq!(w.record(2, [true, false, false]), [3, 1, 1]);
        assert_eq!(w.totals(2), [3, 1, 1]);
        assert_eq!(w.totals(3), [2, 0, 1]);
        assert_eq!(w.totals(10), [0, 0, 0]);
    }

    #[test]
    fn the_totals_after_an_add_are_returned() {
        let w = TrailingCounts::<2>::new(2);
        assert_eq!(w.add(0, ACCEPTS), 1);
        assert_eq!(w.add(0, ACCEPTS), 2);
        assert_eq!(w.record(1, [true, false]), [1, 2]);
        assert_eq!(w.record(2, [false, true]), [1, 1], "bucket 0 expired");
    }

    #[test]
    fn lagging_callers_count_in_the_current_bucket() {
        let c = TrailingCounts::<2>::new(2);
        c.add(5, REQUESTS);
        c.add(3, REQUESTS);
        assert_eq!(c.totals(5), [2, 0]);
        assert_eq!(c.totals(6), [2, 0], "both in bucket 5, still inside");
        assert_eq!(c.totals(7), [0, 0]);
        // Reading at an older bucket changes nothing either.
        c.record(9, [true, true]);
        assert_eq!(c.totals(1), [1, 1]);
    }

    #[test]
    fn a_count_taken_back_leaves_its_bucket_and_the_total() {
        let w = TrailingCounts::<2>::new(3);
        w.add(5, REQUESTS);
        w.add(5, REQUESTS);
        w.add(6, REQUESTS);
        assert!(w.remove(5, REQUESTS));
        assert_eq!(w.totals(6), [2, 0]);
        // Bucket 5 expires holding one request, not two.
        assert_eq!(w.totals(8), [1, 0]);
        // A bucket that has left the window is not touched.
        assert!(!w.remove(5, REQUESTS));
        assert_eq!(w.totals(8), [1, 0]);
        assert!(w.remove(6, REQUESTS));
        assert_eq!(w.totals(8), [0, 0]);
        // Never below zero.
        assert!(!w.remove(8, REQUESTS));
        assert_eq!(w.totals(8), [0, 0]);
        // Only the counter asked for.
        w.add(8, ACCEPTS);
        assert!(!w.remove(8, REQUESTS));
        assert_eq!(w.totals(8), [0, 1]);
        // A bucket newer than the current one: the current one.
        assert!(w.remove(12, ACCEPTS));
        assert_eq!(w.totals(8), [0, 0]);
    }

    #[test]
    fn reset_empties_the_window_and_keeps_the_current_bucket() {
        let w = TrailingCounts::<2>::new(3);
        w.record(4, [true, true]);
        w.add(5, REQUESTS);
        w.reset();
        assert_eq!(w.totals(5), [0, 0]);
        // Bucket 5 is still current: a lagging record counts there.
        w.add(0, REQUESTS);
        assert_eq!(w.totals(7), [1, 0]);
        assert_eq!(w.totals(8), [0, 0]);
    }

    #[test]
    fn a_record_racing_a_reset_never_wraps() {
        let w = TrailingCounts::<1>::new(2);
        // A record half done: counted in the total, not yet in its bucket...
        w.totals[0].fetch_add(1, Ordering::AcqRel);
        // ...a reset...
        w.reset();
        // ...then the bucket.
        w.slot(0)[0].fetch_add(1, Ordering::AcqRel);
        assert_eq!(w.totals(0), [1], "it landed after the reset");
        assert_eq!(w.totals(1), [1]);
        assert_eq!(w.totals(2), [0], "and left with its bucket, no wrap");
        assert_eq!(w.add(2, 0), 1);
    }

    #[test]
    fn concurrent_records_advances_removes_and_resets_keep_the_totals_exact() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 2_000;
        let w = Arc::new(TrailingCounts::<2>::new(4));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        let bucket = i / 16;
                        let [requests, accepts] = w.record(bucket, [true, i % 3 == 0]);
                        // Never wrapped: no more than was ever added.
                        assert!(requests <= THREADS * ROUNDS, "{requests}");
                        assert!(accepts <= THREADS * ROUNDS, "{accepts}");
                        if i % 5 == 0 {
                            w.remove(bucket, REQUESTS);
                        }
                        if t == 0 && i % 97 == 0 {
                            w.reset();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Expiring everything takes out exactly what the buckets hold: the
        // totals equal the buckets' sums, so they come back to zero.
        assert_eq!(w.totals(ROUNDS), [0, 0]);
    }
}
