//! The metric convention every floodwall layer follows (through the
//! `metrics` facade); each crate owns its metric names.
//!
//! - Names are `floodwall_<layer>_<what>` ([`metric_name`]); counters end in
//!   `_total`.
//! - Every metric carries [`LABEL_NAME`], the layer instance's configured
//!   name, so several instances of one layer can be told apart.
//! - Every admission-style layer reports
//!   `floodwall_<layer>_requests_total{name, outcome, reason}`
//!   ([`RequestCounters`]): `outcome` is [`ADMITTED`] or [`REJECTED`], and
//!   `reason` is the rejection's [`RejectKind::as_str`] (`rate_limited`,
//!   `overloaded`, `circuit_open`, `throttled`, `deadline_exceeded`,
//!   `prioritized`; empty for admitted requests). Its own gauges and
//!   detail counters use the same `name` label.
//!
//! Layers register their metric handles when the layer is built, so install
//! your `metrics` recorder before building layers.
//!
//! ```
//! use floodwall_core::RejectKind;
//! use floodwall_core::metrics::{RequestCounters, metric_name};
//!
//! assert_eq!(metric_name("bulkhead", "requests_total"), "floodwall_bulkhead_requests_total");
//! // What a layer registers when it is built, and counts per request:
//! let requests = RequestCounters::new("bulkhead", "uploads");
//! requests.admitted();
//! requests.rejected(RejectKind::Overloaded);
//! ```

use metrics::Counter;

use crate::RejectKind;

/// The label every floodwall metric carries: the layer instance's name.
pub const LABEL_NAME: &str = "name";

/// The label saying whether a request was [`ADMITTED`] or [`REJECTED`].
pub const LABEL_OUTCOME: &str = "outcome";

/// The label naming why: a rejection's [`RejectKind::as_str`] on
/// `requests_total`, a layer's own reason on its detail metrics.
pub const LABEL_REASON: &str = "reason";

/// `outcome` of a request the layer let through.
pub const ADMITTED: &str = "admitted";

/// `outcome` of a request the layer refused.
pub const REJECTED: &str = "rejected";

/// `floodwall_<layer>_<what>`.
pub fn metric_name(layer: &str, what: &str) -> String {
    format!("floodwall_{layer}_{what}")
}

/// Every rejection kind, in the order [`RequestCounters`] keeps them.
const KINDS: [RejectKind; 6] = RejectKind::ALL;

/// The `floodwall_<layer>_requests_total{name, outcome, reason}` counters of
/// one layer instance, registered once when the layer is built; counting a
/// request is one counter increment.
#[derive(Clone)]
pub struct RequestCounters {
    admitted: Counter,
    rejected: [Counter; 6],
}

impl RequestCounters {
    /// The counters of layer `layer` (its metric prefix, e.g. `"breaker"`)
    /// named `name`.
    pub fn new(layer: &str, name: &str) -> Self {
        Self::with_labels(layer, name, &[])
    }

    /// As [`new`](Self::new), with extra labels (a criticality class, a
    /// source) on every counter.
    pub fn with_labels(layer: &str, name: &str, labels: &[(&'static str, &str)]) -> Self {
        let metric = metric_name(layer, "requests_total");
        let counter = |outcome: &'static str, reason: &'static str| {
            let mut all = vec![
                metrics::Label::new(LABEL_NAME, name.to_owned()),
                metrics::Label::new(LABEL_OUTCOME, outcome),
                metrics::Label::new(LABEL_REASON, reason),
            ];
            all.extend(
                labels
                    .iter()
                    .map(|&(k, v)| metrics::Label::new(k, v.to_owned())),
            );
            metrics::counter!(metric.clone(), all)
        };
        Self {
            admitted: counter(ADMITTED, ""),
            rejected: KINDS.map(|k| counter(REJECTED, k.as_str())),
        }
    }

    /// Counts an admitted request.
    #[inline]
    pub fn admitted(&self) {
        self.admitted.increment(1);
    }

    /// Counts a request refused with `kind`.
    #[inline]
    pub fn rejected(&self, kind: RejectKind) {
        let i = KINDS.iter().position(|&k| k == kind).unwrap_or(1);
        self.rejected[i].increment(1);
    }
}

impl std::fmt::Debug for RequestCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounters").finish_non_exhaustive()
    }
}
