//! Request and accept counts over a trailing window, in buckets, with an
//! O(1) read of the totals.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// What a record counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// An attempt.
    Request,
    /// An attempt the backend accepted.
    Accept,
}

#[derive(Default)]
struct Pair {
    requests: AtomicU64,
    accepts: AtomicU64,
}

impl Pair {
    #[inline]
    fn field(&self, count: Count) -> &AtomicU64 {
        match count {
            Count::Request => &self.requests,
            Count::Accept => &self.accepts,
        }
    }
}

/// Counts over the last `buckets` buckets. Recording is two `fetch_add`s
/// (the bucket and the running total); crossing into a new bucket expires
/// the buckets that left the window under a lock, once per bucket.
pub(crate) struct TrailingCounts {
    buckets: Box<[Pair]>,
    /// The sum of every live bucket.
    total: Pair,
    /// The newest bucket index expired up to.
    current: AtomicU64,
    advance: Mutex<()>,
}

impl TrailingCounts {
    pub(crate) fn new(buckets: usize) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| Pair::default()).collect(),
            total: Pair::default(),
            current: AtomicU64::new(0),
            advance: Mutex::new(()),
        }
    }

    /// Makes `bucket` current, expiring everything older than the window.
    #[inline]
    fn at(&self, bucket: u64) -> u64 {
        let current = self.current.load(Ordering::Acquire);
        if bucket <= current {
            // A caller whose clock read lags counts in the current bucket.
            return current;
        }
        self.advance_to(bucket)
    }

    #[cold]
    fn advance_to(&self, bucket: u64) -> u64 {
        let _guard = self.advance.lock();
        let current = self.current.load(Ordering::Acquire);
        if bucket <= current {
            return current;
        }
        let n = self.buckets.len() as u64;
        let first = (current + 1).max(bucket.saturating_sub(n - 1));
        for j in first..=bucket {
            // The slot held bucket j − n or older: it has left the window.
            let slot = &self.buckets[(j % n) as usize];
            for count in [Count::Request, Count::Accept] {
                let old = slot.field(count).swap(0, Ordering::AcqRel);
                self.total.field(count).fetch_sub(old, Ordering::AcqRel);
            }
        }
        self.current.store(bucket, Ordering::Release);
        bucket
    }

    /// Counts one `count` in `bucket` (or the current bucket, if later).
    #[inline]
    pub(crate) fn add(&self, bucket: u64, count: Count) {
        let bucket = self.at(bucket);
        let n = self.buckets.len() as u64;
        // The total first: a bucket never holds more than the total, so
        // expiring it never takes the total below zero.
        self.total.field(count).fetch_add(1, Ordering::AcqRel);
        self.buckets[(bucket % n) as usize]
            .field(count)
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Takes back one request counted in `bucket`, if that bucket is still
    /// in the window (a request that says nothing about the backend).
    pub(crate) fn remove_request(&self, bucket: u64) {
        // Under the lock that expires buckets: the slot cannot change hands
        // between the check and the decrement.
        let _guard = self.advance.lock();
        let current = self.current.load(Ordering::Acquire);
        let n = self.buckets.len() as u64;
        if bucket.saturating_add(n) <= current {
            return; // it has left the window with its bucket
        }
        let slot = &self.buckets[(bucket.min(current) % n) as usize];
        let taken = slot
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok();
        if taken {
            self.total.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// (requests, accepts) over the window ending in `bucket`.
    #[inline]
    pub(crate) fn totals(&self, bucket: u64) -> (u64, u64) {
        self.at(bucket);
        (
            self.total.requests.load(Ordering::Acquire),
            self.total.accepts.load(Ordering::Acquire),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_taken_back_leaves_its_bucket_and_the_total() {
        let w = TrailingCounts::new(3);
        w.add(5, Count::Request);
        w.add(5, Count::Request);
        w.add(6, Count::Request);
        w.remove_request(5);
        assert_eq!(w.totals(6), (2, 0));
        // Bucket 5 expires holding one request, not two.
        assert_eq!(w.totals(8), (1, 0));
        // A bucket that has left the window is not touched.
        w.remove_request(5);
        assert_eq!(w.totals(8), (1, 0));
        w.remove_request(6);
        assert_eq!(w.totals(8), (0, 0));
        // Never below zero.
        w.remove_request(8);
        assert_eq!(w.totals(8), (0, 0));
    }

    #[test]
    fn counts_expire_with_their_bucket() {
        let c = TrailingCounts::new(3);
        c.add(0, Count::Request);
        c.add(1, Count::Request);
        c.add(1, Count::Accept);
        c.add(2, Count::Request);
        assert_eq!(c.totals(2), (3, 1));
        assert_eq!(c.totals(3), (2, 1), "bucket 0 left the window");
        assert_eq!(c.totals(4), (1, 0));
        c.add(4, Count::Request);
        c.add(4, Count::Accept);
        assert_eq!(c.totals(4), (2, 1));
        assert_eq!(c.totals(100), (0, 0), "a long gap clears everything");
        c.add(100, Count::Request);
        assert_eq!(c.totals(101), (1, 0));
    }

    #[test]
    fn lagging_callers_count_in_the_current_bucket() {
        let c = TrailingCounts::new(2);
        c.add(5, Count::Request);
        c.add(3, Count::Request);
        assert_eq!(c.totals(5), (2, 0));
        assert_eq!(c.totals(6), (2, 0), "both in bucket 5, still inside");
        assert_eq!(c.totals(7), (0, 0));
    }
}
