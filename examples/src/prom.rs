//! A small `metrics` recorder that renders the Prometheus text format, so
//! the gateway's admin port can serve every floodwall metric without a
//! metrics-exporter dependency.
//!
//! Counters and gauges are one atomic each; histograms keep cumulative
//! buckets (seconds, Prometheus' default bounds), a sum and a count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use parking_lot::Mutex;

/// Prometheus' default histogram bucket bounds.
const BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Buckets {
    counts: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    /// f64 bits.
    sum: AtomicU64,
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        for (i, b) in BOUNDS.iter().enumerate() {
            if value <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

#[derive(Debug)]
enum Entry {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Buckets>),
}

/// A metric's name and labels.
type MetricKey = (String, Vec<(String, String)>);

/// The registry behind the recorder.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<MetricKey, Entry>>,
    help: Mutex<BTreeMap<String, String>>,
}

impl Registry {
    fn key(key: &Key) -> MetricKey {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        (key.name().to_owned(), labels)
    }

    /// The current value of the counter `name` with exactly `labels`
    /// (0 if it was never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let k = (
            name.to_owned(),
            labels
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        );
        match self.entries.lock().get(&k) {
            Some(Entry::Counter(c)) => c.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let entries = self.entries.lock();
        let help = self.help.lock();
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), entry) in entries.iter() {
            if name != last {
                let kind = match entry {
                    Entry::Counter(_) => "counter",
                    Entry::Gauge(_) => "gauge",
                    Entry::Histogram(_) => "histogram",
                };
                if let Some(h) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {}", h.replace('\n', " "));
                }
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = name;
            }
            let lbl = |extra: Option<(&str, String)>| -> String {
                let mut parts: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                if let Some((k, v)) = extra {
                    parts.push(format!("{k}=\"{v}\""));
                }
                if parts.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", parts.join(","))
                }
            };
            match entry {
                Entry::Counter(c) => {
                    let _ = writeln!(out, "{name}{} {}", lbl(None), c.load(Ordering::Relaxed));
                }
                Entry::Gauge(g) => {
                    let v = f64::from_bits(g.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}{} {v}", lbl(None));
                }
                Entry::Histogram(h) => {
                    for (i, b) in BOUNDS.iter().enumerate() {
                        let n = h.counts[i].load(Ordering::Relaxed);
                        let _ =
                            writeln!(out, "{name}_bucket{} {n}", lbl(Some(("le", b.to_string()))));
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        lbl(Some(("le", "+Inf".into())))
                    );
                    let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}_sum{} {sum}", lbl(None));
                    let _ = writeln!(out, "{name}_count{} {count}", lbl(None));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Clone)]
struct PromRecorder(Arc<Registry>);

impl Recorder for PromRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.0
            .help
            .lock()
            .insert(key.as_str().to_owned(), description.into_owned());
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.0
            .help
            .lock()
            .insert(key.as_str().to_owned(), description.into_owned());
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.0
            .help
            .lock()
            .insert(key.as_str().to_owned(), description.into_owned());
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut entries = self.0.entries.lock();
        match entries
            .entry(Registry::key(key))
            .or_insert_with(|| Entry::Counter(Arc::default()))
        {
            Entry::Counter(c) => Counter::from_arc(c.clone()),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut entries = self.0.entries.lock();
        match entries
            .entry(Registry::key(key))
            .or_insert_with(|| Entry::Gauge(Arc::default()))
        {
            Entry::Gauge(g) => Gauge::from_arc(g.clone()),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut entries = self.0.entries.lock();
        match entries
            .entry(Registry::key(key))
            .or_insert_with(|| Entry::Histogram(Arc::default()))
        {
            Entry::Histogram(h) => Histogram::from_arc(h.clone()),
            _ => Histogram::noop(),
        }
    }
}

static REGISTRY: OnceLock<Option<Arc<Registry>>> = OnceLock::new();

/// Installs the recorder as the process's global `metrics` recorder (once;
/// later calls return the same registry). `None` if another recorder was
/// installed first.
pub fn install() -> Option<Arc<Registry>> {
    REGISTRY
        .get_or_init(|| {
            let registry = Arc::new(Registry::default());
            metrics::set_global_recorder(PromRecorder(registry.clone()))
                .ok()
                .map(|()| registry)
        })
        .clone()
}

/// The installed registry, if [`install`] succeeded.
pub fn registry() -> Option<Arc<Registry>> {
    REGISTRY.get().cloned().flatten()
}
