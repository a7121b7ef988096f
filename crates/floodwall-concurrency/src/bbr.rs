//! The BBR-style, CPU-aware limiter of go-kratos/aegis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::ConfigError;
use tokio::time::Instant;

use crate::cpu::{CpuUsage, SystemCpu};
use crate::{Algorithm, Estimates, MAX_IN_FLIGHT, Sample};

/// [`Bbr`]'s settings. Defaults are go-kratos/aegis' (`ratelimit/bbr`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BbrConfig {
    /// The span the pass rate and RT are measured over. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// Buckets in the window. Default 100 (100 ms each).
    pub buckets: u32,
    /// The CPU usage, in `[0, 1]`, at and above which the limit engages
    /// (aegis: 800 per mille). Default 0.8.
    pub cpu_threshold: f64,
    /// How long the limit stays engaged after the CPU usage falls below the
    /// threshold. Default 1 s (aegis' constant).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub cooling: Duration,
    /// The limit while not engaged. Default [`MAX_IN_FLIGHT`] (none).
    pub max_limit: u32,
    /// How long a ProbeRTT lasts: while engaged, when the lowest RT of the
    /// window is about to age out of it (nothing as fast has been seen for
    /// a whole window), the limit is halved for this long so that a
    /// standing queue drains and the RT without a queue is measured again.
    /// Default 200 ms (BBR's ProbeRTT duration). Zero turns probing off
    /// (aegis has none).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub probe_rtt: Duration,
}

impl BbrConfig {
    /// The most buckets a window may be kept in.
    pub const MAX_BUCKETS: u32 = 65_536;
}

impl Default for BbrConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            buckets: 100,
            cpu_threshold: 0.8,
            cooling: Duration::from_secs(1),
            max_limit: MAX_IN_FLIGHT,
            probe_rtt: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket since the first sample this slot holds.
    id: u64,
    pass: u64,
    rt_total: Duration,
}

/// BBR's idea applied to requests: the most a server can usefully hold in
/// flight is its best throughput times its best latency (Little's law,
/// BBR's bandwidth-delay product). Over a window of buckets:
///
/// - `max_pass` = the most requests finished in one bucket,
/// - `min_rt` = the lowest mean RTT of a bucket,
/// - `max_in_flight = ⌊max_pass × min_rt × buckets per second⌋`,
///
/// counting only finished buckets (the current one is partial). The limit
/// is engaged only while the CPU usage is at or above `cpu_threshold`, and
/// for `cooling` after it falls below: a request is admitted while at most
/// `max(1, max_in_flight)` others are in flight (aegis: drop when
/// `in_flight > 1 && in_flight > max_in_flight`), so the limit reads
/// `max(1, max_in_flight) + 1`; disengaged, it reads `max_limit`.
///
/// **ProbeRTT** (from BBR, not in aegis): `max_pass × min_rt` is only the
/// capacity if `min_rt` was measured without a queue. A limit above the
/// capacity builds a standing queue below it, every RT then includes the
/// queue, and once the last queue-free bucket ages out of the window the
/// inflated RT holds the limit up for good (any limit is then consistent
/// with Little's law). So, while engaged, when the window's lowest RT is
/// in its oldest bucket (nothing as fast for a whole window), the limit is
/// halved for `probe_rtt` (200 ms), the queue drains and the RT without it
/// is measured again — about 2 % of the time at the defaults.
///
/// Differences from aegis, each deliberate: RTTs are kept in full
/// precision (aegis keeps whole milliseconds and skips requests under
/// 1 ms, so a fast service's `min_rt` reads 1 ms); before the first bucket
/// has finished the limit does not engage (aegis then assumes one request
/// per bucket and 1 ms, which allows a single request in flight; here it
/// does that only once buckets have finished with no request passed in
/// the whole window, e.g. when every request is abandoned); the cooling lasts
/// `cooling` from the last moment the CPU was seen above the threshold
/// (aegis counts it from the first drop of an episode, so after an episode
/// longer than a second it ends at once). `max_pass` and `min_rt` are
/// recomputed once per bucket, as aegis caches them. A drop (a request
/// shed or timed out below, or cancelled under `OnCancel::Drop`) counts
/// neither as a pass nor as an RT — it did no work to the end, and counted,
/// a flood of abandoned requests would read as a huge pass rate — but it
/// still re-reads the CPU and re-evaluates the limit (aegis reads both at
/// every admission; here the limit moves only when a request ends, so
/// without this the limit would stay disengaged while every request is
/// abandoned).
pub struct Bbr {
    config: BbrConfig,
    cpu: Arc<dyn CpuUsage>,
    bucket_len: Duration,
    origin: Option<Instant>,
    ring: Vec<Bucket>,
    /// The bucket the cached statistics were computed in.
    computed_in: Option<u64>,
    max_in_flight: Option<u32>,
    min_rt: Option<Duration>,
    /// The bucket `min_rt` comes from.
    min_rt_bucket: u64,
    probe_until: Option<Instant>,
    engaged_until: Option<Instant>,
    latest: Option<Duration>,
    limit: u32,
}

impl Bbr {
    /// A BBR-style limiter reading the process's CPU usage
    /// ([`SystemCpu::global`]).
    ///
    /// # Errors
    /// As [`with_cpu`](Self::with_cpu).
    pub fn new(config: BbrConfig) -> Result<Self, ConfigError> {
        Self::with_cpu(config, SystemCpu::global())
    }

    /// A BBR-style limiter reading CPU usage from `cpu`.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero window, zero buckets or more buckets than
    /// nanoseconds in the window, a threshold outside `[0, 1]`, or a
    /// `max_limit` of zero.
    pub fn with_cpu(config: BbrConfig, cpu: impl CpuUsage) -> Result<Self, ConfigError> {
        let bucket_len = validate(&config)?;
        Ok(Self {
            bucket_len,
            origin: None,
            ring: vec![Bucket::default(); config.buckets as usize],
            computed_in: None,
            max_in_flight: None,
            min_rt: None,
            min_rt_bucket: 0,
            probe_until: None,
            engaged_until: None,
            latest: None,
            limit: config.max_limit,
            cpu: Arc::new(cpu),
            config,
        })
    }

    /// `⌊max_pass × min_rt × buckets per second⌋` over the finished
    /// buckets, as of the latest sample; `None` before a bucket finished.
    pub fn max_in_flight(&self) -> Option<u32> {
        self.max_in_flight
    }

    /// Whether the limit is engaged (CPU high, or cooling).
    pub fn engaged(&self) -> bool {
        self.engaged_until.is_some()
    }

    /// Recomputes `max_pass` and `min_rt` over the buckets before `current`.
    fn recompute(&mut self, current: u64) {
        let oldest = current.saturating_sub(u64::from(self.config.buckets) - 1);
        let mut max_pass = 0u64;
        let mut min_rt: Option<(Duration, u64)> = None;
        for b in &self.ring {
            if b.pass == 0 || b.id < oldest || b.id >= current {
                continue;
            }
            max_pass = max_pass.max(b.pass);
            let mean = b.rt_total / u32::try_from(b.pass).unwrap_or(u32::MAX);
            if min_rt.is_none_or(|(m, id)| mean < m || (mean == m && b.id > id)) {
                min_rt = Some((mean, b.id));
            }
        }
        self.min_rt_bucket = min_rt.map_or(current, |(_, id)| id);
        let min_rt = min_rt.map(|(rt, _)| rt);
        self.min_rt = min_rt;
        self.max_in_flight = match min_rt {
            Some(rt) => {
                let per_second = 1.0 / self.bucket_len.as_secs_f64();
                Some((max_pass as f64 * rt.as_secs_f64() * per_second).floor() as u32)
            }
            // Buckets have finished but none passed a request: aegis' floor.
            None if current > 0 => Some(0),
            None => None,
        };
    }
}

impl Algorithm for Bbr {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn estimates(&self) -> Estimates {
        Estimates {
            baseline: self.min_rt,
            latest: self.latest,
        }
    }

    fn update(&mut self, now: Instant, sample: &Sample) -> u32 {
        if !sample.dropped {
            self.latest = Some(sample.rtt);
        }
        let origin = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin);
        let id = (elapsed.as_nanos() / self.bucket_len.as_nanos()) as u64;
        let slot = &mut self.ring[(id % u64::from(self.config.buckets)) as usize];
        if slot.id != id || slot.pass == 0 {
            *slot = Bucket {
                id,
                pass: 0,
                rt_total: Duration::ZERO,
            };
        }
        if !sample.dropped {
            slot.pass += 1;
            slot.rt_total += sample.rtt;
        }
        let new_bucket = self.computed_in != Some(id);
        if new_bucket {
            self.computed_in = Some(id);
            self.recompute(id);
        }

        let cpu = self.cpu.usage();
        if cpu >= self.config.cpu_threshold {
            self.engaged_until = Some(now + self.config.cooling);
        } else if self.engaged_until.is_some_and(|until| now > until) {
            self.engaged_until = None;
        }
        if self.probe_until.is_some_and(|until| now >= until) {
            self.probe_until = None;
        }
        let oldest = id.saturating_sub(u64::from(self.config.buckets) - 1);
        if new_bucket
            && self.engaged_until.is_some()
            && self.probe_until.is_none()
            && !self.config.probe_rtt.is_zero()
            && self.min_rt.is_some()
            && self.min_rt_bucket <= oldest
            && id >= u64::from(self.config.buckets)
        {
            self.probe_until = Some(now + self.config.probe_rtt);
        }
        self.limit = match (self.engaged_until, self.max_in_flight) {
            (Some(_), Some(max)) => {
                let max = if self.probe_until.is_some() {
                    max / 2
                } else {
                    max
                };
                (max.max(1) + 1).min(self.config.max_limit)
            }
            _ => self.config.max_limit,
        };
        self.limit
    }
}

impl fmt::Debug for Bbr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bbr")
            .field("config", &self.config)
            .field("cpu", &self.cpu.usage())
            .field("max_in_flight", &self.max_in_flight)
            .field("min_rt", &self.min_rt)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl crate::Reconfigure for Bbr {
    type Config = BbrConfig;

    /// Applies `config` (validated as [`Bbr::with_cpu`] validates): the
    /// limit carries over, capped at the new `max_limit`; a window of
    /// another length or bucket count starts its statistics afresh (the
    /// limit is then recomputed as the new buckets finish); the CPU source
    /// is kept.
    fn reconfigure(&mut self, config: BbrConfig) -> Result<(), ConfigError> {
        let bucket_len = validate(&config)?;
        if config.window != self.config.window || config.buckets != self.config.buckets {
            self.bucket_len = bucket_len;
            self.origin = None;
            self.ring = vec![Bucket::default(); config.buckets as usize];
            self.computed_in = None;
            self.max_in_flight = None;
            self.min_rt = None;
            self.min_rt_bucket = 0;
        }
        self.limit = self.limit.clamp(1, config.max_limit);
        self.config = config;
        Ok(())
    }
}

/// Validates `config` (see [`Bbr::with_cpu`]) and returns its bucket length.
fn validate(config: &BbrConfig) -> Result<Duration, ConfigError> {
    floodwall_core::config::check_duration("window", config.window)?;
    floodwall_core::config::check_duration("cooling", config.cooling)?;
    floodwall_core::config::check_duration("probe_rtt", config.probe_rtt)?;
    if config.buckets == 0 {
        return Err(ConfigError::new("buckets", "must be at least 1"));
    }
    if config.buckets > BbrConfig::MAX_BUCKETS {
        return Err(
            ConfigError::new("buckets", "must be at most 65,536").with_value(config.buckets)
        );
    }
    let bucket_len = config.window / config.buckets;
    if bucket_len.is_zero() {
        return Err(ConfigError::new(
            "window",
            "must be at least one nanosecond per bucket",
        ));
    }
    if !(0.0..=1.0).contains(&config.cpu_threshold) {
        return Err(ConfigError::new("cpu_threshold", "must be in [0, 1]"));
    }
    if config.max_limit == 0 {
        return Err(ConfigError::new("max_limit", "must be at least 1"));
    }
    Ok(bucket_len)
}

#[cfg(test)]
mod tests {
    use crate::testing::{ms, sample};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn dropped(rtt: Duration) -> Sample {
        Sample {
            dropped: true,
            ..sample(rtt)
        }
    }

    /// A CPU gauge the test sets (in per mille).
    fn gauge() -> (Arc<AtomicU64>, impl CpuUsage) {
        let g = Arc::new(AtomicU64::new(0));
        let r = g.clone();
        (g, move || r.load(Ordering::Relaxed) as f64 / 1000.0)
    }

    fn bbr(cpu: impl CpuUsage) -> Bbr {
        Bbr::with_cpu(BbrConfig::default(), cpu).unwrap()
    }

    #[test]
    fn max_in_flight_is_best_pass_rate_times_best_rt_over_finished_buckets() {
        let (_, cpu) = gauge();
        let mut b = bbr(cpu);
        let t0 = Instant::now();
        // Bucket 0: 30 requests of 20 ms; bucket 1: 50 of 40 ms.
        for _ in 0..30 {
            b.update(t0, &sample(ms(20)));
        }
        assert_eq!(b.max_in_flight(), None, "no finished bucket yet");
        for _ in 0..50 {
            b.update(t0 + ms(150), &sample(ms(40)));
        }
        // Finished: bucket 0 only → 30 × 0.020 s × 10/s = 6.
        assert_eq!(b.max_in_flight(), Some(6));
        b.update(t0 + ms(250), &sample(ms(40)));
        // Buckets 0 and 1 → max pass 50, min RT 20 ms: 50 × 0.02 × 10 = 10.
        assert_eq!(b.max_in_flight(), Some(10));
        assert_eq!(b.estimates().baseline, Some(ms(20)));
    }

    #[test]
    fn engages_only_with_the_cpu_high_and_cools_down_for_a_second() {
        let (cpu_level, cpu) = gauge();
        let mut b = bbr(cpu);
        let t0 = Instant::now();
        for _ in 0..50 {
            b.update(t0, &sample(ms(20)));
        }
        // CPU low: no limit.
        assert_eq!(b.update(t0 + ms(100), &sample(ms(20))), MAX_IN_FLIGHT);
        assert!(!b.engaged());
        cpu_level.store(850, Ordering::Relaxed);
        // 50 × 0.02 × 10 = 10 → admit while ≤ 10 others are in flight: 11.
        assert_eq!(b.update(t0 + ms(110), &sample(ms(20))), 11);
        cpu_level.store(700, Ordering::Relaxed);
        assert_eq!(b.update(t0 + ms(1_100), &sample(ms(20))), 11, "cooling");
        assert_eq!(
            b.update(t0 + ms(1_120), &sample(ms(20))),
            MAX_IN_FLIGHT,
            "cooled"
        );
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let (cpu_level, cpu) = gauge();
        cpu_level.store(900, Ordering::Relaxed);
        let mut b = bbr(cpu);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.update(t0, &sample(ms(10)));
        }
        b.update(t0 + ms(100), &sample(ms(50)));
        assert_eq!(b.max_in_flight(), Some(10), "100 × 0.01 × 10");
        // 10 s later bucket 0 is out of the window; bucket 1 (1 × 50 ms) remains
        // until it ages out too.
        b.update(t0 + ms(10_050), &sample(ms(50)));
        assert_eq!(b.max_in_flight(), Some(0), "1 × 0.05 × 10 = 0.5 → 0");
        assert_eq!(b.limit(), 2, "admits while at most 1 is in flight");
    }

    #[test]
    fn drops_are_neither_passes_nor_rts_but_re_evaluate_the_limit() {
        let (cpu_level, cpu) = gauge();
        let mut b = bbr(cpu);
        let t0 = Instant::now();
        for _ in 0..50 {
            b.update(t0, &sample(ms(20)));
        }
        // 500 abandoned requests in bucket 1 add no pass and no RT...
        for _ in 0..500 {
            b.update(t0 + ms(150), &dropped(ms(5)));
        }
        // ...and one in bucket 2 finds the CPU high and engages the limit.
        cpu_level.store(900, Ordering::Relaxed);
        assert_eq!(
            b.update(t0 + ms(250), &dropped(ms(5))),
            11,
            "50 × 0.02 × 10 + 1"
        );
        assert_eq!(b.estimates().baseline, Some(ms(20)));
        assert_eq!(b.estimates().latest, Some(ms(20)));
    }

    #[test]
    fn a_window_without_a_pass_engages_at_the_floor() {
        let (cpu_level, cpu) = gauge();
        cpu_level.store(900, Ordering::Relaxed);
        let mut b = bbr(cpu);
        let t0 = Instant::now();
        let drop = dropped(ms(100));
        assert_eq!(b.update(t0, &drop), MAX_IN_FLIGHT, "no finished bucket yet");
        assert_eq!(b.update(t0 + ms(100), &drop), 2, "one in flight, as aegis");
    }

    #[test]
    fn bad_settings_are_refused() {
        let d = BbrConfig::default();
        let bad = |c| Bbr::with_cpu(c, || 0.0).unwrap_err().field();
        assert_eq!(bad(BbrConfig { buckets: 0, ..d }), "buckets");
        assert_eq!(
            bad(BbrConfig {
                cpu_threshold: 80.0,
                ..d
            }),
            "cpu_threshold"
        );
        assert_eq!(
            bad(BbrConfig {
                window: Duration::from_nanos(5),
                ..d
            }),
            "window"
        );
    }
}
