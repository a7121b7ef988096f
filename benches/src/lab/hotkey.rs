//! HeavyKeeper as its memory grows: precision and count error of the
//! top-100 against exact counts on a Zipf(1.0) stream, and how fast a new
//! hot key is reported on a shifting stream (docs/hotkey.md's plots).

use std::fmt::Write as _;
use std::time::Duration;

use floodwall::hotkey::TopKConfig;
use floodwall_hotkey::testing::{score, slowest_detection};

use crate::lab::plot::{Chart, Series};

/// One sketch size's results.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRow {
    /// Rows of the sketch.
    pub depth: usize,
    /// Its memory, in bytes.
    pub bytes: usize,
    /// Share of the reported top-100 in the true top-100.
    pub precision: f64,
    /// Mean relative error of the reported counts.
    pub error: f64,
    /// The slowest report of a new hot key on the shifting stream.
    pub detection: Option<Duration>,
}

/// Widths swept, per row.
pub const WIDTHS: [usize; 7] = [64, 128, 256, 512, 1_024, 2_048, 4_096];

/// Every width at depth 2 (the paper's default) and 4 (floodwall's):
/// `items` Zipf(1.0) draws over `keys` keys, and a 3-period shifting
/// stream for the detection time.
pub fn memory_sweep(items: usize, keys: usize) -> Vec<MemoryRow> {
    let mut rows = Vec::new();
    for depth in [2, 4] {
        for width in WIDTHS {
            let config = TopKConfig {
                k: 100,
                width,
                depth,
                fade_every: None,
                ..TopKConfig::default()
            };
            let s = score(config, keys, items, 2026);
            let detection = slowest_detection(
                TopKConfig {
                    fade_every: TopKConfig::default().fade_every,
                    ..config
                },
                3,
                7,
            );
            rows.push(MemoryRow {
                depth,
                bytes: config.sketch_bytes(),
                precision: s.precision,
                error: s.mean_relative_error,
                detection,
            });
        }
    }
    rows
}

/// The Markdown table of the sweep.
pub fn table(rows: &[MemoryRow]) -> String {
    let mut out = String::from(
        "| depth | memory | precision | mean relative error | slowest detection |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} KiB | {:.2} | {:.3} % | {} |",
            r.depth,
            r.bytes as f64 / 1024.0,
            r.precision,
            r.error * 100.0,
            r.detection
                .map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis()))
        );
    }
    out
}

/// The two charts: precision and detection time against memory.
pub fn charts(rows: &[MemoryRow]) -> Vec<(String, Chart)> {
    let ticks: Vec<f64> = WIDTHS.iter().map(|w| (w * 4 * 8) as f64 / 1024.0).collect();
    let series = |f: &dyn Fn(&MemoryRow) -> Option<f64>| {
        [2, 4]
            .into_iter()
            .map(|depth| Series {
                name: format!("depth {depth}"),
                points: rows
                    .iter()
                    .filter(|r| r.depth == depth)
                    .filter_map(|r| Some((r.bytes as f64 / 1024.0, f(r)?)))
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    vec![
        (
            "hotkey-precision".to_owned(),
            Chart {
                title: "HeavyKeeper top-100 precision on Zipf(1.0), 1M keys".to_owned(),
                x_label: "sketch memory (KiB)".to_owned(),
                y_label: "precision".to_owned(),
                log_x: true,
                log_y: false,
                x_ticks: ticks.clone(),
                series: series(&|r| Some(r.precision)),
            },
        ),
        (
            "hotkey-detection".to_owned(),
            Chart {
                title: "Slowest report of a new top-10 key (fading 500 ms)".to_owned(),
                x_label: "sketch memory (KiB)".to_owned(),
                y_label: "detection (ms)".to_owned(),
                log_x: true,
                log_y: false,
                x_ticks: ticks,
                series: series(&|r| r.detection.map(|d| d.as_millis() as f64)),
            },
        ),
    ]
}
