//! The soak test: the reference gateway and room service under steady mixed
//! load for about a minute and a half, with faults injected one after
//! another — the room service failing every call, the room service slowed
//! down, the room service stopped and restarted, Redis (which the gateway's
//! global per-user limit uses) killed and restarted — each fault lasting a
//! few seconds, then cleared, in two cycles.
//!
//! It checks and prints (a Markdown table, for docs/reliability.md):
//! - no panic anywhere in the process;
//! - every request got an HTTP answer (a response or a clean error status),
//!   none a dropped connection or a client-side timeout;
//! - resident memory grew by less than 10 MB from the end of the warm-up
//!   to the end;
//! - after each fault clears, goodput is back to 90 % of the warm-up's
//!   within 2 s.
//!
//! Exits non-zero if any check fails. Not part of CI (it takes minutes).
//!
//! Run: `cargo run --release -p floodwall-examples --bin soak`
//! (`-- --cycles N` for more rounds of faults).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall::core::BoxError;
use floodwall::core::random::SplitMix;
use floodwall::redis::{Quota, RedisLimiterConfig};
use floodwall_examples::deploy::Deployment;
use floodwall_examples::load::{Load, Sample, Shot, viewer};
use floodwall_examples::room::RoomConfig;
use floodwall_redis::test_util::RedisServer;

/// Viewers give up after this long (well above every route's deadline).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Load on the room routes: 60 % of the room service's capacity.
const ROOM_RPS: f64 = 60.0;
/// Load on the static route (no room service involved).
const STATIC_RPS: f64 = 20.0;
const WARM_UP: Duration = Duration::from_secs(10);
const FAULT: Duration = Duration::from_secs(3);
const RECOVERY: Duration = Duration::from_secs(6);
/// Goodput counts as recovered at this fraction of the warm-up's.
const RECOVERED: f64 = 0.9;
/// ... within this long after the fault clears.
const RECOVERY_TARGET: Duration = Duration::from_secs(2);
/// Resident memory may grow at most this much after the warm-up.
const RSS_BUDGET_KB: u64 = 10 * 1024;
/// Goodput is measured in buckets of this length, by send time.
const BUCKET: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ErrorBurst,
    LatencySpike,
    RoomStopped,
    RedisKilled,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::ErrorBurst,
        Fault::LatencySpike,
        Fault::RoomStopped,
        Fault::RedisKilled,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::ErrorBurst => "room service fails every call",
            Fault::LatencySpike => "room service +300 ms per call",
            Fault::RoomStopped => "room service stopped, then restarted",
            Fault::RedisKilled => "redis killed (SIGKILL), then restarted",
        }
    }
}

/// One injected fault, as it happened.
struct Injected {
    fault: Fault,
    cycle: usize,
    start: Duration,
    clear: Duration,
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn room_shot(rng: &SplitMix, i: u64) -> Shot {
    let room = 2 + rng.next_u64() % 500;
    let shot = if i.is_multiple_of(2) {
        Shot::get(format!("/api/room?id={room}&fields=title,viewers,live"))
    } else {
        Shot::post(format!("/api/room/enter?id={room}"))
    };
    viewer(rng, shot)
}

/// Successful answers per bucket, by send time, over `[from, to)`.
fn goodput(samples: &[Sample], from: Duration, to: Duration) -> Vec<usize> {
    let n = ((to - from).as_secs_f64() / BUCKET.as_secs_f64()).ceil() as usize;
    let mut buckets = vec![0; n];
    for s in samples {
        if s.at >= from && s.at < to && s.status.is_some_and(|c| (200..300).contains(&c)) {
            let i = ((s.at - from).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
            if let Some(b) = buckets.get_mut(i) {
                *b += 1;
            }
        }
    }
    buckets
}

/// How long after `clear` goodput reached `target` per bucket and held it
/// for a second; `None` if it never did within the recovery window.
fn recovery(samples: &[Sample], clear: Duration, target: f64) -> Option<Duration> {
    let buckets = goodput(samples, clear, clear + RECOVERY);
    let hold = (1.0 / BUCKET.as_secs_f64()).round() as usize;
    (0..buckets.len().saturating_sub(hold)).find_map(|i| {
        buckets[i..i + hold]
            .iter()
            .all(|&b| b as f64 >= target)
            .then(|| BUCKET * u32::try_from(i).unwrap_or(u32::MAX))
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cycles: usize = std::env::args()
        .skip_while(|a| a != "--cycles")
        .nth(1)
        .map_or(Ok(2), |n| n.parse())?;
    let panics = Arc::new(AtomicUsize::new(0));
    {
        let panics = panics.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    }

    let mut redis = RedisServer::start();
    let mut global = RedisLimiterConfig::new(Quota::per_second(5)?.with_burst(10)?);
    global.name = "get_room_user".to_owned();
    let redis_addr = redis.addr();
    let mut d = Deployment::start(true, RoomConfig::default(), |c| {
        c.gateway.redis = Some(format!("redis://{redis_addr}/"));
        if let Some(r) = c
            .routes
            .iter_mut()
            .find(|r| r.path.as_deref() == Some("/api/room"))
        {
            r.global_limit = Some(global);
        }
    })
    .await?;
    println!(
        "soak: gateway {}, room service {} ({:.0} req/s capacity), redis {}; {} cycles of {} faults",
        d.url(),
        d.room.url(),
        RoomConfig::default().capacity(),
        redis.addr(),
        cycles,
        Fault::ALL.len()
    );

    let load = Load::new(d.url(), CLIENT_TIMEOUT);
    let total = WARM_UP + (FAULT + RECOVERY) * u32::try_from(cycles * Fault::ALL.len())?;
    let rng = Arc::new(SplitMix::new(7));
    let room_load = {
        let load = load.clone();
        let rng = rng.clone();
        tokio::spawn(async move {
            load.run(0, ROOM_RPS, total, move |i| room_shot(&rng, i))
                .await;
        })
    };
    let static_load = {
        let load = load.clone();
        let rng = rng.clone();
        tokio::spawn(async move {
            load.run(0, STATIC_RPS, total, move |i| {
                viewer(&rng, Shot::get(format!("/static/app-{}.js", i % 50)))
            })
            .await;
        })
    };

    tokio::time::sleep(WARM_UP).await;
    let rss_after_warm_up = rss_kb();
    let mut rss_max = rss_after_warm_up;
    let mut injected = Vec::new();
    for cycle in 0..cycles {
        for fault in Fault::ALL {
            let start = load.elapsed();
            match fault {
                Fault::ErrorBurst => d.room.knobs().set_error_rate(1.0),
                Fault::LatencySpike => d.room.knobs().set_added_latency(Duration::from_millis(300)),
                Fault::RoomStopped => d.room.stop(),
                Fault::RedisKilled => redis.kill(),
            }
            tokio::time::sleep(FAULT).await;
            match fault {
                Fault::ErrorBurst => d.room.knobs().set_error_rate(0.0),
                Fault::LatencySpike => d.room.knobs().set_added_latency(Duration::ZERO),
                Fault::RoomStopped => d.room.restart().await?,
                Fault::RedisKilled => redis.restart(),
            }
            let clear = load.elapsed();
            println!(
                "soak: cycle {} {:<40} {:>6.1}s – {:>6.1}s",
                cycle + 1,
                fault.describe(),
                start.as_secs_f64(),
                clear.as_secs_f64()
            );
            injected.push(Injected {
                fault,
                cycle,
                start,
                clear,
            });
            let until = tokio::time::Instant::now() + RECOVERY;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(500)).await;
                rss_max = rss_max.max(rss_kb());
            }
        }
    }
    room_load.await?;
    static_load.await?;
    load.drain().await;
    let rss_end = rss_kb();
    rss_max = rss_max.max(rss_end);
    let samples = load.samples();

    // The warm-up's steady goodput, skipping its first seconds.
    let steady = goodput(&samples, WARM_UP / 2, WARM_UP);
    let baseline = steady.iter().sum::<usize>() as f64 / steady.len() as f64;
    let target = baseline * RECOVERED;

    let answered = samples.iter().filter(|s| s.status.is_some()).count();
    let unanswered = samples.len() - answered;
    let ok = samples
        .iter()
        .filter(|s| s.status.is_some_and(|c| (200..300).contains(&c)))
        .count();
    let mut table = String::new();
    table.push_str(&format!(
        "Load: {ROOM_RPS:.0} req/s on the room routes (60 % of the room service's capacity) + \
         {STATIC_RPS:.0} req/s static, constant rate, {} s; each fault {} s, then {} s to recover; \
         {cycles} cycles. Goodput in {} ms buckets by send time; warm-up goodput {:.1} per bucket.\n\n",
        total.as_secs(),
        FAULT.as_secs(),
        RECOVERY.as_secs(),
        BUCKET.as_millis(),
        baseline
    ));
    table.push_str("| cycle | fault | goodput during (of warm-up) | recovered after clearing | within 2 s |\n|---|---|---|---|---|\n");
    let mut all_recovered = true;
    for i in &injected {
        let during = goodput(&samples, i.start, i.clear);
        let during_rate =
            during.iter().sum::<usize>() as f64 / during.len().max(1) as f64 / baseline.max(1e-9);
        let rec = recovery(&samples, i.clear, target);
        let ok = rec.is_some_and(|r| r <= RECOVERY_TARGET);
        all_recovered &= ok;
        table.push_str(&format!(
            "| {} | {} | {:.0} % | {} | {} |\n",
            i.cycle + 1,
            i.fault.describe(),
            during_rate * 100.0,
            rec.map_or("not within 6 s".to_owned(), |r| format!(
                "{:.2} s",
                r.as_secs_f64()
            )),
            if ok { "yes" } else { "**no**" }
        ));
    }
    let state = d.gateway.shared().runtime().state();
    let global = state["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["route"] == "/api/room"))
        .map(|r| r["global_limit"].clone())
        .unwrap_or_default();
    let rss_growth = rss_end.saturating_sub(rss_after_warm_up);
    let panics = panics.load(Ordering::SeqCst);
    table.push_str(&format!(
        "\n| check | result |\n|---|---|\n\
         | requests | {} sent, {} answered ({} ok, {} clean error statuses), {} without an answer |\n\
         | panics | {} |\n\
         | resident memory | {:.1} MB after warm-up, {:.1} MB at the end (+{:.2} MB; peak {:.1} MB; budget +10 MB) |\n\
         | goodput recovered within 2 s | {} of {} faults |\n\
         | global per-user limit (Redis) | {} round trips, {} errors, {} decided by the local fallback, health at the end: {} |\n",
        samples.len(),
        answered,
        ok,
        answered - ok,
        unanswered,
        panics,
        rss_after_warm_up as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_growth as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        injected.iter().filter(|i| recovery(&samples, i.clear, target).is_some_and(|r| r <= RECOVERY_TARGET)).count(),
        injected.len(),
        global["round_trips"],
        global["errors"],
        global["fallback_decisions"],
        global["health"].as_str().unwrap_or("?"),
    ));
    println!("\n{table}");
    let passed = panics == 0 && unanswered == 0 && rss_growth < RSS_BUDGET_KB && all_recovered;
    println!("soak: {}", if passed { "PASSED" } else { "FAILED" });
    drop(d);
    if passed {
        Ok(())
    } else {
        Err("the soak test failed a check (see the table)".into())
    }
}
