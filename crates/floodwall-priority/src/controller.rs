use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use floodwall_core::Priority;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{AdmissionConfig, ConfigError};

/// Number of (business, user) cells: 256 × 128.
const CELLS: usize = 1 << 15;
/// The index of the least important cell: a level here admits everything.
const ADMIT_ALL: u16 = (CELLS - 1) as u16;

/// Queuing samples share one atomic: the count in the top 20 bits, the sum
/// in microseconds in the low 44.
const SAMPLE_SHIFT: u32 = 44;
const SUM_MASK: u64 = (1 << SAMPLE_SHIFT) - 1;
/// Samples are clamped to 2^24 µs (16.7 s, above the largest threshold), so
/// 2^20 of them cannot overflow the sum.
const MAX_SAMPLE_US: u64 = (1 << 24) - 1;
/// Past this many samples in one window, a sample closes the window early.
const SAMPLE_SOFT_CAP: u64 = 1 << 19;

/// The sans-IO heart of priority admission: DAGOR's adaptive admission level.
///
/// Every arrival is counted in a histogram over the 32768 (business, user)
/// cells and admitted iff its priority is at or above the level
/// (`B < B*`, or `B = B*` and `U ≤ U*`). Queuing-time samples (arrival to
/// start of processing) are averaged over a window that closes after
/// [`window`](AdmissionConfig::window) or
/// [`window_requests`](AdmissionConfig::window_requests) arrivals, whichever
/// comes first. At each window end, with `N` arrivals and `N_adm` admitted:
///
/// - overloaded (average above the threshold): `N_exp = (1 − α)·N_adm`;
/// - otherwise: `N_exp = N_adm + β·N`;
///
/// and the new level is the least important one whose cumulative arrivals,
/// counted from the most important cell, do not exceed `N_exp` (admit all if
/// every level fits).
///
/// Three conventions complete the published algorithm:
/// - **Floor.** The most important cell, `(0, 0)`, is always admitted: a level
///   never shuts everything out.
/// - **Progress.** When the window was not overloaded and some arrivals were
///   refused but the formula admits no further one (β·N is smaller than the
///   next cell), the level moves on to admit the next refused cell, so a
///   single busy cell cannot be locked out of an idle server.
/// - **Upstream drops.** Requests that collaborative clients dropped locally
///   for this server ([`record_upstream_drops`](Self::record_upstream_drops))
///   count as arrivals; their cells are unknown, so they are spread evenly
///   over the cells between the level and the cell where 99.9 % of the
///   arrivals of the last window that refused nothing ended. Without this, a server whose clients filter perfectly would see no
///   refused arrivals and jump back to admitting everything.
///
/// All methods take `&self`: the per-request path is a few relaxed atomic
/// increments; closing a window takes a lock, once per window. The clock is
/// the caller's: every method takes `now`.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::Priority;
/// use floodwall_priority::{AdmissionConfig, AdmissionController};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let config = AdmissionConfig { window_requests: 100, ..Default::default() };
/// let controller = AdmissionController::new(&config, t0)?;
/// let p = |b, u| Priority::new(b, u).unwrap();
/// // One window: 50 arrivals at (1, 0) and 50 at (2, 0), all queuing 30 ms.
/// for i in 0..100 {
///     let priority = if i % 2 == 0 { p(1, 0) } else { p(2, 0) };
///     assert!(controller.admit(t0, priority).is_ok(), "admit all at first");
///     controller.record_queuing(t0, Duration::from_millis(30));
/// }
/// // Overloaded: N_exp = 0.95 × 100 = 95; (1, 0) fits (50), (2, 0) does not (100).
/// assert_eq!(controller.level(), p(1, 127));
/// assert!(controller.admit(t0, p(2, 0)).is_err());
/// # Ok::<(), floodwall_priority::ConfigError>(())
/// ```
pub struct AdmissionController {
    base: Instant,
    window_ns: u64,
    window_requests: u64,
    threshold_us: u64,
    alpha: f64,
    beta: f64,
    level: AtomicU16,
    histogram: Box<[AtomicU32]>,
    /// One bit per cell that may be non-zero, so closing a window visits
    /// only the cells that saw arrivals.
    touched: Box<[AtomicU64]>,
    arrivals: AtomicU64,
    samples: AtomicU64,
    upstream_drops: AtomicU64,
    window_end: AtomicU64,
    report_pending: AtomicBool,
    closing: Mutex<Closing>,
}

#[derive(Debug, Default)]
struct Closing {
    cells: Vec<(u16, u32)>,
    least_seen: u16,
    last: Option<WindowReport>,
}

/// What happened at a window's end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowReport {
    /// Arrivals in the window, `N` (including upstream drops).
    pub arrivals: u64,
    /// Of which dropped by collaborative clients before reaching the server.
    pub upstream_drops: u64,
    /// Arrivals at or above the level in force, `N_adm`.
    pub admitted: u64,
    /// Queuing-time samples in the window.
    pub samples: u64,
    /// Their average (zero without samples).
    pub average_queuing: Duration,
    /// Whether the average was above the threshold.
    pub overloaded: bool,
    /// `N_exp`.
    pub expected: f64,
    /// The level in force during the window.
    pub previous: Priority,
    /// The level from now on.
    pub level: Priority,
}

impl AdmissionController {
    /// A controller admitting everything, its first window starting at `now`.
    ///
    /// # Errors
    /// As [`AdmissionConfig::validate`].
    pub fn new(config: &AdmissionConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let window_ns = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX / 4);
        Ok(Self {
            base: now,
            window_ns,
            window_requests: u64::from(config.window_requests),
            threshold_us: micros(config.threshold),
            alpha: config.alpha,
            beta: config.beta,
            level: AtomicU16::new(ADMIT_ALL),
            histogram: (0..CELLS).map(|_| AtomicU32::new(0)).collect(),
            touched: (0..CELLS / 64).map(|_| AtomicU64::new(0)).collect(),
            arrivals: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            upstream_drops: AtomicU64::new(0),
            window_end: AtomicU64::new(window_ns),
            report_pending: AtomicBool::new(false),
            closing: Mutex::new(Closing::default()),
        })
    }

    /// The admission level: requests at or above it (`priority <= level`)
    /// are admitted. [`Priority::LOWEST`] admits everything.
    pub fn level(&self) -> Priority {
        Priority::from_index(self.level.load(Relaxed))
    }

    /// Whether `priority` would be admitted now, without counting it.
    #[inline]
    pub fn would_admit(&self, priority: Priority) -> bool {
        priority.index() <= self.level.load(Relaxed)
    }

    /// Counts an arrival of `priority` at `now` and decides it against the
    /// level in force, which either variant carries. A window whose time is up closes before
    /// the arrival is counted; the arrival that fills a window closes it
    /// after being decided.
    ///
    /// # Errors
    /// The admission level in force, when `priority` is below it.
    #[inline]
    pub fn admit(&self, now: Instant, priority: Priority) -> Result<Priority, Priority> {
        // A window that is over by time closes before this arrival, which
        // belongs to the next one; the arrival that fills a window by count
        // is its last.
        if self.nanos(now) >= self.window_end.load(Relaxed) {
            self.close(now);
        }
        let index = priority.index();
        let level = self.level.load(Relaxed);
        let cell = usize::from(index);
        if self.histogram[cell].fetch_add(1, Relaxed) == 0 {
            self.touched[cell / 64].fetch_or(1 << (cell % 64), Relaxed);
        }
        if self.arrivals.fetch_add(1, Relaxed) + 1 >= self.window_requests {
            self.close(now);
        }
        if index <= level {
            Ok(Priority::from_index(level))
        } else {
            Err(Priority::from_index(level))
        }
    }

    /// Records one request's queuing time (arrival to start of processing).
    /// Samples are clamped to 16.7 s.
    #[inline]
    pub fn record_queuing(&self, now: Instant, queued: Duration) {
        let us = micros(queued);
        let before = self.samples.fetch_add((1 << SAMPLE_SHIFT) | us, Relaxed);
        if before >> SAMPLE_SHIFT >= SAMPLE_SOFT_CAP {
            self.close(now);
        }
    }

    /// Counts `count` requests a collaborative client dropped locally for
    /// this server (see the type docs).
    pub fn record_upstream_drops(&self, count: u64) {
        self.upstream_drops.fetch_add(count, Relaxed);
    }

    /// Closes the window now if it is over (by time or by count); a no-op
    /// otherwise. Arrivals do this themselves; call it to close a window
    /// during a lull.
    pub fn poll_window(&self, now: Instant) -> Option<WindowReport> {
        self.close(now)
    }

    /// The report of the last closed window, if any.
    pub fn last_window(&self) -> Option<WindowReport> {
        self.closing.lock().last
    }

    /// The report of a window closed since the last call, once: for
    /// whoever publishes metrics. Cheap when nothing closed.
    #[inline]
    pub fn take_report(&self) -> Option<WindowReport> {
        if !self.report_pending.load(Relaxed) || !self.report_pending.swap(false, Relaxed) {
            return None;
        }
        self.last_window()
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    #[cold]
    fn close(&self, now: Instant) -> Option<WindowReport> {
        // Whoever holds the lock is closing this window already.
        let mut closing = self.closing.try_lock()?;
        let t = self.nanos(now);
        let due = self.arrivals.load(Relaxed) >= self.window_requests
            || t >= self.window_end.load(Relaxed)
            || self.samples.load(Relaxed) >> SAMPLE_SHIFT >= SAMPLE_SOFT_CAP;
        if !due {
            return None;
        }
        self.window_end
            .store(t.saturating_add(self.window_ns), Relaxed);
        self.arrivals.store(0, Relaxed);
        let samples = self.samples.swap(0, Relaxed);
        let upstream_drops = self.upstream_drops.swap(0, Relaxed);
        let Closing {
            cells,
            least_seen,
            last,
        } = &mut *closing;
        cells.clear();
        for (w, word) in self.touched.iter().enumerate() {
            let mut bits = word.swap(0, Relaxed);
            while bits != 0 {
                let cell = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let count = self.histogram[cell].swap(0, Relaxed);
                if count > 0 {
                    cells.push((cell as u16, count));
                }
            }
        }
        let previous = self.level.load(Relaxed);
        if previous == ADMIT_ALL {
            // Nothing was refused, so the histogram shows the whole range of
            // priorities: remember where 99.9 % of it ends (a stray request
            // at the very bottom must not stretch the range).
            let total: u64 = cells.iter().map(|&(_, n)| u64::from(n)).sum();
            let mut cumulative = 0;
            for &(cell, n) in cells.iter() {
                cumulative += u64::from(n);
                if cumulative * 1000 >= total * 999 {
                    *least_seen = cell;
                    break;
                }
            }
        }
        let count = samples >> SAMPLE_SHIFT;
        let average_us = (samples & SUM_MASK).checked_div(count).unwrap_or(0);
        let window = Window {
            cells,
            upstream_drops,
            overloaded: average_us > self.threshold_us,
            least_seen: *least_seen,
        };
        let (level, stats) = window.next_level(previous, self.alpha, self.beta);
        self.level.store(level, Relaxed);
        let report = WindowReport {
            arrivals: stats.arrivals,
            upstream_drops,
            admitted: stats.admitted,
            samples: count,
            average_queuing: Duration::from_micros(average_us),
            overloaded: window.overloaded,
            expected: stats.expected,
            previous: Priority::from_index(previous),
            level: Priority::from_index(level),
        };
        *last = Some(report);
        self.report_pending.store(true, Relaxed);
        Some(report)
    }
}

impl std::fmt::Debug for AdmissionController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionController")
            .field("level", &self.level())
            .field("arrivals", &self.arrivals.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Microseconds, rounded to nearest, saturating at [`MAX_SAMPLE_US`] (64-bit
/// arithmetic: this runs for every admitted request).
fn micros(d: Duration) -> u64 {
    if d.as_secs() > MAX_SAMPLE_US / 1_000_000 {
        return MAX_SAMPLE_US;
    }
    let nanos = d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos());
    ((nanos + 500) / 1000).min(MAX_SAMPLE_US)
}

/// One closed window's histogram, in cell order.
struct Window<'a> {
    cells: &'a [(u16, u32)],
    upstream_drops: u64,
    overloaded: bool,
    least_seen: u16,
}

struct Stats {
    arrivals: u64,
    admitted: u64,
    expected: f64,
}

impl Window<'_> {
    /// The level after this window, given the level in force during it.
    fn next_level(&self, old: u16, alpha: f64, beta: f64) -> (u16, Stats) {
        let observed: u64 = self.cells.iter().map(|&(_, c)| u64::from(c)).sum();
        let admitted: u64 = self
            .cells
            .iter()
            .take_while(|&&(cell, _)| cell <= old)
            .map(|&(_, c)| u64::from(c))
            .sum();
        let arrivals = observed + self.upstream_drops;
        let expected = if self.overloaded {
            (1.0 - alpha) * admitted as f64
        } else {
            admitted as f64 + beta * arrivals as f64
        };
        let stats = Stats {
            arrivals,
            admitted,
            expected,
        };
        // Upstream drops, spread evenly over (old, span_end].
        let span_end = self.least_seen.max(old.saturating_add(1)).min(ADMIT_ALL);
        let spread = if self.upstream_drops > 0 && span_end > old {
            self.upstream_drops as f64 / f64::from(span_end - old)
        } else {
            0.0
        };
        let count_at = |cell: u16, observed: u32| {
            let hidden = if cell > old && cell <= span_end {
                spread
            } else {
                0.0
            };
            f64::from(observed) + hidden
        };

        // Walk the cells from the most important, visiting only cells that
        // hold something; the first whose cumulative count exceeds N_exp is
        // the first refused.
        let mut cumulative = 0.0;
        let mut first_refused = None;
        let mut next = 0; // position in `cells`
        let mut cell = self.cells.first().map(|&(c, _)| c);
        if spread > 0.0 && cell.is_none_or(|c| c > old + 1) {
            cell = Some(old + 1);
        }
        while let Some(c) = cell {
            let observed = match self.cells.get(next) {
                Some(&(at, n)) if at == c => {
                    next += 1;
                    n
                }
                _ => 0,
            };
            cumulative += count_at(c, observed);
            if cumulative > expected {
                first_refused = Some(c);
                break;
            }
            let hidden_next = (spread > 0.0 && c < span_end).then(|| (c + 1).max(old + 1));
            let observed_next = self.cells.get(next).map(|&(at, _)| at);
            cell = match (hidden_next, observed_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut level = match first_refused {
            None => ADMIT_ALL,
            Some(c) => c.saturating_sub(1),
        };
        if !self.overloaded && old < ADMIT_ALL {
            // Progress: admit at least the next cell that held arrivals.
            let next_observed = self.cells.iter().map(|&(c, _)| c).find(|&c| c > old);
            let next_hidden = (spread > 0.0).then_some(old + 1);
            let next_busy = match (next_observed, next_hidden) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(c) = next_busy
                && level < c
            {
                level = c;
            }
        }
        (level, stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(b: u8, u: u8) -> Priority {
        Priority::new(b, u).unwrap()
    }

    #[test]
    fn queuing_samples_round_to_the_nearest_microsecond_and_saturate() {
        assert_eq!(micros(Duration::ZERO), 0);
        assert_eq!(micros(Duration::from_nanos(499)), 0);
        assert_eq!(micros(Duration::from_nanos(500)), 1);
        assert_eq!(micros(Duration::from_nanos(20_000_499)), 20_000);
        assert_eq!(micros(Duration::new(3, 999_999_500)), 4_000_000);
        assert_eq!(micros(Duration::from_micros(MAX_SAMPLE_US)), MAX_SAMPLE_US);
        assert_eq!(
            micros(Duration::from_micros(MAX_SAMPLE_US + 1)),
            MAX_SAMPLE_US
        );
        assert_eq!(micros(Duration::from_secs(17)), MAX_SAMPLE_US);
        assert_eq!(micros(Duration::MAX), MAX_SAMPLE_US);
    }

    fn level(cells: &[(Priority, u32)], drops: u64, old: Priority, overloaded: bool) -> Priority {
        let mut cells: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
        cells.sort_unstable();
        let least_seen = cells.last().map_or(0, |c| c.0);
        let w = Window {
            cells: &cells,
            upstream_drops: drops,
            overloaded,
            least_seen,
        };
        Priority::from_index(w.next_level(old.index(), 0.05, 0.01).0)
    }

    #[test]
    fn overload_sheds_alpha_of_the_admitted() {
        // 100 admitted in four cells; N_exp = 95: the cells of 40+30+20 = 90
        // fit, the fourth (10 more, 100) does not.
        let cells = [(p(0, 5), 40), (p(1, 0), 30), (p(1, 9), 20), (p(2, 3), 10)];
        assert_eq!(level(&cells, 0, Priority::LOWEST, true), p(2, 2));
    }

    #[test]
    fn refused_arrivals_do_not_count_as_admitted() {
        // Level (1, 9): N_adm = 90 (the (2, 3) cell was refused). Overloaded:
        // N_exp = 85.5: 40 + 30 = 70 fits, + 20 = 90 does not.
        let cells = [(p(0, 5), 40), (p(1, 0), 30), (p(1, 9), 20), (p(2, 3), 10)];
        assert_eq!(level(&cells, 0, p(1, 9), true), p(1, 8));
        // Not overloaded: N_exp = 90 + 0.01 × 100 = 91 stops short of (2, 3),
        // so β·N admits no further arrival: the progress rule admits (2, 3).
        assert_eq!(level(&cells, 0, p(1, 9), false), p(2, 3));
        // With a larger β the formula alone gets there: N_exp = 90 + 10 = 100.
        let mut idx: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
        idx.sort_unstable();
        let w = Window {
            cells: &idx,
            upstream_drops: 0,
            overloaded: false,
            least_seen: p(2, 3).index(),
        };
        assert_eq!(
            w.next_level(p(1, 9).index(), 0.05, 0.1).0,
            Priority::LOWEST.index()
        );
    }

    #[test]
    fn recovery_admits_all_when_every_level_fits() {
        // Level (1, 0), 100 arrivals, 99 admitted: N_exp = 99 + 1 = 100.
        let cells = [(p(0, 0), 99), (p(3, 0), 1)];
        assert_eq!(level(&cells, 0, p(1, 0), false), Priority::LOWEST);
    }

    #[test]
    fn the_most_important_cell_is_a_floor() {
        let cells = [(p(0, 0), 100)];
        assert_eq!(level(&cells, 0, Priority::LOWEST, true), p(0, 0));
        assert_eq!(
            level(&[], 0, p(0, 0), true),
            Priority::LOWEST,
            "nothing arrived: all fit"
        );
    }

    #[test]
    fn progress_rule_admits_the_next_busy_cell() {
        // Level (0, 127): 10 admitted, 990 refused in one cell. N_exp = 10 +
        // 9.9 does not reach (5, 5); the progress rule admits it anyway.
        let cells = [(p(0, 1), 10), (p(5, 5), 990)];
        assert_eq!(level(&cells, 0, p(0, 127), false), p(5, 5));
        // Overloaded: no progress.
        assert_eq!(level(&cells, 0, p(0, 127), true), p(0, 0));
    }

    #[test]
    fn upstream_drops_hold_the_level_back() {
        // Clients filtered everything below (1, 127); the server saw 1000
        // admitted arrivals up to it and 1000 dropped upstream, spread over
        // (1, 127)..=(3, 127) (least seen earlier): 256 cells, 3.906 each.
        // N_exp = 1000 + 20 = 1020: 5 more cells fit (19.5), the 6th not.
        let cells = [(p(0, 0), 500), (p(1, 127), 500)];
        let mut cells_idx: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
        cells_idx.sort_unstable();
        let w = Window {
            cells: &cells_idx,
            upstream_drops: 1000,
            overloaded: false,
            least_seen: p(3, 127).index(),
        };
        let (lvl, stats) = w.next_level(p(1, 127).index(), 0.05, 0.01);
        assert_eq!(stats.arrivals, 2000);
        assert_eq!(Priority::from_index(lvl), p(2, 4));
        // Without the drops the same window would admit everything.
        assert_eq!(level(&cells, 0, p(1, 127), false), Priority::LOWEST);
    }

    #[test]
    fn threshold_boundary_is_not_overloaded() {
        let t0 = Instant::now();
        let config = AdmissionConfig {
            window_requests: 4,
            ..Default::default()
        };
        let c = AdmissionController::new(&config, t0).unwrap();
        for q in [10, 20, 30, 20] {
            c.record_queuing(t0, Duration::from_millis(q));
        }
        for b in 0..4 {
            c.admit(t0, p(b, 0)).unwrap();
        }
        let report = c.last_window().unwrap();
        assert_eq!(report.average_queuing, Duration::from_millis(20));
        assert!(!report.overloaded, "exactly the threshold is not above it");
        assert_eq!(report.level, Priority::LOWEST);
    }

    /// The spec read literally, over every cell (no skipping): the
    /// reference the sparse walk must match.
    fn reference(cells: &[(u16, u32)], old: u16, overloaded: bool, alpha: f64, beta: f64) -> u16 {
        let mut dense = vec![0u64; CELLS];
        for &(c, n) in cells {
            dense[usize::from(c)] += u64::from(n);
        }
        let n: u64 = dense.iter().sum();
        let n_adm: u64 = dense[..=usize::from(old)].iter().sum();
        let expected = if overloaded {
            (1.0 - alpha) * n_adm as f64
        } else {
            n_adm as f64 + beta * n as f64
        };
        let mut cumulative = 0.0;
        let mut level = ADMIT_ALL;
        for (cell, &count) in dense.iter().enumerate() {
            cumulative += count as f64;
            if cumulative > expected {
                level = (cell as u16).saturating_sub(1);
                break;
            }
        }
        if !overloaded
            && old < ADMIT_ALL
            && let Some(next) = (usize::from(old) + 1..CELLS).find(|&c| dense[c] > 0)
        {
            level = level.max(next as u16);
        }
        level
    }

    proptest::proptest! {
        #[test]
        fn sparse_walk_matches_the_reference(
            raw in proptest::collection::btree_map(0u16..600, 1u32..500, 0..40),
            old in 0u16..700,
            overloaded: bool,
        ) {
            let cells: Vec<(u16, u32)> = raw.into_iter().collect();
            let w = Window { cells: &cells, upstream_drops: 0, overloaded, least_seen: 600 };
            let (got, stats) = w.next_level(old, 0.05, 0.01);
            proptest::prop_assert_eq!(got, reference(&cells, old, overloaded, 0.05, 0.01));
            proptest::prop_assert_eq!(stats.arrivals, cells.iter().map(|c| u64::from(c.1)).sum::<u64>());
        }
    }

    #[test]
    fn window_closes_by_count() {
        let t0 = Instant::now();
        let config = AdmissionConfig {
            window_requests: 10,
            ..Default::default()
        };
        let c = AdmissionController::new(&config, t0).unwrap();
        for _ in 0..9 {
            c.admit(t0, p(1, 1)).unwrap();
        }
        assert!(c.last_window().is_none(), "9 of 10 arrivals: still open");
        c.admit(t0, p(1, 1)).unwrap();
        let report = c.last_window().expect("the 10th arrival closes it");
        assert_eq!(report.arrivals, 10);
        assert_eq!(report.admitted, 10);
        assert!(c.take_report().is_some());
        assert!(c.take_report().is_none(), "a report is taken once");
    }

    #[test]
    fn window_closes_by_time() {
        let t0 = Instant::now();
        let c = AdmissionController::new(&AdmissionConfig::default(), t0).unwrap();
        let s = Duration::from_secs;
        c.admit(t0, p(3, 3)).unwrap();
        c.record_queuing(t0, Duration::from_millis(25));
        assert!(c.poll_window(t0 + Duration::from_millis(999)).is_none());
        // The next arrival after 1 s closes the window first, then is
        // decided by the new level: overloaded, N_adm = 1, N_exp = 0.95, so
        // the level stops just above the one busy cell.
        assert_eq!(c.admit(t0 + s(1), p(3, 3)), Err(p(3, 2)));
        let report = c.last_window().unwrap();
        assert!(report.overloaded);
        assert_eq!(
            (report.arrivals, report.samples),
            (1, 1),
            "the late arrival is in the next window"
        );
        assert_eq!(report.average_queuing, Duration::from_millis(25));
        // The new window runs 1 s from its start: not overloaded (no
        // samples), the refused cell is admitted again by the progress rule.
        assert!(
            c.poll_window(t0 + s(1) + Duration::from_millis(999))
                .is_none()
        );
        let report = c.poll_window(t0 + s(2)).unwrap();
        assert!(!report.overloaded);
        assert_eq!((report.arrivals, report.admitted), (1, 0));
        assert_eq!(c.level(), p(3, 3));
    }

    #[test]
    fn concurrent_arrivals_are_all_counted() {
        let t0 = Instant::now();
        let config = AdmissionConfig {
            window: Duration::from_secs(3600),
            window_requests: AdmissionConfig::MAX_WINDOW_REQUESTS,
            ..Default::default()
        };
        let c = std::sync::Arc::new(AdmissionController::new(&config, t0).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        let user = ((i * 7 + u32::from(t)) % 128) as u8;
                        c.admit(t0, p(t, user)).unwrap();
                        c.record_queuing(t0, Duration::from_micros(u64::from(i % 3)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let report = c.poll_window(t0 + Duration::from_secs(3600)).unwrap();
        assert_eq!(report.arrivals, 200_000);
        assert_eq!(report.samples, 200_000);
        assert_eq!(report.admitted, 200_000);
    }
}
