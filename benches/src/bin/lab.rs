//! The overload lab's command line.
//!
//! ```text
//! cargo run --release -p floodwall-benches --bin lab -- sim [--quick] [--out DIR]
//! ```
//!
//! `sim` runs every virtual-time scenario (each stack at every offered load,
//! without and with client retries) and writes `overload.csv`, the SVG
//! charts and `overload.md` (the Markdown tables) under `DIR` (default
//! `target/lab`). `--quick` shortens the measured time (for a first
//! look; the report uses the defaults).

use std::path::{Path, PathBuf};
use std::time::Instant;

use floodwall_benches::lab::report;
use floodwall_benches::lab::{Scenario, SimConfig, Stack, run_all};

/// Offered loads, as multiples of capacity.
const LOADS: [f64; 7] = [0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0];

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    command: String,
    quick: bool,
    out: PathBuf,
}

fn parse() -> Result<Args, Error> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".into());
    let mut parsed = Args {
        command,
        quick: false,
        out: PathBuf::from("target/lab"),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => parsed.quick = true,
            "--out" => parsed.out = args.next().ok_or("--out needs a directory")?.into(),
            other => return Err(format!("unknown argument {other:?} (try `lab help`)").into()),
        }
    }
    Ok(parsed)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn sim(args: &Args) -> Result<(), Error> {
    let mut config = SimConfig::default();
    if args.quick {
        config.measure = std::time::Duration::from_secs(2);
    }
    let scenarios: Vec<Scenario> = [false, true]
        .into_iter()
        .flat_map(|retries| {
            Stack::ALL.into_iter().flat_map(move |stack| {
                LOADS.into_iter().map(move |load| Scenario {
                    stack,
                    load,
                    retries,
                })
            })
        })
        .collect();
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

    write(&args.out.join("overload.csv"), &report::csv(&rows))?;
    for (stem, chart) in report::charts(&rows) {
        write(
            &args.out.join(format!("{stem}.svg")),
            &floodwall_benches::lab::plot::svg(&chart),
        )?;
    }
    let mut md = String::new();
    for (retries, what) in [(false, "no retries"), (true, "clients retrying")] {
        md.push_str(&format!("\nGoodput, % of capacity ({what}):\n\n"));
        md.push_str(&report::goodput_table(&rows, retries));
        md.push_str(&format!("\np99 latency of successes, ms ({what}):\n\n"));
        md.push_str(&report::latency_table(&rows, retries));
        for load in [2.0, 5.0] {
            md.push_str(&format!("\nAt {load}× capacity ({what}):\n\n"));
            md.push_str(&report::detail_table(&rows, load, retries));
        }
    }
    write(&args.out.join("overload.md"), &md)?;
    println!("{md}");
    eprintln!("lab: wrote {}", args.out.display());
    Ok(())
}

fn main() {
    let result = parse().and_then(|args| match args.command.as_str() {
        "sim" => sim(&args),
        "help" | "--help" | "-h" => {
            println!("usage: lab sim [--quick] [--out DIR]");
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (try `lab help`)").into()),
    });
    if let Err(e) = result {
        eprintln!("lab: {e}");
        std::process::exit(1);
    }
}
