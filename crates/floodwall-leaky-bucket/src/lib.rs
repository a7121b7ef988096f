//! Leaky-bucket rate limiting for Tower, in its two classic forms.
//!
//! - **Meter** ([`LeakyMeter`], [`LeakyBucketLayer::meter`]): water drains
//!   at the rate; each request pours in; a request that would overflow the
//!   capacity is refused at once. Its decisions are exactly a token bucket's
//!   with the same rate and a burst equal to the capacity.
//! - **Shaper** ([`LeakyShaper`], [`LeakyBucketLayer::shaper`]): a queue
//!   that lets requests out one interval apart. Each admitted request waits
//!   for its start slot; a request that would find the queue full is
//!   refused at once (it never waits), with the exact time until the queue
//!   has room. Modelled on nginx's `limit_req` with `burst`.
//!
//! Both have keyed forms ([`KeyedLeakyMeter`], [`KeyedLeakyShaper`]: per
//! client IP, user or room) with bounded memory. The cores are GCRA, built
//! on `floodwall-token-bucket`; the Tower adapter is `floodwall-ratelimit`'s.
//! Refusals are [`RateLimited`](floodwall_ratelimit::error::RateLimited)
//! errors in a [`floodwall_core::Rejected`], so `floodwall-http` answers 429
//! with `Retry-After`.
//!
//! ```
//! use floodwall_core::{BoxError, Rejected};
//! use floodwall_leaky_bucket::LeakyBucketLayer;
//! use floodwall_token_bucket::Quota;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Drain 10 a second, hold 3: a burst of 3 passes, the 4th overflows.
//! let meter = LeakyBucketLayer::meter(Quota::per_second(10)?.with_burst(3)?).build();
//! let svc = meter.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
//! for n in 0..3 {
//!     svc.clone().oneshot(n).await?;
//! }
//! let err = svc.clone().oneshot(3).await.unwrap_err();
//! assert!(Rejected::find(&*err).is_some());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// The prefix of this layer's metric names: `floodwall_leaky_bucket_requests_total`,
/// `floodwall_leaky_bucket_waited_total`, `floodwall_leaky_bucket_keys`, `floodwall_leaky_bucket_evicted_total`
/// (the convention: [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "leaky_bucket";

mod config;
mod layer;
mod meter;
mod shaper;

pub use config::LeakyBucketConfig;
pub use floodwall_ratelimit::{Denied, Keyed, error, future};
pub use layer::{
    Builder, DEFAULT_NAME, LeakyBucketHandle, LeakyBucketLayer, LeakyBucketService, Meter, Shaper,
};
pub use meter::{KeyedLeakyMeter, LeakyMeter};
pub use shaper::{KeyedLeakyShaper, LeakyShaper};
