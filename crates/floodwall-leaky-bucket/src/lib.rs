//! Leaky-bucket rate limiting for Tower, in its two classic forms.
//!
//! - **Meter** ([`LeakyMeter`], [`LeakyMode::Meter`]): water drains
//!   at the rate; each request pours in; a request that would overflow the
//!   capacity is refused at once. Its decisions are exactly a token bucket's
//!   with the same rate and a burst equal to the capacity.
//! - **Shaper** ([`LeakyShaper`], [`LeakyMode::Shaper`]): a queue
//!   that lets requests out one interval apart. Each admitted request waits
//!   for its start slot; a request that would find the queue full is
//!   refused at once (it never waits), with the exact time until the queue
//!   has room. Modelled on nginx's `limit_req` with `burst`.
//!
//! Both have a keyed form ([`KeyedLeakyBucket`]: per client IP, user or
//! room) with bounded memory. The cores are GCRA on `floodwall-ratelimit`'s
//! [`Quota`], as is the Tower adapter.
//! Refusals are [`RateLimited`](floodwall_ratelimit::error::RateLimited)
//! errors in a [`floodwall_core::Rejected`], so `floodwall-http` answers 429
//! with `Retry-After`.
//!
//! ```
//! use floodwall_core::{BoxError, Rejected};
//! use floodwall_leaky_bucket::LeakyBucketLayer;
//! use floodwall_ratelimit::Quota;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Drain 10 a second, hold 3: a burst of 3 passes, the 4th overflows.
//! let meter = LeakyBucketLayer::new(Quota::per_second(10)?.with_burst(3)?)?;
//! let svc = meter.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
//! for n in 0..3 {
//!     svc.clone().oneshot(n).await?;
//! }
//! let err = svc.clone().oneshot(3).await.unwrap_err();
//! assert!(Rejected::find(&*err).is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # Shaping
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::BoxError;
//! use floodwall_leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
//! use floodwall_ratelimit::Quota;
//! use tokio::time::Instant;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Release one request every 50 ms; up to 10 may wait.
//! let shaper = LeakyBucketLayer::new(LeakyBucketConfig::shaper(Quota::per_second(20)?, 10))?;
//! let t0 = Instant::now();
//! let svc = shaper.layer(service_fn(move |_: ()| async move {
//!     Ok::<_, BoxError>(t0.elapsed())
//! }));
//! let calls: Vec<_> = (0..3).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
//! let mut starts = Vec::new();
//! for call in calls {
//!     starts.push(call.await??);
//! }
//! let ms = Duration::from_millis;
//! assert_eq!(starts, [ms(0), ms(50), ms(100)]);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// The prefix of this layer's metric names: `floodwall_leaky_bucket_requests_total`,
/// `floodwall_leaky_bucket_waited_total`, `floodwall_leaky_bucket_keys`, `floodwall_leaky_bucket_evicted_total`
/// (the convention: [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "leaky_bucket";

mod bucket;
mod config;
mod keyed;
mod layer;
mod meter;
mod shaper;

pub use bucket::LeakyBucket;
pub use config::{DEFAULT_NAME, LeakyBucketConfig, LeakyMode};
pub use floodwall_core::ConfigError;
pub use floodwall_ratelimit::{
    Builder, Denied, Keyed, Quota, RateLimit, RateLimitHandle, error, future,
};
pub use keyed::{KeyedLeakyBucket, LeakyParams, Level};
pub use layer::{LeakyBucketLayer, LeakyBuckets};
pub use meter::LeakyMeter;
pub use shaper::LeakyShaper;
