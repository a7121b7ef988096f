//! Regenerating docs/performance.md: criterion medians into the
//! `bench-table` blocks, and the lab's outputs into the `lab:` regions.
//!
//! A bench-table block names its rows; the generator writes the table
//! under it:
//!
//! ```text
//! <!-- bench-table
//! columns: floodwall | governor 0.10
//! baseline: layer/bare/clone+oneshot
//! rows:
//! label | criterion/id | criterion/id
//! -->
//! (generated table)
//! <!-- /bench-table -->
//! ```
//!
//! `columns:` (default one column, `time`) and `baseline:` (only with one
//! id per row: adds an `overhead` column and the baseline's own row) are
//! optional. A line `steps` after a baseline adds a column with each row
//! less the row above it (the first row less the baseline), for tables
//! whose rows each add one thing to the row above. A region
//! `<!-- lab:NAME -->` … `<!-- /lab:NAME -->` is
//! replaced as a whole.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

const OPEN: &str = "<!-- bench-table";
const CLOSE: &str = "<!-- /bench-table -->";

/// The median estimate (nanoseconds) of every benchmark under a criterion
/// output directory (`target/criterion`), by full id.
pub fn criterion_medians(dir: &Path) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some((id, median)) = read_estimate(&p) {
                        out.insert(id, median);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out
}

fn read_estimate(new: &Path) -> Option<(String, f64)> {
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("benchmark.json")).ok()?).ok()?;
    let est: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("estimates.json")).ok()?).ok()?;
    let id = bench.get("full_id")?.as_str()?.to_owned();
    let median = est.get("median")?.get("point_estimate")?.as_f64()?;
    Some((id, median))
}

/// A duration in nanoseconds, as the tables print it.
pub fn format_ns(ns: f64) -> String {
    if ns.abs() >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

struct Spec {
    columns: Vec<String>,
    baseline: Option<String>,
    steps: bool,
    rows: Vec<(String, Vec<String>)>,
}

fn parse_spec(text: &str) -> Result<Spec, String> {
    let mut spec = Spec {
        columns: vec!["time".into()],
        baseline: None,
        steps: false,
        rows: Vec::new(),
    };
    let mut in_rows = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if in_rows {
            let mut cells = line.split(" | ").map(|c| c.trim().to_owned());
            let label = cells.next().unwrap_or_default();
            let ids: Vec<String> = cells.collect();
            if ids.is_empty() {
                return Err(format!("row {line:?} names no benchmark"));
            }
            spec.rows.push((label, ids));
        } else if let Some(c) = line.strip_prefix("columns:") {
            spec.columns = c.split(" | ").map(|c| c.trim().to_owned()).collect();
        } else if let Some(b) = line.strip_prefix("baseline:") {
            spec.baseline = Some(b.trim().to_owned());
        } else if line == "steps" {
            spec.steps = true;
        } else if line == "rows:" {
            in_rows = true;
        } else {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    for (label, ids) in &spec.rows {
        if ids.len() != spec.columns.len() {
            return Err(format!(
                "row {label:?} has {} ids for {} columns",
                ids.len(),
                spec.columns.len()
            ));
        }
    }
    if spec.baseline.is_some() && spec.columns.len() != 1 {
        return Err("a baseline needs exactly one column".into());
    }
    if spec.steps && spec.baseline.is_none() {
        return Err("steps need a baseline".into());
    }
    Ok(spec)
}

fn render(spec: &Spec, medians: &HashMap<String, f64>, missing: &mut Vec<String>) -> String {
    let mut get = |id: &str| match medians.get(id) {
        Some(v) => Some(*v),
        None => {
            missing.push(id.to_owned());
            None
        }
    };
    let mut out = String::from("| benchmark |");
    for c in &spec.columns {
        let _ = write!(out, " {c} |");
    }
    if spec.baseline.is_some() {
        out.push_str(" overhead |");
    }
    if spec.steps {
        out.push_str(" step |");
    }
    out.push_str("\n|---|");
    let extra = usize::from(spec.baseline.is_some()) + usize::from(spec.steps);
    for _ in 0..spec.columns.len() + extra {
        out.push_str("---|");
    }
    out.push('\n');
    let base = spec.baseline.as_deref().map(|b| (b, get(b)));
    if let Some((id, value)) = base {
        let cell = value.map_or("–".into(), format_ns);
        let dash = if spec.steps { " — |" } else { "" };
        let _ = writeln!(out, "| `{id}` | {cell} | — |{dash}");
    }
    let mut above = base.and_then(|(_, b)| b);
    for (label, ids) in &spec.rows {
        let _ = write!(out, "| {label} |");
        let values: Vec<Option<f64>> = ids.iter().map(|id| get(id)).collect();
        for v in &values {
            let _ = write!(out, " {} |", v.map_or("–".into(), format_ns));
        }
        if let Some((_, b)) = base {
            let over = match (values[0], b) {
                (Some(v), Some(b)) => format_ns(v - b),
                _ => "–".into(),
            };
            let _ = write!(out, " {over} |");
        }
        if spec.steps {
            let step = match (values[0], above) {
                (Some(v), Some(a)) => format_ns(v - a),
                _ => "–".into(),
            };
            let _ = write!(out, " {step} |");
            above = values[0];
        }
        out.push('\n');
    }
    out
}

/// Fills every bench-table block of `doc` from `medians`. Ids with no
/// result are listed in the error (the document is not changed then).
///
/// # Errors
/// A malformed block, or benchmarks with no result.
pub fn fill_bench_tables(doc: &str, medians: &HashMap<String, f64>) -> Result<String, String> {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    let mut missing = Vec::new();
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start..];
        let spec_end = after_open
            .find("-->")
            .ok_or("a bench-table block is not closed by -->")?;
        let spec_text = &after_open[OPEN.len()..spec_end];
        let spec = parse_spec(spec_text)?;
        let body_start = start + spec_end + "-->".len();
        let close = rest[body_start..]
            .find(CLOSE)
            .ok_or("a bench-table block has no <!-- /bench-table -->")?;
        out.push_str(&rest[..body_start]);
        out.push('\n');
        out.push_str(&render(&spec, medians, &mut missing));
        out.push_str(CLOSE);
        rest = &rest[body_start + close + CLOSE.len()..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        missing.sort();
        missing.dedup();
        Err(format!(
            "no criterion result for: {} (run `cargo bench -p floodwall-benches` first)",
            missing.join(", ")
        ))
    }
}

/// Replaces the contents of region `name` (`<!-- lab:name -->` …
/// `<!-- /lab:name -->`) with `content`.
///
/// # Errors
/// If the region is missing.
pub fn replace_region(doc: &str, name: &str, content: &str) -> Result<String, String> {
    let open = format!("<!-- lab:{name} -->");
    let close = format!("<!-- /lab:{name} -->");
    let start = doc
        .find(&open)
        .ok_or_else(|| format!("no {open} in the document"))?
        + open.len();
    let end = doc[start..]
        .find(&close)
        .ok_or_else(|| format!("no {close} in the document"))?
        + start;
    Ok(format!(
        "{}\n{}\n{}",
        &doc[..start],
        content.trim(),
        &doc[end..]
    ))
}

/// What this machine is: CPU, cores, memory, kernel, compiler.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".into(), |(_, m)| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |k| k.trim().to_owned());
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or("rustc (unknown)".into(), |v| v.trim().to_owned());
    format!(
        "{cores} vCPU ({model}), {mem_gib:.0} GiB, Linux {kernel}, {rustc}, `--release` (the `bench` profile)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_tables_and_reports_missing_ids() {
        let doc = "intro\n<!-- bench-table\nbaseline: g/bare\nrows:\nfast `x` | g/x\n-->\nold table\n<!-- /bench-table -->\ntail\n";
        let mut m = HashMap::new();
        m.insert("g/bare".to_owned(), 10.0);
        m.insert("g/x".to_owned(), 1510.0);
        let out = fill_bench_tables(doc, &m).unwrap();
        assert!(out.contains("| `g/bare` | 10.0 ns | — |"), "{out}");
        assert!(out.contains("| fast `x` | 1.51 µs | 1.50 µs |"), "{out}");
        assert!(!out.contains("old table"));
        assert!(out.ends_with("<!-- /bench-table -->\ntail\n"));
        // Idempotent.
        assert_eq!(fill_bench_tables(&out, &m).unwrap(), out);
        m.remove("g/x");
        assert!(fill_bench_tables(doc, &m).unwrap_err().contains("g/x"));
    }

    #[test]
    fn two_columns_and_bad_blocks() {
        let doc =
            "<!-- bench-table\ncolumns: a | b\nrows:\nr | g/a | g/b\n-->\n<!-- /bench-table -->";
        let m: HashMap<String, f64> = [("g/a".to_owned(), 1.0), ("g/b".to_owned(), 2.0)].into();
        let out = fill_bench_tables(doc, &m).unwrap();
        assert!(out.contains("| benchmark | a | b |"));
        assert!(out.contains("| r | 1.0 ns | 2.0 ns |"));
        let bad = "<!-- bench-table\ncolumns: a | b\nrows:\nr | g/a\n-->\n<!-- /bench-table -->";
        assert!(fill_bench_tables(bad, &m).is_err());
    }

    #[test]
    fn steps_are_each_row_less_the_row_above() {
        let doc = "<!-- bench-table\nbaseline: g/bare\nsteps\nrows:\none | g/1\ntwo | g/2\n-->\n<!-- /bench-table -->";
        let m: HashMap<String, f64> = [
            ("g/bare".to_owned(), 100.0),
            ("g/1".to_owned(), 130.0),
            ("g/2".to_owned(), 180.0),
        ]
        .into();
        let out = fill_bench_tables(doc, &m).unwrap();
        assert!(
            out.contains("| benchmark | time | overhead | step |"),
            "{out}"
        );
        assert!(out.contains("| `g/bare` | 100.0 ns | — | — |"), "{out}");
        assert!(
            out.contains("| one | 130.0 ns | 30.0 ns | 30.0 ns |"),
            "{out}"
        );
        assert!(
            out.contains("| two | 180.0 ns | 80.0 ns | 50.0 ns |"),
            "{out}"
        );
        let no_base = "<!-- bench-table\nsteps\nrows:\none | g/1\n-->\n<!-- /bench-table -->";
        assert!(fill_bench_tables(no_base, &m).is_err());
    }

    #[test]
    fn regions_are_replaced_whole() {
        let doc = "a\n<!-- lab:x -->\nold\n<!-- /lab:x -->\nb";
        let out = replace_region(doc, "x", "new").unwrap();
        assert_eq!(out, "a\n<!-- lab:x -->\nnew\n<!-- /lab:x -->\nb");
        assert_eq!(replace_region(&out, "x", "new").unwrap(), out);
        assert!(replace_region(doc, "y", "new").is_err());
    }
}
