//! The lab's outputs: CSV, SVG charts and Markdown tables.

use std::fmt::Write as _;

use super::plot::{Chart, Series};
use super::sim::{REASONS, Row, Stack};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One line per row, with a header line.
pub fn csv(rows: &[Row]) -> String {
    let classes = rows.iter().map(|r| r.classes.len()).max().unwrap_or(0);
    let mut out = String::from("stack,load,retries,offered_rps,goodput_pct,success_pct");
    for c in 0..classes {
        let _ = write!(out, ",class{c}_success_pct");
    }
    out.push_str(",p50_ms,p99_ms,p999_ms,attempts_per_request,wasted_work_pct");
    out.push_str(",limit_mean,limit_min,limit_max");
    for r in REASONS {
        let _ = write!(out, ",failed_{r}_pct");
    }
    out.push('\n');
    for row in rows {
        let sc = row.scenario;
        let _ = write!(
            out,
            "{},{},{},{:.1},{:.2},{:.2}",
            sc.stack,
            sc.load,
            sc.retries,
            sc.load * row.capacity,
            row.goodput() * 100.0,
            row.success() * 100.0
        );
        for c in 0..classes {
            let _ = write!(out, ",{:.2}", row.class_success(c) * 100.0);
        }
        let _ = write!(
            out,
            ",{:.2},{:.2},{:.2},{:.3},{:.2}",
            ms(row.latency.quantile(0.5)),
            ms(row.latency.quantile(0.99)),
            ms(row.latency.quantile(0.999)),
            row.amplification(),
            row.wasted_fraction() * 100.0
        );
        match row.limit {
            Some(l) => {
                let _ = write!(out, ",{:.1},{},{}", l.mean, l.min, l.max);
            }
            None => out.push_str(",,,"),
        }
        for r in REASONS {
            let _ = write!(out, ",{:.2}", row.failed_for(r) * 100.0);
        }
        out.push('\n');
    }
    out
}

fn loads(rows: &[Row]) -> Vec<f64> {
    let mut loads: Vec<f64> = rows.iter().map(|r| r.scenario.load).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    loads
}

/// The stacks of `rows`, in the order they first appear.
fn stacks(rows: &[Row]) -> Vec<Stack> {
    let mut out: Vec<Stack> = Vec::new();
    for r in rows {
        if !out.contains(&r.scenario.stack) {
            out.push(r.scenario.stack);
        }
    }
    out
}

fn find(rows: &[Row], stack: Stack, load: f64, retries: bool) -> Option<&Row> {
    rows.iter().find(|r| {
        r.scenario.stack == stack && r.scenario.load == load && r.scenario.retries == retries
    })
}

fn chart(
    rows: &[Row],
    retries: bool,
    title: &str,
    y_label: &str,
    log_y: bool,
    y: impl Fn(&Row) -> f64,
) -> Chart {
    Chart {
        title: title.into(),
        x_label: "offered load (× capacity)".into(),
        y_label: y_label.into(),
        log_x: true,
        log_y,
        x_ticks: loads(rows),
        series: stacks(rows)
            .into_iter()
            .map(|stack| Series {
                name: stack.name().into(),
                points: rows
                    .iter()
                    .filter(|r| r.scenario.stack == stack && r.scenario.retries == retries)
                    .map(|r| (r.scenario.load, y(r)))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect(),
    }
}

/// The charts, each with the file stem it is written under: goodput and
/// p99 latency of successes against offered load, without and with
/// retries (stems `goodput`, `latency`, `goodput-retries`,
/// `latency-retries`, each after `prefix`).
pub fn charts(rows: &[Row], prefix: &str) -> Vec<(String, Chart)> {
    let mut out = Vec::new();
    for (retries, suffix) in [(false, ""), (true, ", clients retrying")] {
        let goodput = chart(
            rows,
            retries,
            &format!("Goodput vs offered load{suffix}"),
            "goodput (% of capacity)",
            false,
            |r| r.goodput() * 100.0,
        );
        let latency = chart(
            rows,
            retries,
            &format!("p99 latency of successes{suffix}"),
            "p99 latency (ms)",
            true,
            |r| ms(r.latency.quantile(0.99)),
        );
        let (g, l) = if retries {
            ("goodput-retries", "latency-retries")
        } else {
            ("goodput", "latency")
        };
        out.push((format!("{prefix}{g}"), goodput));
        out.push((format!("{prefix}{l}"), latency));
    }
    out
}

fn grid(rows: &[Row], retries: bool, cell: impl Fn(&Row) -> String) -> String {
    let loads = loads(rows);
    let mut out = String::from("| stack |");
    for l in &loads {
        let _ = write!(out, " {l}× |");
    }
    out.push_str("\n|---|");
    for _ in &loads {
        out.push_str("---|");
    }
    out.push('\n');
    for stack in stacks(rows) {
        let _ = write!(out, "| `{stack}` |");
        for &l in &loads {
            match find(rows, stack, l, retries) {
                Some(r) => {
                    let _ = write!(out, " {} |", cell(r));
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// Goodput (% of capacity) per stack and offered load.
pub fn goodput_table(rows: &[Row], retries: bool) -> String {
    grid(rows, retries, |r| format!("{:.1}", r.goodput() * 100.0))
}

/// p99 latency of successes (ms) per stack and offered load.
pub fn latency_table(rows: &[Row], retries: bool) -> String {
    grid(rows, retries, |r| {
        if r.latency.is_empty() {
            "–".into()
        } else {
            format!("{:.0}", ms(r.latency.quantile(0.99)))
        }
    })
}

/// The mean adaptive limit per stack and offered load, with its range
/// (`mean (min–max)`); `–` for a stack without one.
pub fn limit_table(rows: &[Row], retries: bool) -> String {
    grid(rows, retries, |r| match r.limit {
        Some(l) => format!("{:.1} ({}–{})", l.mean, l.min, l.max),
        None => "–".into(),
    })
}

/// Every metric of every stack at one offered load.
pub fn detail_table(rows: &[Row], load: f64, retries: bool) -> String {
    let classes = rows.iter().map(|r| r.classes.len()).max().unwrap_or(0);
    let mut out = String::from("| stack | goodput |");
    for c in 0..classes {
        let _ = write!(out, " class {c} |");
    }
    out.push_str(" p50 | p99 | p99.9 | attempts/req | wasted work | failed: shed | prioritized | throttled | deadline | client timeout |\n|---|");
    for _ in 0..(classes + 10) {
        out.push_str("---|");
    }
    out.push('\n');
    for stack in stacks(rows) {
        let Some(r) = find(rows, stack, load, retries) else {
            continue;
        };
        let _ = write!(out, "| `{stack}` | {:.1} % |", r.goodput() * 100.0);
        for c in 0..classes {
            let _ = write!(out, " {:.1} % |", r.class_success(c) * 100.0);
        }
        let q = |p: f64| {
            if r.latency.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.0} ms", ms(r.latency.quantile(p)))
            }
        };
        let _ = write!(
            out,
            " {} | {} | {} | {:.2} | {:.0} % |",
            q(0.5),
            q(0.99),
            q(0.999),
            r.amplification(),
            r.wasted_fraction() * 100.0
        );
        let pct = |reasons: &[&str]| {
            let f: f64 = reasons.iter().map(|x| r.failed_for(x)).sum();
            format!(" {:.1} % |", f * 100.0)
        };
        out.push_str(&pct(&[
            "overloaded",
            "expired",
            "rate_limited",
            "circuit_open",
            "other",
        ]));
        out.push_str(&pct(&["prioritized"]));
        out.push_str(&pct(&["throttled"]));
        out.push_str(&pct(&["deadline_exceeded"]));
        out.push_str(&pct(&["timeout"]));
        out.push('\n');
    }
    out
}
