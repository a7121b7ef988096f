//! Decision latency of the Redis limiter against a running server, for
//! before/after comparisons of its Redis client in one run:
//!
//! `redis_latency <host:port> [samples]` prints one line per mode,
//! `mode p50_us p99_us mean_us`:
//! - `serial`: one decision at a time (one round trip each, no leasing);
//! - `concurrent-32`: 32 tasks deciding at once on one connection (the
//!   client's pipelining), latency per decision.
//!
//! Build two binaries (before and after a change) and run them alternately
//! against one `redis-server`; `benches/redis-latency.sh` does that.

use std::sync::Arc;
use std::time::Instant;

use floodwall::redis::RedisLimiter;
use floodwall::token_bucket::Quota;
use hdrhistogram::Histogram;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .expect("usage: redis_latency <host:port> [samples]");
    let samples: u64 = args.next().map_or(20_000, |s| s.parse().expect("samples"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let limiter = limiter(&addr);
        let limiter: RedisLimiter<u64> = limiter;
        // Warm up: load the script, open the connection.
        for _ in 0..1_000 {
            limiter.acquire(1, 1).await.expect("admitted");
        }
        let mut serial = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..samples {
            let t = Instant::now();
            limiter.acquire(1, 1).await.expect("admitted");
            serial
                .record(t.elapsed().as_nanos() as u64)
                .expect("in range");
        }
        report("serial", &serial);

        let limiter = Arc::new(limiter);
        let mut tasks = Vec::new();
        for task in 0..32u64 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                for _ in 0..samples / 32 {
                    let t = Instant::now();
                    limiter.acquire(100 + task, 1).await.expect("admitted");
                    h.record(t.elapsed().as_nanos() as u64).expect("in range");
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new(3).expect("histogram");
        for task in tasks {
            all.add(task.await.expect("task")).expect("same bounds");
        }
        report("concurrent-32", &all);
    });
}

fn quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .and_then(|q| q.with_burst(1_000_000_000))
        .expect("a valid quota")
}

fn limiter(addr: &str) -> RedisLimiter<u64> {
    let client =
        floodwall::redis::RedisConnection::open(&format!("redis://{addr}/")).expect("a redis URL");
    RedisLimiter::builder(client, quota())
        .name("latency")
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .expect("config")
}

fn report(mode: &str, h: &Histogram<u64>) {
    println!(
        "{mode} {:.1} {:.1} {:.1}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.mean() / 1000.0
    );
}
