//! The floodwall demo: the reference gateway and room service on loopback,
//! driven through a scripted scenario, protected and then unprotected.
//!
//! Phases: normal load at about half the room service's capacity; a
//! hot-room burst at several times capacity (plus a bot hammering from one
//! IP); the room service failing every call for two seconds, then
//! recovering; normal load again. Prints goodput, refusals by reason and
//! latency per phase, the breaker's transitions, and what the room service
//! shed.
//!
//! Run: `cargo run -p floodwall-examples --bin demo`
//! (`-- --protected` or `-- --unprotected` for one run only).

use std::sync::Arc;
use std::time::Duration;

use floodwall::core::BoxError;
use floodwall::core::random::SplitMix;
use floodwall_examples::deploy::Deployment;
use floodwall_examples::gateway::upstream::Upstream;
use floodwall_examples::load::{Load, PhaseStats, Shot, phase_stats, render, viewer};
use floodwall_examples::room::RoomConfig;

/// Viewers give up after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Background load: viewers entering and looking at rooms.
const NORMAL_RPS: f64 = 60.0;
/// Extra viewers piling into the hot room during the burst.
const HOT_RPS: f64 = 340.0;
/// A bot polling one room from a single IP during the burst.
const BOT_RPS: f64 = 50.0;

const PHASES: [(&str, Duration); 4] = [
    ("normal", Duration::from_secs(3)),
    ("hot-room burst", Duration::from_secs(4)),
    ("room failing", Duration::from_secs(4)),
    ("recovered", Duration::from_secs(4)),
];

fn normal(rng: &SplitMix, i: u64) -> Shot {
    let room = 2 + rng.next_u64() % 500;
    let shot = if i.is_multiple_of(3) {
        Shot::get(format!("/api/room?id={room}&fields=title,viewers,live"))
    } else {
        Shot::post(format!("/api/room/enter?id={room}"))
    };
    viewer(rng, shot)
}

/// The hot room's reads during the burst (its viewers' field list).
const HOT_QUERY: &str = "id=1&fields=title,viewers,live";

/// The `/api/room` route's hot keys and cache hits in a gateway `/state`,
/// once room 1 is among them.
fn hot_room(state: &serde_json::Value) -> Option<(String, u64)> {
    let route = state["routes"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == "/api/room")?;
    let hot = &route["hot"];
    let keys: Vec<&str> = hot["keys"]
        .as_array()?
        .iter()
        .filter_map(|k| k["key"].as_str())
        .collect();
    keys.iter()
        .any(|k| k.starts_with("id=1&") || *k == "id=1")
        .then(|| (keys.join(", "), hot["hits"].as_u64().unwrap_or(0)))
}

struct RunReport {
    rows: Vec<(&'static str, Duration, PhaseStats)>,
}

async fn run(protected: bool) -> Result<RunReport, BoxError> {
    let room_config = RoomConfig::default();
    let capacity = room_config.capacity();
    let d = Deployment::start(protected, room_config, |_| {}).await?;
    let title = if protected {
        "PROTECTED: every floodwall layer on"
    } else {
        "UNPROTECTED: same scenario, no floodwall layers"
    };
    println!("\n=== {title}");
    println!(
        "    gateway {} (admin {}), room service {} with {:.0} req/s capacity",
        d.url(),
        d.admin_url(),
        d.room.url(),
        capacity
    );
    let load = Load::new(d.url(), CLIENT_TIMEOUT);
    let rng = Arc::new(SplitMix::new(if protected { 1 } else { 2 }));
    let mut room_before = d.room.state().tally;
    let mut room_rows = Vec::new();
    let mut detected = None;
    let mut hot_report = None;
    let mut gift_report = None;
    for (phase, (name, len)) in PHASES.iter().enumerate() {
        let r1 = rng.clone();
        let normal_stream = load.run(phase, NORMAL_RPS, *len, move |i| normal(&r1, i));
        match *name {
            "hot-room burst" => {
                let r2 = rng.clone();
                // The hot room's viewers enter it, and one in three looks at
                // it: those reads are what the gateway's hot cache answers.
                // One in six sends the anchor a gift: aggregated per anchor.
                let hot = load.run(phase, HOT_RPS, *len, move |i| {
                    let shot = if i % 6 == 5 {
                        Shot::post("/api/gift?anchor=1")
                    } else if i.is_multiple_of(3) {
                        Shot::get(format!("/api/room?{HOT_QUERY}"))
                    } else {
                        Shot::post("/api/room/enter?id=1")
                    };
                    viewer(&r2, shot)
                });
                let (writes_before, gifts_before) = (d.gifts.writes(), d.gifts.sent());
                let bot = load.run(phase, BOT_RPS, *len, |_| {
                    Shot::get("/api/room?id=1")
                        .header("x-user-id", "bot-7")
                        .header("x-forwarded-for", "203.0.113.7")
                });
                let gateway = d.gateway.shared().clone();
                let watch = async move {
                    let start = std::time::Instant::now();
                    while start.elapsed() < *len {
                        if hot_room(&gateway.runtime().state()).is_some() {
                            return Some(start.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    None
                };
                let (_, _, _, seen) = tokio::join!(normal_stream, hot, bot, watch);
                detected = seen;
                hot_report = hot_room(&d.gateway.shared().runtime().state());
                gift_report = Some((
                    d.gifts.sent() - gifts_before,
                    d.gifts.writes() - writes_before,
                ));
            }
            "room failing" => {
                d.room.knobs().set_error_rate(1.0);
                let heal = async {
                    tokio::time::sleep(*len / 2).await;
                    d.room.knobs().set_error_rate(0.0);
                };
                tokio::join!(normal_stream, heal);
            }
            _ => normal_stream.await,
        }
        let room_now = d.room.state().tally;
        room_rows.push((*name, room_now - room_before));
        room_before = room_now;
    }
    load.drain().await;
    let samples = load.samples();
    let rows: Vec<_> = PHASES
        .iter()
        .enumerate()
        .map(|(i, (name, len))| (*name, *len, phase_stats(&samples, i, *len)))
        .collect();
    print!("{}", render(&rows));
    println!(
        "    room service outcomes per phase (served ok / shed by queue / dropped by priority / deadline / failed):"
    );
    for (name, t) in &room_rows {
        println!(
            "      {name:<16} {:>5} / {:>5} / {:>5} / {:>5} / {:>5}",
            t.ok, t.overloaded, t.prioritized, t.deadline_exceeded, t.failed
        );
    }
    if let Some((keys, hits)) = hot_report {
        println!(
            "    hot rooms: {keys} detected {} after the burst began; {hits} room reads answered from the gateway's hot cache (room service calls saved)",
            detected.map_or_else(|| "(late)".to_owned(), |t| format!("{} ms", t.as_millis()))
        );
    }
    if let Some((gifts, writes)) = gift_report
        && protected
    {
        println!(
            "    gifts to the hot room's anchor: {gifts} stored in {writes} writes to the gift store (aggregated per 20 ms)"
        );
    }
    let state = d.room.state();
    println!(
        "    room service: {} jobs skipped by the pool (deadline already passed), {} still queued at the end",
        state.skipped_expired, state.pool_waiting
    );
    if let Some(Upstream::Grpc(g)) = d.gateway.shared().runtime().upstream("room") {
        let t = g.transitions();
        if t.is_empty() {
            println!(
                "    breaker toward the room service: no transitions (no breaker, or never opened)"
            );
        } else {
            let list: Vec<String> = t
                .iter()
                .map(|t| format!("{:.1}s {}→{}", t.at_ms as f64 / 1000.0, t.from, t.to))
                .collect();
            println!("    breaker toward the room service: {}", list.join(", "));
        }
    }
    Ok(RunReport { rows })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    floodwall_examples::prom::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (protected, unprotected) = match args.first().map(String::as_str) {
        None => (true, true),
        Some("--protected") => (true, false),
        Some("--unprotected") => (false, true),
        Some(other) => {
            eprintln!("unknown argument {other:?}; use --protected or --unprotected");
            std::process::exit(2);
        }
    };
    let capacity = RoomConfig::default().capacity();
    println!(
        "floodwall demo: {NORMAL_RPS:.0} req/s of viewers, then a hot-room burst of +{HOT_RPS:.0} req/s \
         and a {BOT_RPS:.0} req/s bot, then the room service fails for 2 s and recovers.\n\
         The room service can serve {capacity:.0} req/s. Viewers give up after {} ms; goodput = 2xx answers in time.",
        CLIENT_TIMEOUT.as_millis()
    );
    let p = if protected {
        Some(run(true).await?)
    } else {
        None
    };
    let u = if unprotected {
        Some(run(false).await?)
    } else {
        None
    };
    let burst = |r: &RunReport| r.rows[1].2.goodput;
    let after = |r: &RunReport| r.rows[3].2.goodput;
    println!();
    if let Some(p) = &p {
        println!(
            "protected:   hot-room burst goodput {:.0} req/s ({:.0} % of capacity), after recovery {:.0} req/s",
            burst(p),
            100.0 * burst(p) / capacity,
            after(p)
        );
    }
    if let Some(u) = &u {
        println!(
            "unprotected: hot-room burst goodput {:.0} req/s ({:.0} % of capacity), after recovery {:.0} req/s",
            burst(u),
            100.0 * burst(u) / capacity,
            after(u)
        );
    }
    Ok(())
}
