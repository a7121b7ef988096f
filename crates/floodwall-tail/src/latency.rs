//! The recent latencies a hedging delay is read from: a log-linear
//! histogram per period, lock-free to record into (sans-IO: every method
//! takes the instant).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Sub-buckets per power of two: about 6 % between bucket bounds.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values under this many microseconds have a bucket each.
const LINEAR: usize = 2 * SUB;
/// Octaves above the linear part: up to 2^36 µs (19 hours), clamped.
const OCTAVES: usize = 31;
const BUCKETS: usize = LINEAR + OCTAVES * SUB;
/// "No delay known": fewer samples than the minimum in the last period.
const NONE: u64 = u64::MAX;

/// The bucket of `micros`.
fn bucket(micros: u64) -> usize {
    if micros < LINEAR as u64 {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros(); // ≥ SUB_BITS + 1
    let octave = (exponent - SUB_BITS - 1) as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let mantissa = ((micros >> (exponent - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR + octave * SUB + mantissa
}

/// The smallest value (µs) bucket `i` holds: a percentile read from the
/// histogram is never above the true one, and below it by less than a
/// bucket's width (1/16 of its power of two). Reading low hedges a little
/// early rather than late: Tokio's timer already rounds a delay up to the
/// next millisecond.
fn lower_bound(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    let octave = ((i - LINEAR) / SUB) as u32;
    let mantissa = ((i - LINEAR) % SUB) as u64;
    let exponent = octave + SUB_BITS + 1;
    let step = 1u64 << (exponent - SUB_BITS);
    (1u64 << exponent) + mantissa * step
}

/// The `percentile` of the latencies recorded over each `period`, read
/// from a histogram of 528 buckets (about 6 % apart; the bucket's lower
/// bound is read) once the period ends:
/// the value stays in force for the next period, as tower's `Hedge` reads
/// its rotating histogram. A period with fewer than `min_samples` samples
/// gives no value (no hedging).
///
/// Recording is lock-free (one atomic add); the end of a period takes a
/// lock once, for whoever records first after it.
pub(crate) struct LatencyWindow {
    start: Instant,
    counts: Box<[AtomicU32]>,
    samples: AtomicU32,
    /// The current period's end, in nanoseconds since `start`.
    period_end: AtomicU64,
    /// The value read from the last full period, in nanoseconds, or
    /// [`NONE`].
    delay: AtomicU64,
    rotation: Mutex<()>,
}

impl LatencyWindow {
    pub(crate) fn new(now: Instant, period: Duration) -> Self {
        Self {
            start: now,
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            samples: AtomicU32::new(0),
            period_end: AtomicU64::new(nanos(period)),
            delay: AtomicU64::new(NONE),
            rotation: Mutex::new(()),
        }
    }

    fn since_start(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.start))
    }

    /// Records one latency observed at `now`; ends the period first if it
    /// is over.
    pub(crate) fn record(&self, now: Instant, latency: Duration, params: Percentile) {
        self.rotate(now, params);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// The delay in force at `now`: the percentile of the last full period,
    /// or `None` while it had too few samples.
    pub(crate) fn delay(&self, now: Instant, params: Percentile) -> Option<Duration> {
        self.rotate(now, params);
        match self.delay.load(Ordering::Acquire) {
            NONE => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn rotate(&self, now: Instant, params: Percentile) {
        let t = self.since_start(now);
        if t < self.period_end.load(Ordering::Acquire) {
            return;
        }
        let Some(_guard) = self.rotation.try_lock() else {
            return; // another caller is ending the period
        };
        let end = self.period_end.load(Ordering::Acquire);
        if t < end {
            return;
        }
        let period = nanos(params.period).max(1);
        // A period without samples in between (idle) leaves none.
        let idle = t - end >= period;
        let samples = self.samples.swap(0, Ordering::AcqRel);
        let mut counts = [0u32; BUCKETS];
        for (slot, count) in counts.iter_mut().zip(self.counts.iter()) {
            *slot = count.swap(0, Ordering::AcqRel);
        }
        let value = if idle || samples < params.min_samples {
            NONE
        } else {
            percentile_of(&counts, params.percentile)
                .map_or(NONE, |micros| micros.saturating_mul(1_000))
        };
        self.delay.store(value, Ordering::Release);
        // The next period starts at the end of this one, or now after idleness.
        let next = if idle { t } else { end } + period;
        self.period_end.store(next, Ordering::Release);
    }
}

/// The lower bound of the bucket holding the `p` quantile of `counts`.
fn percentile_of(counts: &[u32], p: f64) -> Option<u64> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: ⌈p · n⌉, at least 1.
    let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return Some(lower_bound(i));
        }
    }
    None
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The parameters of a percentile delay (see
/// [`HedgeDelay::Percentile`](crate::HedgeDelay::Percentile)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percentile {
    pub(crate) percentile: f64,
    pub(crate) min_samples: u32,
    pub(crate) period: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        let mut last = 0;
        for micros in (0..100_000u64).chain([1 << 30, 1 << 35, u64::MAX]) {
            let i = bucket(micros);
            assert!(i >= last || micros >= 1 << 30, "{micros}");
            last = i;
            assert!(i < BUCKETS);
            if micros < 1 << 36 {
                assert!(lower_bound(i) <= micros, "{micros}: {}", lower_bound(i));
                // Within one bucket width (1/16 of the octave) of the value.
                assert!(micros - lower_bound(i) < micros / 16 + 1, "{micros}");
            }
        }
    }

    #[test]
    fn the_percentile_is_read_from_the_last_full_period() {
        let t0 = Instant::now();
        let params = Percentile {
            percentile: 0.95,
            min_samples: 10,
            period: Duration::from_secs(1),
        };
        let w = LatencyWindow::new(t0, params.period);
        // 100 samples: 1..=100 ms.
        for ms in 1..=100u64 {
            w.record(t0, Duration::from_millis(ms), params);
        }
        assert_eq!(w.delay(t0, params), None, "no full period yet");
        let t1 = t0 + Duration::from_millis(1_000);
        let p95 = w.delay(t1, params).unwrap();
        // The 95th of 100 is 95 ms; its bucket's lower bound is within 1/16
        // under it.
        assert!(p95 <= Duration::from_millis(95), "{p95:?}");
        assert!(p95 > Duration::from_micros(95_000 - 95_000 / 16), "{p95:?}");
        // Too few samples in the next period: no delay after it.
        for _ in 0..9 {
            w.record(t1, Duration::from_millis(5), params);
        }
        assert_eq!(w.delay(t1 + Duration::from_millis(999), params), Some(p95));
        assert_eq!(w.delay(t1 + Duration::from_millis(1_000), params), None);
    }

    #[test]
    fn an_idle_period_forgets_the_old_value() {
        let t0 = Instant::now();
        let params = Percentile {
            percentile: 0.5,
            min_samples: 1,
            period: Duration::from_secs(1),
        };
        let w = LatencyWindow::new(t0, params.period);
        w.record(t0, Duration::from_millis(10), params);
        assert!(w.delay(t0 + Duration::from_secs(1), params).is_some());
        // Three idle periods later, nothing recent is known.
        assert_eq!(w.delay(t0 + Duration::from_secs(4), params), None);
    }
}
