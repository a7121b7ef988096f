//! Sliding-window rate limiting for Tower: at most `limit` requests per
//! window.
//!
//! - [`SlidingWindowCounter`]: Cloudflare's two-window estimate
//!   `prev·(W − e)/W + cur`, admitting iff the estimate is below the limit;
//!   one `AtomicU64` per limit (or key), one CAS per decision.
//! - [`SlidingLog`]: the exact log; never more than `limit` in any window,
//!   at `limit × 8` bytes per limit (or key).
//! - Fixed window ([`SlidingWindowCounter::fixed`]): the degenerate counter,
//!   for completeness.
//!
//! Each has a keyed form with bounded memory, and a Tower layer
//! ([`SlidingWindowLayer`]) built on `floodwall-ratelimit`: refusals in
//! `call` with the exact retry-after, in a [`floodwall_core::Rejected`], so
//! `floodwall-http` answers 429 with `Retry-After` and `RateLimit` fields
//! (`q` = limit, `w` = window).
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::BoxError;
//! use floodwall_sliding_window::{SlidingWindowLayer, Window};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let per_minute = SlidingWindowLayer::builder(Window::per_minute(100)?)
//!     .name("api")
//!     .build()?;
//! let handle = per_minute.handle();
//! let svc = per_minute.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
//! svc.clone().oneshot(1).await?;
//! assert_eq!(handle.limiter().remaining(tokio::time::Instant::now()), 99);
//! # Ok(())
//! # }
//! ```
//!
//! # The exact log
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::{BoxError, Rejected};
//! use floodwall_sliding_window::{SlidingWindowConfig, SlidingWindowLayer, WindowMode};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let config = SlidingWindowConfig::new(3, Duration::from_secs(60)).mode(WindowMode::Log);
//! let layer = SlidingWindowLayer::new(config)?;
//! let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
//! for n in 0..3 {
//!     svc.clone().oneshot(n).await?;
//! }
//! let err = svc.clone().oneshot(3).await.unwrap_err();
//! assert_eq!(Rejected::find(&*err).unwrap().retry_after(), Some(Duration::from_secs(60)));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// The prefix of this layer's metric names: `floodwall_sliding_window_requests_total`,
/// `floodwall_sliding_window_waited_total`, `floodwall_sliding_window_keys`, `floodwall_sliding_window_evicted_total`
/// (the convention: [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "sliding_window";

mod any;
mod config;
mod counter;
mod layer;
mod log;
mod window;

pub use any::{KeyedSlidingWindow, SlidingWindow};
pub use config::{DEFAULT_NAME, SlidingWindowConfig, WindowMode};
pub use counter::{CounterParams, CounterState, KeyedSlidingWindowCounter, SlidingWindowCounter};
pub use floodwall_core::ConfigError;
pub use floodwall_ratelimit::{Builder, Denied, Keyed, RateLimit, RateLimitHandle, error, future};
pub use layer::{SlidingWindowLayer, SlidingWindows};
pub use log::{KeyedSlidingLog, LogParams, LogState, MAX_LOG_BYTES, SlidingLog};
pub use window::{MAX_LENGTH, MAX_LIMIT, Window};
