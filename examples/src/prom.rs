//! The Prometheus side of the examples: `metrics-exporter-prometheus`
//! records every floodwall metric (the `metrics` facade) and renders the
//! text format for the gateway's admin port.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds (Prometheus' defaults): queueing and RTT
/// histograms render as buckets rather than summaries.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder,
/// once; later calls do nothing. A process that already has another
/// recorder keeps it (and [`render`] answers `None`). Install it before
/// building layers: they register their metrics when built.
pub fn install() {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .ok()?
            .install_recorder()
            .ok()?;
        // Histograms are folded into their buckets by upkeep; without the
        // exporter's HTTP listener that is ours to run.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("prometheus-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok()?;
        Some(handle)
    });
}

/// Every metric in the Prometheus text format, or `None` when [`install`]
/// did not install the recorder.
pub fn render() -> Option<String> {
    HANDLE.get()?.as_ref().map(|h| {
        h.run_upkeep();
        h.render()
    })
}
