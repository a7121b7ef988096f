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
}

pub(crate) struct Metrics {
    /// `requests_total` by the source that decided.
    pub(crate) requests: [RequestCounters; 6],
    pub(crate) round_trips: Counter,
    pub(crate) round_trip_seconds: Histogram,
    pub(crate) errors: [Counter; 5],
}

pub(crate) const SOURCES: [Source; 6] = [
    Source::Redis,
    Source::Lease,
    Source::Cached,
    Source::Fallback,
    Source::FailOpen,
    Source::FailClosed,
];

pub(crate) const ERROR_REASONS: [&str; 5] = ["timeout", "io", "server", "protocol", "busy"];

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let prefix = crate::METRIC_PREFIX;
        Self {
            requests: SOURCES.map(|s| {
                RequestCounters::with_labels(prefix, name, &[(crate::LABEL_SOURCE, s.as_str())])
            }),
            round_trips: metrics::counter!(metric_name(prefix, "round_trips_total"), LABEL_NAME => name.to_owned()),
            round_trip_seconds: metrics::histogram!(metric_name(prefix, "round_trip_seconds"), LABEL_NAME => name.to_owned()),
            errors: ERROR_REASONS.map(|r| {
                metrics::counter!(metric_name(prefix, "errors_total"), LABEL_NAME => name.to_owned(), LABEL_REASON => r)
            }),
        }
    }
}

pub(crate) fn error_reason(err: &RedisError) -> usize {
    match err {
        RedisError::Timeout => 0,
        RedisError::Io(_)
        | RedisError::ConnectTimeout
        | RedisError::Disconnected
        | RedisError::Closed => 1,
        RedisError::Server(_) => 2,
        RedisError::Protocol(_) | RedisError::UnexpectedReply(_) => 3,
        RedisError::Busy => 4,
    }
}
