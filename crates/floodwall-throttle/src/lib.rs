//! Google-SRE adaptive client throttling and a gRPC-A6 retry budget.
//!
//! - [`AdaptiveThrottle`] / [`ThrottleLayer`]: the client drops requests
//!   locally with probability `max(0, (requests − K·accepts)/(requests + 1))`
//!   over a trailing window, so a refusing backend sees about `K` times what
//!   it accepts instead of the full offered load.
//!
//! - [`RetryBudget`] / [`RetryLayer`]: retries within gRPC A6's token budget,
//!   with exponential backoff and full jitter, honouring server pushback, and
//!   marking what it gives up on so that layers further up do not retry it
//!   again.
//!
//! The throttle's statistics are per
//! [`Criticality`](floodwall_core::Criticality) when requests carry one; the
//! random sources are injectable and seedable.
#![forbid(unsafe_code)]

/// The prefix of the throttle's metric names:
/// `floodwall_throttle_requests_total{name, outcome, reason, criticality}`
/// and `floodwall_throttle_probability{name, criticality}` (the convention:
/// [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "throttle";

/// The label carrying a request's criticality class on the throttle's
/// metrics (`none` for requests without one).
pub const LABEL_CRITICALITY: &str = "criticality";

/// Counter: retries the retry layer sent (label `name`).
pub const RETRY_ATTEMPTS: &str = "floodwall_retry_attempts_total";

/// Counter: retries the retry layer did not send (labels `name`, `reason`:
/// `do_not_retry`, `attempts`, `budget`).
pub const RETRY_SKIPPED: &str = "floodwall_retry_skipped_total";

mod budget;
mod criticality;
pub mod error;
mod layer;
mod policy;
mod retry;
mod throttle;

pub use budget::RetryBudget;
pub use criticality::{CriticalityFromExtensions, CriticalityOf, NoCriticality};
pub use error::{ConfigError, Throttled};
pub use floodwall_core::random::{Random, SplitMix};
#[allow(deprecated)]
pub use layer::{Builder, DEFAULT_NAME, Throttle, ThrottleHandle, ThrottleLayer, ThrottleService};
pub use policy::ThrottlePolicy;

/// The response futures of [`Throttle`] and [`Retry`].
pub mod future {
    pub use crate::retry::RetryFuture;

    /// The response future of [`Throttle`](crate::Throttle): the inner
    /// future with the attempt's ticket, or a drop ready at once.
    pub type ResponseFuture<F, C = floodwall_core::ResultClassifier, X = crate::NoCriticality> =
        floodwall_admit::future::ResponseFuture<F, crate::ThrottlePolicy<C, X>>;
}
#[doc(inline)]
pub use future::ResponseFuture;
pub use retry::{
    Backoff, BudgetConfig, Builder as RetryBuilder, DoNotRetry, NO_RETRY_HEADER, Retry,
    RetryConfig, RetryErrors, RetryFuture, RetryHandle, RetryHint, RetryHttp, RetryLayer,
    RetryPolicy, Verdict, error_verdict, mark_given_up,
};
pub use throttle::{AdaptiveThrottle, ThrottleConfig, ThrottleStats, Ticket};
