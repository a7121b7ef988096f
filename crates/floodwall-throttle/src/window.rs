//! Request and accept counts over a trailing window, in buckets, with an
//! O(1) read of the totals.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Packs (requests, accepts) into one word: requests in the high half.
#[cfg(test)]
fn pack(requests: u64, accepts: u64) -> u64 {
    (requests << 32) | accepts
}

#[inline]
fn unpack(word: u64) -> (u64, u64) {
    (word >> 32, word & 0xFFFF_FFFF)
}

/// One request, no accept.
pub(crate) const REQUEST: u64 = 1 << 32;
/// One accept, no request.
pub(crate) const ACCEPT: u64 = 1;

struct Bucket {
    /// The bucket index (time / bucket length) these counts belong to.
    index: AtomicU64,
    counts: AtomicU64,
}

/// Counts over the last `buckets` buckets. Recording is two `fetch_add`s
/// (the bucket and the running total); crossing into a new bucket expires
/// the buckets that left the window under a lock, once per bucket.
pub(crate) struct TrailingCounts {
    buckets: Box<[Bucket]>,
    /// The sum of every live bucket.
    total: AtomicU64,
    /// The newest bucket index expired up to.
    current: AtomicU64,
    advance: Mutex<()>,
}

impl TrailingCounts {
    pub(crate) fn new(buckets: usize) -> Self {
        Self {
            buckets: (0..buckets.max(1))
                .map(|_| Bucket {
                    index: AtomicU64::new(0),
                    counts: AtomicU64::new(0),
                })
                .collect(),
            total: AtomicU64::new(0),
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
            let slot = &self.buckets[(j % n) as usize];
            let old = slot.counts.swap(0, Ordering::AcqRel);
            // The slot held bucket j − n or older: it has left the window.
            self.total.fetch_sub(old, Ordering::AcqRel);
            slot.index.store(j, Ordering::Release);
        }
        self.current.store(bucket, Ordering::Release);
        bucket
    }

    /// Adds `delta` (`REQUEST`, `ACCEPT`) in `bucket`.
    #[inline]
    pub(crate) fn add(&self, bucket: u64, delta: u64) {
        let bucket = self.at(bucket);
        let n = self.buckets.len() as u64;
        // The total first: a bucket's counts are then never more than the
        // total holds, so expiring a bucket never borrows across the packed
        // halves of the total.
        self.total.fetch_add(delta, Ordering::AcqRel);
        self.buckets[(bucket % n) as usize]
            .counts
            .fetch_add(delta, Ordering::AcqRel);
    }

    /// (requests, accepts) over the window ending in `bucket`.
    #[inline]
    pub(crate) fn totals(&self, bucket: u64) -> (u64, u64) {
        self.at(bucket);
        unpack(self.total.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_with_their_bucket() {
        let c = TrailingCounts::new(3);
        c.add(0, REQUEST);
        c.add(1, REQUEST + ACCEPT);
        c.add(2, REQUEST);
        assert_eq!(c.totals(2), (3, 1));
        assert_eq!(c.totals(3), (2, 1), "bucket 0 left the window");
        assert_eq!(c.totals(4), (1, 0));
        c.add(4, pack(2, 2));
        assert_eq!(c.totals(4), (3, 2));
        assert_eq!(c.totals(100), (0, 0), "a long gap clears everything");
        c.add(100, REQUEST);
        assert_eq!(c.totals(101), (1, 0));
    }

    #[test]
    fn lagging_callers_count_in_the_current_bucket() {
        let c = TrailingCounts::new(2);
        c.add(5, REQUEST);
        c.add(3, REQUEST);
        assert_eq!(c.totals(5), (2, 0));
        assert_eq!(c.totals(6), (2, 0), "both in bucket 5, still inside");
        assert_eq!(c.totals(7), (0, 0));
    }
}
