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
    /// The configuration's numbers: `window_requests` is read by every
    /// arrival; the others only where a window closes, under `closing`,
    /// which a reconfiguration also holds.
    window_ns: AtomicU64,
    window_requests: AtomicU64,
    threshold_us: AtomicU64,
    alpha: AtomicU64,
    beta: AtomicU64,
    config: Mutex<AdmissionConfig>,
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
            window_ns: AtomicU64::new(window_ns),
            window_requests: AtomicU64::new(u64::from(config.window_requests)),
            threshold_us: AtomicU64::new(micros(config.threshold)),
            alpha: AtomicU64::new(config.alpha.to_bits()),
            beta: AtomicU64::new(config.beta.to_bits()),
            config: Mutex::new(*config),
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
        if self.arrivals.fetch_add(1, Relaxed) + 1 >= self.window_requests.load(Relaxed) {
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

    /// Applies `config` from `now` on, validated as [`new`](Self::new)
    /// validates (a refused configuration changes nothing). The admission
    /// level, the histogram and the counts of the window in progress are
    /// kept: α, β and the threshold apply when that window closes, and a
    /// new `window_requests` to its arrivals so far. A new window length
    /// moves the current window's end to its start plus the new length
    /// (if that is already past, the next arrival closes it).
    ///
    /// # Errors
    /// As [`AdmissionConfig::validate`].
    pub fn reconfigure(&self, config: &AdmissionConfig, now: Instant) -> Result<(), ConfigError> {
        config.validate()?;
        let window_ns = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX / 4);
        let _closing = self.closing.lock();
        let mut current = self.config.lock();
        let old_window = self.window_ns.swap(window_ns, Relaxed);
        if old_window != window_ns {
            let start = self.window_end.load(Relaxed).saturating_sub(old_window);
            self.window_end
                .store(start.saturating_add(window_ns), Relaxed);
        }
        self.window_requests
            .store(u64::from(config.window_requests), Relaxed);
        self.threshold_us.store(micros(config.threshold), Relaxed);
        self.alpha.store(config.alpha.to_bits(), Relaxed);
        self.beta.store(config.beta.to_bits(), Relaxed);
        *current = *config;
        let _ = now;
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> AdmissionConfig {
        *self.config.lock()
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
        let due = self.arrivals.load(Relaxed) >= self.window_requests.load(Relaxed)
            || t >= self.window_end.load(Relaxed)
            || self.samples.load(Relaxed) >> SAMPLE_SHIFT >= SAMPLE_SOFT_CAP;
        if !due {
            return None;
        }
        self.window_end
            .store(t.saturating_add(self.window_ns.load(Relaxed)), Relaxed);
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
            overloaded: average_us > self.threshold_us.load(Relaxed),
            least_seen: *least_seen,
        };
        let alpha = f64::from_bits(self.alpha.load(Relaxed));
        let beta = f64::from_bits(self.beta.load(Relaxed));
        let (level, stats) = window.next_level(previous, alpha, beta);
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
mod tests;
