//! The distributed limiter under load: three instances sharing one key on a
//! real `redis-server` over loopback, with and without leasing, below and
//! above the quota. Reports what the issue asks for — Redis round trips per
//! 1,000 requests and the latency the limiter adds — and how close the
//! admitted rate stays to the global quota.

use std::sync::Arc;
use std::time::Duration;

use floodwall::redis::{RedisConnection, RedisLimiter, Refusal};
use floodwall::token_bucket::Quota;
use floodwall_redis::test_util::RedisServer;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::lab::{Arrivals, Histogram, open_loop};

/// The experiment's settings.
#[derive(Debug, Clone, Copy)]
pub struct RedisLabConfig {
    /// The global quota, requests per second.
    pub rate: u32,
    /// Its burst.
    pub burst: u32,
    /// Limiter instances sharing the key, each with its own connection.
    pub instances: usize,
    /// The lease when leasing is on: most tokens, and their lifetime.
    pub lease: (u32, Duration),
    /// Offered loads as multiples of the quota.
    pub loads: [f64; 2],
    /// How long each scenario offers load.
    pub duration: Duration,
}

impl Default for RedisLabConfig {
    fn default() -> Self {
        Self {
            rate: 10_000,
            burst: 1_000,
            instances: 3,
            lease: (10, Duration::from_millis(100)),
            loads: [0.5, 3.0],
            duration: Duration::from_secs(5),
        }
    }
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct RedisRow {
    /// Whether leasing was on.
    pub leasing: bool,
    /// The lease size the limiter chose (1 when off).
    pub lease_size: u32,
    /// Offered load as a multiple of the quota.
    pub load: f64,
    /// Requests made.
    pub requests: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// What the global bucket allows over the run: `burst + rate × duration`.
    pub allowed: f64,
    /// Script calls Redis answered.
    pub round_trips: u64,
    /// Decisions made from leased tokens.
    pub lease_hits: u64,
    /// Refusals from remembered refusals.
    pub cached: u64,
    /// Calls that failed or timed out (should be 0).
    pub errors: u64,
    /// Time each decision took.
    pub latency: Histogram,
}

impl RedisRow {
    /// Redis round trips per 1,000 requests.
    pub fn round_trips_per_1000(&self) -> f64 {
        1000.0 * self.round_trips as f64 / self.requests.max(1) as f64
    }
}

/// Runs every scenario against one fresh `redis-server` (started and
/// stopped here), each on its own key.
///
/// # Errors
/// If the limiter cannot be configured.
pub async fn run(
    config: RedisLabConfig,
) -> Result<Vec<RedisRow>, Box<dyn std::error::Error + Send + Sync>> {
    let server = RedisServer::start();
    let quota = Quota::per_second(config.rate)?.with_burst(config.burst)?;
    let mut rows = Vec::new();
    for (n, (leasing, load)) in [false, true]
        .into_iter()
        .flat_map(|l| config.loads.map(move |load| (l, load)))
        .enumerate()
    {
        let key: &'static str = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"][n % 8];
        let mut limiters = Vec::new();
        for i in 0..config.instances {
            let mut builder = RedisLimiter::builder(
                RedisConnection::open(&server.url()).expect("a redis URL"),
                quota,
            )
            .name("lab");
            if leasing {
                builder = builder.lease(config.lease.0, config.lease.1);
            }
            let limiter: RedisLimiter<&'static str> = builder.build()?;
            // Connect and load the script outside the measurement.
            let warm: &'static str = ["w0", "w1", "w2", "w3"][i % 4];
            let _ = limiter.acquire(warm, 1).await;
            limiters.push(limiter);
        }
        let before: Vec<_> = limiters.iter().map(RedisLimiter::stats).collect();
        let latency = Arc::new(Mutex::new(Histogram::new()));
        let rate = f64::from(config.rate) * load / config.instances as f64;
        let mut loops = Vec::new();
        for (i, limiter) in limiters.iter().enumerate() {
            let limiter = limiter.clone();
            let latency = latency.clone();
            let arrivals = Arrivals::Poisson {
                rate,
                seed: 2026 + i as u64,
            };
            loops.push(tokio::spawn(async move {
                let handles = open_loop(arrivals, config.duration, move |_, _| {
                    let limiter = limiter.clone();
                    let latency = latency.clone();
                    async move {
                        let started = Instant::now();
                        let decision = limiter.acquire(key, 1).await;
                        latency.lock().record(started.elapsed());
                        decision
                    }
                })
                .await;
                let mut admitted = 0u64;
                let mut requests = 0u64;
                for h in handles {
                    requests += 1;
                    match h.await {
                        Ok(Ok(_)) => admitted += 1,
                        Ok(Err(Refusal::RateLimited { .. })) => {}
                        Ok(Err(other)) => eprintln!("lab redis: unexpected {other:?}"),
                        Err(e) => eprintln!("lab redis: task failed: {e}"),
                    }
                }
                (requests, admitted)
            }));
        }
        let mut requests = 0;
        let mut admitted = 0;
        for l in loops {
            let (r, a) = l.await?;
            requests += r;
            admitted += a;
        }
        let after: Vec<_> = limiters.iter().map(RedisLimiter::stats).collect();
        let delta = |f: fn(&floodwall::redis::RedisStats) -> u64| -> u64 {
            after.iter().zip(&before).map(|(a, b)| f(a) - f(b)).sum()
        };
        let latency = latency.lock().clone();
        rows.push(RedisRow {
            leasing,
            lease_size: limiters[0].lease_size(),
            load,
            requests,
            admitted,
            allowed: f64::from(config.burst)
                + f64::from(config.rate) * config.duration.as_secs_f64(),
            round_trips: delta(|s| s.round_trips),
            lease_hits: delta(|s| s.lease_hits),
            cached: delta(|s| s.cached_refusals),
            errors: delta(|s| s.errors),
            latency,
        });
    }
    Ok(rows)
}

/// The results as a Markdown table.
pub fn table(config: &RedisLabConfig, rows: &[RedisRow]) -> String {
    let mut md = format!(
        "Global quota {}/s, burst {}; {} instances, one connection each, sharing one key; Poisson \
         arrivals for {:?} per scenario; lease: at most {} tokens for {:?}.\n\n\
         | leasing | offered | requests | admitted (of allowed) | round trips / 1,000 req | lease hits | cached refusals | p50 | p99 | p99.9 | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        config.rate,
        config.burst,
        config.instances,
        config.duration,
        config.lease.0,
        config.lease.1,
    );
    for r in rows {
        let ms = |d: Duration| crate::lab::docs::format_ns(d.as_nanos() as f64);
        md.push_str(&format!(
            "| {} | {:.1}× quota | {} | {} ({:.1} %) | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            if r.leasing {
                format!("on (L = {})", r.lease_size)
            } else {
                "off".to_owned()
            },
            r.load,
            r.requests,
            r.admitted,
            100.0 * r.admitted as f64 / r.allowed.min(r.requests as f64).max(1.0),
            r.round_trips_per_1000(),
            r.lease_hits,
            r.cached,
            ms(r.latency.quantile(0.5)),
            ms(r.latency.quantile(0.99)),
            ms(r.latency.quantile(0.999)),
            r.errors,
        ));
    }
    md
}
