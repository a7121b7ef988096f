//! The limiter's counters and metric handles.

use super::*;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) round_trips: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) lease_hits: AtomicU64,
    pub(crate) cached_refusals: AtomicU64,
    pub(crate) fallback: AtomicU64,
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Errors by [`ErrorClass`], in [`ErrorClass::ALL`] order.
    pub(crate) by_class: [AtomicU64; 7],
    /// The last error's class: its index in [`ErrorClass::ALL`] plus one,
    /// 0 before any.
    pub(crate) last_error: AtomicU64,
}

impl Counters {
    pub(crate) fn record_error(&self, class: ErrorClass) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.by_class[class.index()].fetch_add(1, Ordering::Relaxed);
        self.last_error
            .store(class.index() as u64 + 1, Ordering::Relaxed);
    }
}

pub(crate) struct Metrics {
    /// `requests_total` by the source that decided.
    pub(crate) requests: [RequestCounters; 6],
    pub(crate) round_trips: Counter,
    pub(crate) round_trip_seconds: Histogram,
    /// `errors_total` by [`ErrorClass`], in [`ErrorClass::ALL`] order.
    pub(crate) errors: [Counter; 7],
    /// `reconfigurations_total`.
    pub(crate) reconfigured: Counter,
    /// `limit`: the configured global rate, requests per second.
    pub(crate) limit: metrics::Gauge,
}

pub(crate) const SOURCES: [Source; 6] = [
    Source::Redis,
    Source::Lease,
    Source::Cached,
    Source::Fallback,
    Source::FailOpen,
    Source::FailClosed,
];

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let prefix = crate::METRIC_PREFIX;
        Self {
            requests: SOURCES.map(|s| {
                RequestCounters::with_labels(prefix, name, &[(crate::LABEL_SOURCE, s.as_str())])
            }),
            round_trips: metrics::counter!(metric_name(prefix, "round_trips_total"), LABEL_NAME => name.to_owned()),
            round_trip_seconds: metrics::histogram!(metric_name(prefix, "round_trip_seconds"), LABEL_NAME => name.to_owned()),
            reconfigured: metrics::counter!(metric_name(prefix, "reconfigurations_total"), LABEL_NAME => name.to_owned()),
            limit: metrics::gauge!(metric_name(prefix, "limit"), LABEL_NAME => name.to_owned()),
            errors: ErrorClass::ALL.map(|class| {
                metrics::counter!(metric_name(prefix, "errors_total"), LABEL_NAME => name.to_owned(), LABEL_REASON => class.as_str())
            }),
        }
    }
}

/// A quota's rate, requests per second.
pub(crate) fn rate(quota: &Quota) -> f64 {
    f64::from(quota.tokens()) / quota.period().as_secs_f64().max(f64::MIN_POSITIVE)
}
