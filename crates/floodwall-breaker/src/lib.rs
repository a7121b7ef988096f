//! A circuit breaker for Tower.
//!
//! - [`CircuitBreaker`]: the sans-IO state machine (Closed, Open, HalfOpen,
//!   ForcedOpen, Disabled) over a count or time window, with failure and
//!   slow-call rates, consecutive failures, growing open durations, half-open
//!   probes, a ramp after closing, and generations.
//! - [`BreakerLayer`] / [`BreakerService`]: the Tower adapter; refusals are
//!   [`CircuitOpen`] rejections, outcomes come from a
//!   [`Classify`](floodwall_core::Classify), dropped calls give their permit
//!   back; [`BreakerHandle`] reads the state and controls it.
//! - [`BreakerGroupLayer`]: a breaker per key (host, endpoint, tenant) in a
//!   bounded [`BreakerGroup`]: one bad host is refused while the others
//!   serve; idle closed breakers are evicted, open ones kept.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_breaker::{BreakerConfig, CircuitBreaker, State, WindowKind};
//! use tokio::time::Instant;
//!
//! let t0 = Instant::now();
//! let config = BreakerConfig { window: WindowKind::Count(4), minimum_calls: 4, ..Default::default() };
//! let breaker = CircuitBreaker::with_epoch(config, t0)?;
//! for failed in [false, true, false, true] {
//!     let permit = breaker.try_acquire(t0).unwrap();
//!     if failed { breaker.on_failure(permit, t0) } else { breaker.on_success(permit, t0) }
//! }
//! assert_eq!(breaker.state(), State::Open, "2 of the last 4 failed: 50 %");
//! let refused = breaker.try_acquire(t0).unwrap_err();
//! assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));
//! # Ok::<(), floodwall_breaker::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

/// The prefix of the breaker's metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_breaker_requests_total{name,
/// outcome, reason}`; `floodwall_breaker_calls_total{name, outcome}` for
/// admitted calls as they finish (`success`, `failure`, `cancelled`: said
/// nothing); the gauge `floodwall_breaker_state{name}` (0 closed, 1 open,
/// 2 half-open, 3 forced open, 4 disabled); and
/// `floodwall_breaker_transitions_total{name, from, to}`.
pub const METRIC_PREFIX: &str = "breaker";

mod breaker;
mod config;
pub mod error;
mod group;
mod layer;
mod policy;
mod window;

pub use breaker::{BreakerRefused, CircuitBreaker, Permit, State, StateChange};
pub use config::{BreakerConfig, ConfigError, Growth, WindowKind};
pub use error::CircuitOpen;
pub use group::{
    BreakerGroup, BreakerGroupConfig, BreakerGroupHandle, BreakerGroupLayer, BreakerGroupService,
    GROUP_METRIC_PREFIX, GROUP_NAME, GroupBuilder, GroupPermit, GroupPolicy,
};
#[allow(deprecated)]
pub use layer::{Breaker, BreakerHandle, BreakerLayer, BreakerService, Builder, DEFAULT_NAME};
pub use policy::BreakerPolicy;

/// The response futures of [`Breaker`].
pub mod future {
    /// The response future of [`Breaker`](crate::Breaker): the inner
    /// future with the call's permit, or a refusal ready at once.
    pub type ResponseFuture<F, C = floodwall_core::ResultClassifier> =
        floodwall_admit::future::ResponseFuture<F, crate::BreakerPolicy<C>>;
}
#[doc(inline)]
pub use future::ResponseFuture;
pub use window::WindowCounts;
