//! A log-linear latency histogram in the style of HdrHistogram.
//!
//! Values (nanoseconds) below 256 are counted exactly; above, each power of
//! two is split into 128 equal buckets, so any reported quantile is within
//! 1/128 (0.8 %) of the true value. Memory is fixed (about 58 KiB) and
//! recording is an index computation and an increment.

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 7;
const HALF: u64 = 1 << SUB_BITS;
const EXACT: u64 = HALF << 1;
const BUCKETS: usize = ((64 - SUB_BITS as usize) * HALF as usize) + HALF as usize;

/// A latency histogram with bounded relative error (see the module docs).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("max", &Duration::from_nanos(self.max))
            .finish_non_exhaustive()
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    // v >> shift lies in [HALF, 2·HALF).
    (shift as usize + 1) * HALF as usize + ((v >> shift) - HALF) as usize
}

/// The largest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = i / HALF - 1;
    let mantissa = i % HALF + HALF;
    let edge = (u128::from(mantissa + 1) << shift) - 1;
    u64::try_from(edge).unwrap_or(u64::MAX)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value.
    pub fn record(&mut self, value: Duration) {
        let v = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The value at quantile `q` in `[0, 1]`: the smallest recorded value
    /// that at least `q` of all values do not exceed (within the bucket
    /// precision, reported at the bucket's upper edge, never above the
    /// maximum). Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(highest(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }

    /// Adds every value of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        let mut prev = None;
        for v in (0..EXACT * 8).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(highest(i) >= v, "{v} above its bucket's edge");
            if let Some((pv, pi)) = prev
                && v == pv + 1
            {
                assert!(i == pi || i == pi + 1, "gap after {pv}");
            }
            prev = Some((v, i));
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut h = Histogram::new();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0), (1.0, 1000.0)] {
            let got = h.quantile(q).as_secs_f64() * 1e3;
            assert!(
                got >= want && got <= want * (1.0 + 1.0 / HALF as f64),
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(h.max(), Duration::from_millis(1000));
        assert_eq!(h.len(), 1000);
    }

    #[test]
    fn empty_and_merged() {
        let mut a = Histogram::new();
        assert_eq!(a.quantile(0.99), Duration::ZERO);
        let mut b = Histogram::new();
        b.record(Duration::from_micros(7));
        a.merge(&b);
        assert_eq!(a.len(), 1);
        assert_eq!(a.quantile(0.5), Duration::from_micros(7));
    }
}
