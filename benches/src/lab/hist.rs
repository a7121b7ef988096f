//! Latency histograms for the lab: [`hdrhistogram`] with three significant
//! figures (any reported quantile within 0.1 % of the true value),
//! auto-resizing, behind the small API the lab uses.

use std::time::Duration;

/// A latency histogram in nanoseconds (see the module docs).
#[derive(Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Self(hdrhistogram::Histogram::new(3).expect("3 significant figures is valid"))
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.len())
            .field("max", &self.max())
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value.
    pub fn record(&mut self, value: Duration) {
        let v = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX).max(1);
        // Auto-resizing grows to hold `v`; a value past what it can ever
        // hold is counted at its top instead.
        if self.0.record(v).is_err() {
            self.0.saturating_record(v);
        }
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The largest value recorded (within the precision).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.0.max())
    }

    /// The value at quantile `q` in `[0, 1]` (within the precision). Zero
    /// when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        Duration::from_nanos(self.0.value_at_quantile(q))
    }

    /// Adds every value of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        self.0
            .add(&other.0)
            .expect("auto-resizing histograms of the same precision merge");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_precision() {
        let mut h = Histogram::new();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0), (1.0, 1000.0)] {
            let got = h.quantile(q).as_secs_f64() * 1e3;
            assert!((got - want).abs() <= want * 0.001, "q{q}: {got} vs {want}");
        }
        let max = h.max().as_secs_f64() * 1e3;
        assert!((max - 1000.0).abs() <= 1.0, "{max}");
        assert_eq!(h.len(), 1000);
    }

    #[test]
    fn empty_huge_and_merged() {
        let mut a = Histogram::new();
        assert!(a.is_empty());
        assert_eq!(a.quantile(0.99), Duration::ZERO);
        let mut b = Histogram::new();
        b.record(Duration::from_micros(7));
        b.record(Duration::MAX);
        a.merge(&b);
        assert_eq!(a.len(), 2);
        let median = a.quantile(0.5).as_nanos();
        assert!(median.abs_diff(7_000) <= 7, "{median} ns");
        assert!(a.max() > Duration::from_secs(86_400 * 365 * 100));
    }
}
