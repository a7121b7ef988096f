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

mod budget;
mod layer;
mod retry;
mod throttle;
mod window;

pub use budget::{BudgetError, RetryBudget};
pub use floodwall_core::random::{Random, SplitMix};
pub use layer::{
    Builder, CriticalityOf, DEFAULT_NAME, FromExtensions, NoCriticality, ResponseFuture,
    ThrottleHandle, ThrottleLayer, ThrottleService, Throttled,
};
pub use retry::{
    Backoff, Builder as RetryBuilder, DoNotRetry, NO_RETRY_HEADER, RetryErrors, RetryFuture,
    RetryHint, RetryHttp, RetryLayer, RetryPolicy, RetryService, Verdict, error_verdict,
};
pub use throttle::{AdaptiveThrottle, ConfigError, Stats, ThrottleConfig, Ticket};
