//! CPU usage for the BBR-style limiter: a smoothed fraction of the CPU the
//! process may use, cgroup-aware.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A source of CPU usage for [`Bbr`](crate::Bbr): the fraction, in
/// `[0, 1]`, of the CPU this process may use that it uses now (smoothed).
///
/// [`SystemCpu`] measures it; closures `Fn() -> f64` implement it too
/// (tests, simulations, or a gauge of your own).
pub trait CpuUsage: Send + Sync + 'static {
    /// The usage now, in `[0, 1]`.
    fn usage(&self) -> f64;
}

impl<F: Fn() -> f64 + Send + Sync + 'static> CpuUsage for F {
    fn usage(&self) -> f64 {
        self()
    }
}

/// How often [`SystemCpu`] samples (go-kratos/aegis' rate).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// How much of the smoothed usage each *lower* sample keeps (go-kratos/aegis'
/// decay): `usage = usage × 0.95 + sample × 0.05`, a time constant of
/// about 10 s at one sample per 500 ms. A higher sample is taken at once
/// (see [`smooth`]).
pub const DECAY: f64 = 0.95;

/// One smoothing step of [`SystemCpu`]: the usage after `sample`, given the
/// usage before it (`None` before the first sample).
///
/// Up at once, down slowly: a sample above the usage replaces it; a sample
/// below it is averaged in with [`DECAY`], as aegis averages every sample.
/// aegis' symmetric average takes 32 samples (16 s) to go from idle to its
/// 80 % threshold after a step to full load, and 9 s from 50 %: a server
/// that cannot interrupt its work queues 16 s of a 3× overload before
/// [`Bbr`](crate::Bbr) engages, and every request behind that queue is
/// abandoned. Taken at once, the first sample after the step (≤ 1 s)
/// engages it; the slow way down keeps it engaged through the dips it
/// causes itself (ProbeRTT, a limit below the workers), as aegis intends.
///
/// ```
/// use floodwall_concurrency::cpu::{DECAY, smooth};
///
/// assert_eq!(smooth(None, 0.3), 0.3);
/// assert_eq!(smooth(Some(0.3), 0.9), 0.9, "up at once");
/// let down = smooth(Some(0.9), 0.5);
/// assert!((down - (0.9 * DECAY + 0.5 * (1.0 - DECAY))).abs() < 1e-12);
/// ```
#[must_use]
pub fn smooth(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(usage) if sample < usage => usage * DECAY + sample * (1.0 - DECAY),
        _ => sample,
    }
}

/// The process's CPU usage, measured by one background thread
/// (`floodwall-cpu`, started on first use, shared by every limiter) every
/// [`SAMPLE_INTERVAL`] and smoothed by [`smooth`] (up at once, down with
/// [`DECAY`]).
///
/// What is measured, first that works:
/// 1. cgroup v2: the cgroup's `cpu.stat` `usage_usec`, against its
///    `cpu.max` quota;
/// 2. cgroup v1: `cpuacct.usage`, against `cpu.cfs_quota_us /
///    cpu.cfs_period_us`;
/// 3. elsewhere on Linux: the process's own `utime + stime` from
///    `/proc/self/stat` (at 100 ticks per second).
///
/// The capacity is the quota if one is set, else (and at most) the CPUs the
/// process may run on (`std::thread::available_parallelism`). Where none of
/// the sources exists (not Linux), the usage reads 0 and a BBR limiter
/// never engages.
///
/// Unlike go-kratos, whose average starts at 0 and follows a rise as slowly
/// as a fall (16 s from idle to 80 % after a step to full load), the usage
/// starts from the first measurement and rises to a higher one at once.
#[derive(Clone)]
pub struct SystemCpu {
    value: Arc<AtomicU64>,
}

impl SystemCpu {
    /// The process-wide sampler (started on the first call).
    pub fn global() -> Self {
        static GLOBAL: OnceLock<Arc<AtomicU64>> = OnceLock::new();
        let value = GLOBAL.get_or_init(|| {
            let value = Arc::new(AtomicU64::new(0f64.to_bits()));
            let shared = value.clone();
            // If the thread cannot start, the usage stays 0: the limiter
            // then never engages, as documented.
            let _ = std::thread::Builder::new()
                .name("floodwall-cpu".into())
                .spawn(move || sample_forever(&shared));
            value
        });
        Self {
            value: value.clone(),
        }
    }
}

impl CpuUsage for SystemCpu {
    fn usage(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for SystemCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemCpu")
            .field("usage", &self.usage())
            .finish()
    }
}

fn sample_forever(value: &AtomicU64) {
    let Some(source) = Source::detect() else {
        return;
    };
    let capacity = source.capacity();
    // The sampler's wall clock: a measurement, not a decision, so the
    // system clock is the right one here.
    let mut last = (std::time::Instant::now(), source.cpu_time());
    let mut smoothed: Option<f64> = None;
    loop {
        std::thread::sleep(SAMPLE_INTERVAL);
        let now = (std::time::Instant::now(), source.cpu_time());
        if let (Some(before), Some(after)) = (last.1, now.1) {
            let wall = now.0.duration_since(last.0).as_secs_f64();
            let used = after.saturating_sub(before).as_secs_f64();
            if wall > 0.0 {
                let sample = (used / (wall * capacity)).clamp(0.0, 1.0);
                let next = smooth(smoothed, sample);
                smoothed = Some(next);
                value.store(next.to_bits(), Ordering::Relaxed);
            }
        }
        last = now;
    }
}

/// Where the CPU time comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    V2 { dir: PathBuf },
    V1 { cpuacct: PathBuf, cpu: PathBuf },
    Process,
}

impl Source {
    fn detect() -> Option<Self> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| cgroup_v2_path(&s).map(|p| root.join(p.trim_start_matches('/'))));
            let dir = own
                .filter(|d| d.join("cpu.stat").exists())
                .unwrap_or_else(|| root.to_path_buf());
            if dir.join("cpu.stat").exists() {
                return Some(Source::V2 { dir });
            }
        }
        for (cpuacct, cpu) in [
            ("cpuacct", "cpu"),
            ("cpu,cpuacct", "cpu,cpuacct"),
            ("cpuacct,cpu", "cpuacct,cpu"),
        ] {
            let cpuacct = root.join(cpuacct);
            if cpuacct.join("cpuacct.usage").exists() {
                return Some(Source::V1 {
                    cpuacct,
                    cpu: root.join(cpu),
                });
            }
        }
        Path::new("/proc/self/stat")
            .exists()
            .then_some(Source::Process)
    }

    /// CPU time used so far.
    fn cpu_time(&self) -> Option<Duration> {
        match self {
            Source::V2 { dir } => std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|s| cpu_stat_usage(&s)),
            Source::V1 { cpuacct, .. } => std::fs::read_to_string(cpuacct.join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Duration::from_nanos),
            Source::Process => std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| process_cpu_time(&s)),
        }
    }

    /// CPUs' worth of time per second the process may use.
    fn capacity(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let quota = match self {
            Source::V2 { dir } => std::fs::read_to_string(dir.join("cpu.max"))
                .ok()
                .and_then(|s| cpu_max(&s)),
            Source::V1 { cpu, .. } => {
                let read = |f: &str| {
                    std::fs::read_to_string(cpu.join(f))
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                };
                match (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                    _ => None,
                }
            }
            Source::Process => None,
        };
        quota.map_or(cpus, |q| q.min(cpus)).max(0.01)
    }
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::` line).
fn cgroup_v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
}

/// `usage_usec` of a cgroup v2 `cpu.stat`.
fn cpu_stat_usage(cpu_stat: &str) -> Option<Duration> {
    cpu_stat.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some("usage_usec"))
            .then(|| parts.next()?.parse().ok().map(Duration::from_micros))
            .flatten()
    })
}

/// CPUs' worth of quota in a cgroup v2 `cpu.max` (`"max 100000"`: none).
fn cpu_max(cpu_max: &str) -> Option<f64> {
    let mut parts = cpu_max.split_whitespace();
    let quota = parts.next()?.parse::<f64>().ok()?;
    let period = parts.next()?.parse::<f64>().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `utime + stime` of `/proc/self/stat`, at 100 ticks per second.
fn process_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')' come field 3 (state) onwards; utime and stime are 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cgroup_and_proc_files() {
        assert_eq!(
            cgroup_v2_path("12:cpu:/old\n0::/system.slice/app.service\n"),
            Some("/system.slice/app.service")
        );
        assert_eq!(cgroup_v2_path("3:cpuacct:/x\n"), None);
        assert_eq!(
            cpu_stat_usage("usage_usec 2500000\nuser_usec 2000000\n"),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(cpu_stat_usage("user_usec 1\n"), None);
        assert_eq!(cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(cpu_max("max 100000\n"), None);
        let stat = "4242 (my (odd) app) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(process_cpu_time(stat), Some(Duration::from_secs(3)));
        assert_eq!(process_cpu_time("garbage"), None);
    }

    #[test]
    fn smoothing_rises_at_once_and_falls_with_aegis_decay() {
        // From idle, a step to full load is past the 80 % threshold at the
        // first sample (aegis' average needs 32).
        assert_eq!(smooth(Some(0.0), 1.0), 1.0);
        let mut aegis = 0.0;
        let samples = std::iter::from_fn(|| {
            aegis = aegis * DECAY + 1.0 - DECAY;
            Some(aegis)
        });
        assert_eq!(samples.take_while(|&u| u < 0.8).count() + 1, 32);
        // Down: 0.95 per sample toward the new level; a dip to 60 % for
        // two samples (a ProbeRTT) keeps a full usage above 80 %.
        let dipped = smooth(Some(smooth(Some(1.0), 0.6)), 0.6);
        assert!((dipped - (0.6 + 0.4 * DECAY * DECAY)).abs() < 1e-12);
        assert!(dipped > 0.8);
    }

    #[test]
    fn the_global_sampler_reports_a_usage_in_range() {
        let cpu = SystemCpu::global();
        let u = cpu.usage();
        assert!((0.0..=1.0).contains(&u), "{u}");
        #[cfg(target_os = "linux")]
        assert!(Source::detect().is_some(), "some source on Linux");
    }
}
