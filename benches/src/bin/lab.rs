//! The overload lab's command line.
//!
//! ```text
//! cargo run --release -p floodwall-benches --bin lab -- sim [--quick] [--out DIR]
//! cargo run --release -p floodwall-benches --bin lab -- concurrency [--quick] [--out DIR]
//! cargo run --release -p floodwall-benches --bin lab -- realtime [--quick] [--write-docs]
//! cargo run --release -p floodwall-benches --bin lab -- realtime-concurrency [--quick] [--write-docs]
//! cargo run --release -p floodwall-benches --bin lab -- e2e [--quick] [--only bare|gateway|layers-off]
//! cargo run --release -p floodwall-benches --bin lab -- redis [--quick]
//! cargo run --release -p floodwall-benches --bin lab -- tail [--quick]
//! cargo run --release -p floodwall-benches --bin lab -- hotkey [--quick]
//! cargo run --release -p floodwall-benches --bin lab -- report
//! ```
//!
//! `sim` runs every virtual-time scenario (each stack at every offered load,
//! without and with client retries) and writes `overload.csv`, the SVG
//! charts and `overload.md` (the Markdown tables) under `DIR` (default
//! `target/lab`). `--quick` shortens the measured time (for a first
//! look; the report uses the defaults).
//!
//! `concurrency` runs the same scenarios for the adaptive concurrency
//! limits (every floodwall algorithm, tower-resilience's AIMD and Vegas,
//! tower's fixed limit) and writes `concurrency.csv`, `concurrency-*.svg`
//! and `concurrency.md`; its tables add the limit each one kept.
//!
//! `sim` and `concurrency` take `--stacks a,b,…` (names as in the tables)
//! and `--loads 0.5,2,…` (multiples of capacity) to run fewer scenarios.
//!
//! `realtime` runs the stacks of `sim` (and `realtime-concurrency` those of
//! `concurrency`) in real time, the network hop a real HTTP/1.1 connection
//! over loopback (see `floodwall_benches::lab::realtime`), at 0.5× to 10×
//! capacity, without and with client retries, one scenario at a time: short
//! runs (2 s of warm-up, 3 s measured; the DAGOR stacks above capacity
//! warm up until their admission level can have settled, 10–35 s), about
//! 13 and 10 minutes. `--quick`: 1 s of warm-up and 2 s measured for every
//! scenario, about 5 and 6 minutes. They take `--stacks` and `--loads`
//! too, and write `realtime.csv`, `realtime-*.svg` and `realtime.md` (or
//! `realtime-concurrency.*`) under `DIR`; with `--write-docs`, also the
//! plots under `docs/img/lab/` and the `realtime` (or
//! `realtime-concurrency`) region of docs/performance.md.
//!
//! `e2e` compares, in real time over loopback, the reference gateway with
//! every layer on, the same gateway with its layers off, a bare hyper proxy
//! and (when installed) nginx, toward one upstream (see
//! `floodwall_benches::lab::e2e`).
//!
//! `redis` runs the distributed limiter against a real `redis-server` on
//! loopback: three instances sharing one key, leasing off and on, below and
//! above the quota (see `floodwall_benches::lab::redis`).
//!
//! `tail` runs the tail-latency scenarios: hedging against a 1 % tail at
//! 10× the median (floodwall, tower's `Hedge`, tower-resilience's hedge),
//! hedging at twice the dependency's capacity, and a thundering herd of
//! 10,000 callers through coalescing (see `floodwall_benches::lab::tail`).
//!
//! `tables` only refills docs/performance.md's criterion tables from
//! criterion's last results (after running one bench).
//!
//! `report` runs all four and rewrites docs/performance.md: every
//! `bench-table` block from criterion's last results (so run
//! `cargo bench -p floodwall-benches` first: `benches/report.sh` does both),
//! the lab's sections, the machine line, and the plots under `docs/img/lab`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use floodwall_benches::lab::e2e::{E2eConfig, Proxy, compare, table as e2e_table};
use floodwall_benches::lab::redis::RedisLabConfig;
use floodwall_benches::lab::{
    RealtimeConfig, Row, Scenario, SimConfig, Stack, docs, plot, realtime, report, run_all,
};

/// Offered loads, as multiples of capacity.
const LOADS: [f64; 7] = [0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0];

/// Offered loads of the real-time runs, as multiples of capacity.
const REALTIME_LOADS: [f64; 6] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0];

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    command: String,
    quick: bool,
    out: PathBuf,
    only: Option<Proxy>,
    stacks: Option<Vec<Stack>>,
    loads: Option<Vec<f64>>,
    write_docs: bool,
}

fn parse() -> Result<Args, Error> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".into());
    let mut parsed = Args {
        command,
        quick: false,
        out: PathBuf::from("target/lab"),
        only: None,
        stacks: None,
        loads: None,
        write_docs: false,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => parsed.quick = true,
            "--out" => parsed.out = args.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                let name = args.next().ok_or("--only needs a proxy")?;
                parsed.only = Some(Proxy::parse(&name).ok_or_else(|| {
                    format!("--only {name:?}: expected bare, gateway or layers-off")
                })?);
            }
            "--stacks" => {
                let list = args
                    .next()
                    .ok_or("--stacks needs a list: tower-shed,fw-full,…")?;
                let stacks = list
                    .split(',')
                    .map(|name| {
                        Stack::from_name(name.trim())
                            .ok_or_else(|| format!("--stacks: no stack named {name:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                parsed.stacks = Some(stacks);
            }
            "--loads" => {
                let list = args.next().ok_or("--loads needs a list: 0.5,2,10")?;
                let loads = list
                    .split(',')
                    .map(|load| match load.trim().parse::<f64>() {
                        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                        _ => Err(format!("--loads: {load:?} is not a positive number")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                parsed.loads = Some(loads);
            }
            "--write-docs" => parsed.write_docs = true,
            other => return Err(format!("unknown argument {other:?} (try `lab help`)").into()),
        }
    }
    Ok(parsed)
}

/// Every stack of `stacks` at every load of `loads`, without then with
/// client retries.
fn scenarios(stacks: &[Stack], loads: &[f64]) -> Vec<Scenario> {
    [false, true]
        .into_iter()
        .flat_map(move |retries| {
            stacks.iter().flat_map(move |&stack| {
                loads.iter().map(move |&load| Scenario {
                    stack,
                    load,
                    retries,
                })
            })
        })
        .collect()
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Runs every stack of `stacks` at every load, without and with client
/// retries; writes `{prefix}overload.csv` (or `concurrency.csv`), the
/// charts and the Markdown tables under `--out`.
fn lab(
    args: &Args,
    stacks: &[Stack],
    prefix: &str,
    tables: impl Fn(&[Row], bool, &str) -> String,
) -> Result<(SimConfig, Vec<Row>, String), Error> {
    let mut config = SimConfig::default();
    if args.quick {
        config.measure = std::time::Duration::from_secs(2);
    }
    let scenarios = scenarios(
        args.stacks.as_deref().unwrap_or(stacks),
        args.loads.as_deref().unwrap_or(&LOADS),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    eprintln!(
        "lab: {} scenarios, capacity {:.0}/s ({} workers × {:?}), deadline {:?}, {:?} warm-up + {:?} measured, seed {}",
        scenarios.len(),
        config.capacity(),
        config.workers,
        config.service_time,
        config.deadline,
        config.warmup,
        config.measure,
        config.seed
    );
    let rows = run_all(&config, &scenarios, threads)?;
    eprintln!("lab: simulated in {:.1} s", started.elapsed().as_secs_f64());

    let stem = if prefix.is_empty() {
        "overload"
    } else {
        "concurrency"
    };
    write(&args.out.join(format!("{stem}.csv")), &report::csv(&rows))?;
    for (name, chart) in report::charts(&rows, prefix) {
        write(&args.out.join(format!("{name}.svg")), &plot::svg(&chart))?;
    }
    let md = tables_md(&rows, &tables);
    write(&args.out.join(format!("{stem}.md")), &md)?;
    eprintln!("lab: wrote {}", args.out.display());
    Ok((config, rows, md))
}

/// `tables` without and with client retries.
fn tables_md(rows: &[Row], tables: &impl Fn(&[Row], bool, &str) -> String) -> String {
    let mut md = String::new();
    for (retries, what) in [(false, "no retries"), (true, "clients retrying")] {
        md.push_str(&tables(rows, retries, what));
    }
    md
}

/// The main comparison's tables: goodput and p99 latency per stack and
/// load, and every metric of every stack at each load of `detail` that was
/// run.
fn overload_tables(rows: &[Row], retries: bool, what: &str, detail: &[f64]) -> String {
    let mut md = format!("\nGoodput, % of capacity ({what}):\n\n");
    md.push_str(&report::goodput_table(rows, retries));
    md.push_str(&format!("\np99 latency of successes, ms ({what}):\n\n"));
    md.push_str(&report::latency_table(rows, retries));
    for &load in detail {
        if rows.iter().any(|r| r.scenario.load == load) {
            md.push_str(&format!("\nAt {load}× capacity ({what}):\n\n"));
            md.push_str(&report::detail_table(rows, load, retries));
        }
    }
    md
}

/// The adaptive limits' tables: goodput, p99 latency and the limit kept per
/// stack and load, and every metric at 5× capacity.
fn concurrency_tables(rows: &[Row], retries: bool, what: &str) -> String {
    let mut md = format!("\nGoodput, % of capacity ({what}):\n\n");
    md.push_str(&report::goodput_table(rows, retries));
    md.push_str(&format!("\np99 latency of successes, ms ({what}):\n\n"));
    md.push_str(&report::latency_table(rows, retries));
    md.push_str(&format!(
        "\nThe limit over the measured time, mean (min–max) ({what}):\n\n"
    ));
    md.push_str(&report::limit_table(rows, retries));
    if rows.iter().any(|r| r.scenario.load == 5.0) {
        md.push_str(&format!("\nAt 5× capacity ({what}):\n\n"));
        md.push_str(&report::detail_table(rows, 5.0, retries));
    }
    md
}

/// Every stack of the main comparison.
fn sim(args: &Args) -> Result<(SimConfig, Vec<Row>, String), Error> {
    lab(args, &Stack::ALL, "", |rows, retries, what| {
        overload_tables(rows, retries, what, &[2.0, 5.0])
    })
}

/// The adaptive concurrency limits, next to tower's fixed one.
fn concurrency(args: &Args) -> Result<(SimConfig, Vec<Row>, String), Error> {
    lab(
        args,
        &Stack::CONCURRENCY,
        "concurrency-",
        concurrency_tables,
    )
}

/// Runs every stack of `stacks` (or `--stacks`) at every real-time load (or
/// `--loads`), without and with client retries, in real time over
/// loopback, one scenario at a time; writes `{stem}.csv`, the
/// `{stem}-*.svg` charts and `{stem}.md` under `--out`, and with
/// `--write-docs` the charts under `docs/img/lab/` and the `{stem}` region
/// of docs/performance.md. Returns the Markdown tables.
fn realtime_lab(
    args: &Args,
    stacks: &[Stack],
    stem: &str,
    tables: impl Fn(&[Row], bool, &str) -> String,
) -> Result<String, Error> {
    let config = if args.quick {
        RealtimeConfig::quick()
    } else {
        RealtimeConfig::default()
    };
    let stacks = args.stacks.as_deref().unwrap_or(stacks);
    let loads = args.loads.as_deref().unwrap_or(&REALTIME_LOADS);
    let scenarios = scenarios(stacks, loads);
    let planned: std::time::Duration = scenarios.iter().map(|&sc| config.length(sc)).sum();
    let sim = &config.sim;
    eprintln!(
        "lab {stem}: {} scenarios in real time over loopback, about {:.1} min: capacity {:.0}/s ({} workers × {:?}), deadline {:?}, {:?} warm-up{} + {:?} measured, seed {}",
        scenarios.len(),
        planned.as_secs_f64() / 60.0,
        sim.capacity(),
        sim.workers,
        sim.service_time,
        sim.deadline,
        sim.warmup,
        if config.settle_dagor {
            " (DAGOR stacks above capacity: until their level can have settled)"
        } else {
            ""
        },
        sim.measure,
        sim.seed
    );
    let measured = realtime::measured_capacity(sim)?;
    eprintln!(
        "lab {stem}: the server saturated does {measured:.0} requests/s in real time ({:.1} % of nominal)",
        measured / sim.capacity() * 100.0
    );
    let started = Instant::now();
    let mut rows = Vec::with_capacity(scenarios.len());
    for (i, &sc) in scenarios.iter().enumerate() {
        let row = realtime::run(&config, sc)?;
        eprintln!(
            "lab {stem}: {}/{} {} at {}×{}: goodput {:.1} % ({:.1} % of measured), p99 {:.0} ms, classes {}",
            i + 1,
            scenarios.len(),
            sc.stack,
            sc.load,
            if sc.retries { ", clients retrying" } else { "" },
            row.goodput() * 100.0,
            row.goodput() * sim.capacity() / measured * 100.0,
            row.latency.quantile(0.99).as_secs_f64() * 1e3,
            (0..row.classes.len())
                .map(|c| format!("{:.0} %", row.class_success(c) * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push(row);
    }
    eprintln!(
        "lab {stem}: ran in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );

    let prefix = format!("{stem}-");
    let mut charts = report::charts(&rows, &prefix);
    for (_, chart) in &mut charts {
        chart.title.push_str(", real time");
    }
    for (name, chart) in &charts {
        write(&args.out.join(format!("{name}.svg")), &plot::svg(chart))?;
    }
    write(&args.out.join(format!("{stem}.csv")), &report::csv(&rows))?;
    let md = format!(
        "{}{}",
        measured_md(&rows, sim.capacity(), measured),
        tables_md(&rows, &tables)
    );
    write(&args.out.join(format!("{stem}.md")), &md)?;
    eprintln!("lab {stem}: wrote {}", args.out.display());

    if args.write_docs {
        let root = root();
        let img = root.join("docs/img/lab");
        for (name, chart) in &charts {
            write(&img.join(format!("{name}.svg")), &plot::svg(chart))?;
        }
        let doc_path = root.join("docs/performance.md");
        let doc = std::fs::read_to_string(&doc_path)?;
        let text = realtime_docs(&config, stacks, loads, &scenarios, &prefix, &md);
        std::fs::write(&doc_path, docs::replace_region(&doc, stem, &text)?)?;
        eprintln!(
            "lab {stem}: rewrote the {stem} region of {} and its plots under {}",
            doc_path.display(),
            img.display()
        );
    }
    Ok(md)
}

/// Goodput against the capacity the server showed saturated
/// ([`realtime::measured_capacity`]): one row per stack, one column per
/// load, "without retries / with retries" in each cell.
fn measured_md(rows: &[Row], nominal: f64, measured: f64) -> String {
    let mut loads: Vec<f64> = rows.iter().map(|r| r.scenario.load).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let mut stacks: Vec<Stack> = Vec::new();
    for r in rows {
        if !stacks.contains(&r.scenario.stack) {
            stacks.push(r.scenario.stack);
        }
    }
    let cell = |stack: Stack, load: f64, retries: bool| {
        rows.iter()
            .find(|r| {
                r.scenario.stack == stack
                    && r.scenario.load == load
                    && r.scenario.retries == retries
            })
            .map_or("–".to_owned(), |r| {
                format!("{:.1}", r.goodput() * nominal / measured * 100.0)
            })
    };
    let mut md = format!(
        "\nThe server saturated (its workers always busy, no layer, no network: \
         `floodwall_benches::lab::realtime::measured_capacity`) served {measured:.0} requests/s, \
         {:.1} % of the nominal {nominal:.0}/s: tokio's timer wakes a worker on the millisecond tick \
         after its job's end. Goodput as % of that measured capacity, without / with retries:\n\n\
         | stack |",
        measured / nominal * 100.0
    );
    for load in &loads {
        md.push_str(&format!(" {load}× |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(loads.len()));
    md.push('\n');
    for stack in stacks {
        md.push_str(&format!("| `{}` |", stack.name()));
        for &load in &loads {
            md.push_str(&format!(
                " {} / {} |",
                cell(stack, load, false),
                cell(stack, load, true)
            ));
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// The `realtime` (or `realtime-concurrency`) region of docs/performance.md:
/// the machine, the configuration, the stacks, the plots and the tables.
fn realtime_docs(
    config: &RealtimeConfig,
    stacks: &[Stack],
    loads: &[f64],
    scenarios: &[Scenario],
    prefix: &str,
    md: &str,
) -> String {
    let sim = &config.sim;
    let settling: Vec<std::time::Duration> = scenarios
        .iter()
        .map(|&sc| config.warmup(sc))
        .filter(|&w| w > sim.warmup)
        .collect();
    let dagor = match (settling.iter().min(), settling.iter().max()) {
        (Some(lo), Some(hi)) => format!(
            " (the stacks with DAGOR admission above capacity: {:.0}–{:.0} s, until their admission \
             level can have settled from admitting everything)",
            lo.as_secs_f64(),
            hi.as_secs_f64()
        ),
        _ => String::new(),
    };
    let mut text = format!(
        "Run on: {} Real time: the server stack behind a hyper HTTP/1.1 server on 127.0.0.1, on its own thread and \
         current-thread runtime; the clients and the open-loop generator on another, sending headers-only requests \
         through a pooled hyper-util client (a client that gives up closes its connection, and the server drops the \
         request). Server and clients as in virtual time: {} workers × {:?} ± {:.0} % (capacity {:.0} requests/s), \
         uninterruptible; Poisson arrivals, {} business classes in equal shares, deadline {:?}; with retries, naive \
         clients retry at once up to {} attempts in all, each timing out after {:?}; seed {}. {:?} of warm-up{}, then \
         {:?} measured, one scenario at a time. Offered loads {}× capacity. The numbers vary from run to run.\n\n\
         | stack | what it is |\n|---|---|\n",
        docs::machine(),
        sim.workers,
        sim.service_time,
        sim.jitter * 100.0,
        sim.capacity(),
        sim.classes,
        sim.deadline,
        sim.max_attempts,
        sim.try_timeout,
        sim.seed,
        sim.warmup,
        dagor,
        sim.measure,
        loads
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("×, ")
    );
    for stack in stacks {
        text.push_str(&format!("| `{}` | {} |\n", stack.name(), stack.describe()));
    }
    text.push_str(&format!(
        "\n![Goodput vs offered load, real time](img/lab/{prefix}goodput.svg)\n\n\
         ![Goodput vs offered load, clients retrying, real time](img/lab/{prefix}goodput-retries.svg)\n\n\
         ![p99 latency vs offered load, real time](img/lab/{prefix}latency.svg)\n\n\
         ![p99 latency vs offered load, clients retrying, real time](img/lab/{prefix}latency-retries.svg)\n"
    ));
    text.push_str(md);
    text
}

fn e2e(args: &Args) -> Result<String, Error> {
    let mut config = E2eConfig {
        only: args.only,
        ..E2eConfig::default()
    };
    if args.quick {
        config.rounds = 2;
        config.round = std::time::Duration::from_secs(1);
        config.latency_run = std::time::Duration::from_secs(1);
    }
    eprintln!(
        "lab e2e: {} connections, {} rounds of {:?} per proxy, then open loop at {:.0} % of the bare proxy's rate",
        config.connections,
        config.rounds,
        config.round,
        config.latency_load * 100.0
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(compare(config))?;
    if let Some(only) = args.only {
        // One proxy alone, for a profiler: its closed-loop rate only; the
        // comparison's files are left as they are.
        let r = &results[0];
        let busy = E2eConfig::WARM_UP + config.round * config.rounds as u32;
        return Ok(format!(
            "{only:?}: {:.0} req/s (rounds {}), {} errors; about {:.0} requests in {:.1} s of load\n",
            r.median_rps(),
            r.rounds
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.errors,
            r.median_rps() * busy.as_secs_f64(),
            busy.as_secs_f64(),
        ));
    }
    let md = e2e_table(&results);
    write(&args.out.join("e2e.md"), &md)?;
    let mut csv = String::from("proxy,round,rps\n");
    for r in &results {
        for (i, rps) in r.rounds.iter().enumerate() {
            csv.push_str(&format!("{},{i},{rps:.1}\n", r.name));
        }
    }
    write(&args.out.join("e2e.csv"), &csv)?;
    Ok(md)
}

fn redis(args: &Args) -> Result<String, Error> {
    let mut config = RedisLabConfig::default();
    if args.quick {
        config.duration = std::time::Duration::from_secs(1);
    }
    eprintln!(
        "lab redis: {} instances, quota {}/s, {:?} per scenario",
        config.instances, config.rate, config.duration
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(floodwall_benches::lab::redis::run(config))?;
    let md = floodwall_benches::lab::redis::table(&config, &rows);
    write(&args.out.join("redis.md"), &md)?;
    Ok(md)
}

/// The workspace root (the benches crate's parent).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tables() -> Result<(), Error> {
    let root = root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let doc_path = root.join("docs/performance.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let medians = docs::criterion_medians(&target.join("criterion"));
    std::fs::write(&doc_path, docs::fill_bench_tables(&doc, &medians)?)?;
    eprintln!(
        "lab: refilled the criterion tables of {}",
        doc_path.display()
    );
    Ok(())
}

fn report(args: &Args) -> Result<(), Error> {
    let root = root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let doc_path = root.join("docs/performance.md");
    let mut doc = std::fs::read_to_string(&doc_path)?;
    // Criterion first: fail fast if its results are missing.
    let medians = docs::criterion_medians(&target.join("criterion"));
    doc = docs::fill_bench_tables(&doc, &medians)?;
    doc = overload_regions(args, &doc)?;
    let e2e_md = e2e(args)?;
    doc = docs::replace_region(&doc, "e2e", &e2e_md)?;
    let redis_md = redis(args)?;
    doc = docs::replace_region(&doc, "redis", &redis_md)?;
    doc = docs::replace_region(&doc, "machine", &docs::machine())?;
    std::fs::write(&doc_path, doc)?;
    eprintln!("lab: rewrote {}", doc_path.display());
    Ok(())
}

/// The virtual-time lab's regions of docs/performance.md (`overload`,
/// `concurrency`) and their plots under docs/img/lab, from fresh runs.
fn overload_regions(args: &Args, doc: &str) -> Result<String, Error> {
    let root = root();
    let mut doc = doc.to_owned();
    let (config, rows, md) = sim(args)?;
    let (_, concurrency_rows, concurrency_md) = concurrency(args)?;
    let img = root.join("docs/img/lab");
    std::fs::create_dir_all(&img)?;
    let plots = report::charts(&rows, "")
        .into_iter()
        .chain(report::charts(&concurrency_rows, "concurrency-"));
    for (stem, _) in plots {
        std::fs::copy(
            args.out.join(format!("{stem}.svg")),
            img.join(format!("{stem}.svg")),
        )?;
    }
    let mut overload = format!(
        "Server: {} workers × {:?} ± {:.0} % (capacity {:.0} requests/s), uninterruptible. Clients: Poisson \
         arrivals, {} business classes in equal shares, deadline {:?}; with retries, naive clients retry at \
         once up to {} attempts in all, each timing out after {:?}. {:?} of warm-up, then {:?} measured; seed {}. \
         Offered loads {}× capacity.\n\n| stack | what it is |\n|---|---|\n",
        config.workers,
        config.service_time,
        config.jitter * 100.0,
        config.capacity(),
        config.classes,
        config.deadline,
        config.max_attempts,
        config.try_timeout,
        config.warmup,
        config.measure,
        config.seed,
        LOADS.map(|l| l.to_string()).join("×, ")
    );
    for stack in Stack::ALL {
        overload.push_str(&format!("| `{}` | {} |\n", stack.name(), stack.describe()));
    }
    overload.push_str(
        "\n![Goodput vs offered load](img/lab/goodput.svg)\n\n\
         ![Goodput vs offered load, clients retrying](img/lab/goodput-retries.svg)\n\n\
         ![p99 latency vs offered load](img/lab/latency.svg)\n\n\
         ![p99 latency vs offered load, clients retrying](img/lab/latency-retries.svg)\n",
    );
    overload.push_str(&md);
    doc = docs::replace_region(&doc, "overload", &overload)?;
    let mut adaptive = String::from(
        "Same server, clients and seed as above. tower-resilience times calls with \
         `std::time::Instant`, which the paused clock does not move: in this virtual-time lab its \
         limiters see every call take the few microseconds the simulation spends on it, so their \
         rows show them without a latency signal (a real-time run would differ), and they are \
         the only rows that vary from run to run.\n\n\
         | stack | what it is |\n|---|---|\n",
    );
    for stack in Stack::CONCURRENCY {
        adaptive.push_str(&format!("| `{}` | {} |\n", stack.name(), stack.describe()));
    }
    adaptive.push_str(
        "\n![Goodput vs offered load, adaptive limits](img/lab/concurrency-goodput.svg)\n\n\
         ![p99 latency vs offered load, adaptive limits](img/lab/concurrency-latency.svg)\n",
    );
    adaptive.push_str(&concurrency_md);
    doc = docs::replace_region(&doc, "concurrency", &adaptive)?;
    Ok(doc)
}

/// `lab overload-docs`: only the virtual-time lab's regions and plots of
/// docs/performance.md (no criterion, e2e or Redis runs).
fn overload_docs(args: &Args) -> Result<(), Error> {
    let doc_path = root().join("docs/performance.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    std::fs::write(&doc_path, overload_regions(args, &doc)?)?;
    eprintln!(
        "lab: rewrote the overload and concurrency regions of {}",
        doc_path.display()
    );
    Ok(())
}

/// The tail-latency scenarios (issue 28): hedging with a 1 % tail at 10×
/// the median, hedging at twice the dependency's capacity, and a
/// thundering herd through coalescing; their Markdown.
fn tail(args: &Args) -> Result<String, Error> {
    use floodwall_benches::lab::tail::{
        HedgeLab, HedgeStack, hedge_scenario, hedge_table, herd_scenarios, herd_table,
    };
    let mut lab = HedgeLab::default();
    if args.quick {
        lab.requests = 8_000;
    }
    let started = Instant::now();
    let rows: Vec<_> = HedgeStack::ALL
        .iter()
        .map(|&s| hedge_scenario(lab, s, None))
        .collect();
    // Overload: 10 workers at a 100 ms median serve about 100 requests/s;
    // one request every 5 ms offers 200/s.
    let overload = HedgeLab {
        requests: if args.quick { 2_000 } else { 4_000 },
        gap: std::time::Duration::from_millis(5),
        warm_up: 1_000,
        ..lab
    };
    let overloaded: Vec<_> = HedgeStack::ALL
        .iter()
        .map(|&s| hedge_scenario(overload, s, Some(10)))
        .collect();
    let herd = herd_scenarios(10_000);
    eprintln!(
        "lab: tail scenarios in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(format!(
        "Dependency: median {:?}, each attempt uniform in [0.8, 1.2] × median or, with probability {} %, 10 × median; {} requests one every {:?} (open loop), the first {} not measured (the percentile delays need a full {:?} period first); seed {}. Fixed delays are the distribution's p95, {:.2} ms.

{}
**Overload**: the same dependency with 10 workers (about 100 requests/s, uninterruptible: a hedge that lost still takes its worker), offered one request every {:?} (twice its capacity), {} requests, the first {} not measured. Extra attempts are the load hedging added while requests arrived.

{}
**Thundering herd**: 10,000 callers of one hot key within 10 ms (10 batches 1 ms apart, real time, one thread); the backend answers after 50 ms.

{}",
        lab.median,
        lab.tail * 100.0,
        lab.requests,
        lab.gap,
        lab.warm_up,
        lab.period,
        lab.seed,
        lab.p95().as_secs_f64() * 1e3,
        hedge_table(&rows),
        overload.gap,
        overload.requests,
        overload.warm_up,
        hedge_table(&overloaded),
        herd_table(&herd)
    ))
}

/// HeavyKeeper as its memory grows (docs/hotkey.md): precision and count
/// error of the top-100 on a Zipf(1.0) stream against exact counts, and the
/// slowest report of a new hot key; the table, and the two plots under
/// `docs/img/lab/`.
fn hotkey(args: &Args) -> Result<String, Error> {
    use floodwall_benches::lab::hotkey::{charts, memory_sweep, table};
    let items = if args.quick { 1_000_000 } else { 10_000_000 };
    let started = Instant::now();
    let rows = memory_sweep(items, 1_000_000);
    eprintln!(
        "lab: hotkey sweep in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (stem, chart) in charts(&rows) {
        let svg = floodwall_benches::lab::plot::svg(&chart);
        write(&args.out.join(format!("{stem}.svg")), &svg)?;
        write(&root.join(format!("docs/img/lab/{stem}.svg")), &svg)?;
    }
    Ok(format!(
        "Zipf(1.0), {items} items over 1,000,000 keys, top-100, seed 2026; detection on the shifting stream of \
         `floodwall_hotkey::testing::slowest_detection` (3 periods, default fading):\n\n{}",
        table(&rows)
    ))
}

fn main() {
    let result = parse().and_then(|args| match args.command.as_str() {
        _ if args.only.is_some() && args.command != "e2e" => Err("--only applies to e2e".into()),
        _ if args.write_docs && !args.command.starts_with("realtime") => {
            Err("--write-docs applies to realtime and realtime-concurrency (report rewrites the rest)".into())
        }
        _ if (args.stacks.is_some() || args.loads.is_some())
            && !matches!(
                args.command.as_str(),
                "sim" | "concurrency" | "realtime" | "realtime-concurrency"
            ) =>
        {
            Err("--stacks and --loads apply to sim, concurrency, realtime and realtime-concurrency".into())
        }
        "sim" => sim(&args).map(|(_, _, md)| println!("{md}")),
        "concurrency" => concurrency(&args).map(|(_, _, md)| println!("{md}")),
        "realtime" => realtime_lab(&args, &Stack::ALL, "realtime", |rows, retries, what| {
            overload_tables(rows, retries, what, &[2.0, 5.0, 10.0])
        })
        .map(|md| println!("{md}")),
        "realtime-concurrency" => realtime_lab(
            &args,
            &Stack::CONCURRENCY,
            "realtime-concurrency",
            concurrency_tables,
        )
        .map(|md| println!("{md}")),
        "e2e" => e2e(&args).map(|md| println!("{md}")),
        "redis" => redis(&args).map(|md| println!("{md}")),
        "tail" => tail(&args).map(|md| println!("{md}")),
        "hotkey" => hotkey(&args).map(|md| println!("{md}")),
        "tables" => tables(),
        "report" => report(&args),
        "overload-docs" => overload_docs(&args),
        "help" | "--help" | "-h" => {
            println!(
                "usage: lab (sim | concurrency | e2e | redis | tail | hotkey | tables | overload-docs | report | realtime | realtime-concurrency) [--quick] [--out DIR]\n       \
                 lab (sim | concurrency) [--quick] [--out DIR] [--stacks a,b,…] [--loads 0.5,2,…]\n       \
                 lab (realtime | realtime-concurrency) [--quick] [--out DIR] [--stacks a,b,…] [--loads 0.5,2,…] [--write-docs]\n       \
                 lab e2e [--quick] --only (bare | gateway | layers-off)"
            );
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (try `lab help`)").into()),
    });
    if let Err(e) = result {
        eprintln!("lab: {e}");
        std::process::exit(1);
    }
}
