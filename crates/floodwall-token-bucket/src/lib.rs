//! A GCRA token-bucket rate limiter for Tower.
//!
//! - [`TokenBucket`]: the sans-IO core. One `AtomicU64` of state, a CAS loop,
//!   weighted acquisition, exact retry-after, no clock reads of its own.
//! - [`KeyedTokenBucket`]: one bucket per key (client IP, user, room) with a
//!   hard cap on remembered keys and lossless idle eviction.
//! - [`TokenBucketLayer`]: the Tower adapter. Sheds in
//!   `call` by default; optional wait mode; clones share one limit.
//! - [`error`]: [`RateLimited`](error::RateLimited) and
//!   [`ExceedsBurst`](error::ExceedsBurst), boxed in
//!   [`floodwall_core::Rejected`] so `floodwall-http` and `floodwall-grpc`
//!   turn them into 429 / `RESOURCE_EXHAUSTED` with `Retry-After`.
//!
//! The Tower adapter and the keyed map are `floodwall-ratelimit`'s, shared
//! with the other rate limiters; this crate re-exports what its users need.
//!
//! # Semantics
//! For a rate `r` (interval `I = 1/r`) and burst `b`, a request of weight `n`
//! at `t` computes `tat' = max(TAT, t) + n·I` and conforms iff
//! `tat' − t ≤ b·I`. This is GCRA(I, (b−1)·I) in virtual-scheduling form and
//! is exactly a bucket of `b` tokens refilling one every `I`: it starts full,
//! never holds more than `b`, and a refused request is told
//! `retry_after = tat' − b·I − t`.
//!
//! ```
//! use floodwall_token_bucket::{Quota, TokenBucketLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! # use floodwall_core::BoxError;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let limit = TokenBucketLayer::builder(Quota::per_second(100)?.with_burst(10)?)
//!     .name("api")
//!     .build()?;
//! let handle = limit.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(limit)
//!     .service(service_fn(|_: ()| async { Ok::<_, BoxError>("ok") }));
//!
//! let mut admitted = 0;
//! for _ in 0..25 {
//!     if svc.clone().oneshot(()).await.is_ok() {
//!         admitted += 1;
//!     }
//! }
//! assert_eq!(admitted, 10);
//! assert_eq!(handle.remaining(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Wait mode
//! A request without a token waits for its turn if that comes
//! within `max_wait` (capped at about 36 years), and is refused at once
//! otherwise. Waiting requests queue in arrival order, one interval
//! apart (each reserves its tokens when it arrives), and hold no
//! readiness of the inner service while they wait. A waiter that is
//! dropped never reaches the inner service and cancels its reservation:
//! the newest waiter's tokens go back at once; an earlier waiter's slot
//! goes unused, because the waiters behind it keep their start times.
//! Zero (the default) means never wait.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::{BoxError, Rejected};
//! use floodwall_token_bucket::{Quota, TokenBucketLayer};
//! use tokio::time::Instant;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // One request every 100 ms; wait up to 250 ms for a turn.
//! let layer = TokenBucketLayer::builder(Quota::per_second(10)?.with_burst(1)?)
//!     .wait(Duration::from_millis(250))
//!     .build()?;
//! let t0 = Instant::now();
//! let svc = layer.layer(service_fn(move |_: ()| async move {
//!     Ok::<_, BoxError>(t0.elapsed())
//! }));
//!
//! let calls: Vec<_> = (0..3).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
//! tokio::task::yield_now().await;
//! // A fourth would wait 300 ms: refused at once, told how long it would take.
//! let err = svc.clone().oneshot(()).await.unwrap_err();
//! assert_eq!(Rejected::find(&*err).unwrap().retry_after(), Some(Duration::from_millis(300)));
//!
//! let mut started = Vec::new();
//! for call in calls {
//!     started.push(call.await??);
//! }
//! let ms = Duration::from_millis;
//! assert_eq!(started, [ms(0), ms(100), ms(200)]);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The prefix of this layer's metric names: `floodwall_token_bucket_requests_total`,
/// `floodwall_token_bucket_waited_total`, `floodwall_token_bucket_keys`, `floodwall_token_bucket_evicted_total`
/// (the convention: [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "token_bucket";

mod config;
mod layer;
mod warm;

pub use config::{DEFAULT_NAME, TokenBucketConfig};
pub use floodwall_core::ConfigError;
pub use floodwall_ratelimit::{
    Builder, Denied, Keyed, KeyedTokenBucket, Limiter, MAX_WAIT, One, Quota, RateLimit,
    RateLimitHandle, Refund, Reservation, Tat, TokenBucket, Weigh, error, future,
};
pub use floodwall_ratelimit::{TieredTokenBucket, Tiers, WarmCurve, WarmUp, WarmingBucket};
pub use layer::{TokenBucketLayer, TokenBuckets};
pub use warm::{WarmUpConfig, WarmUpLayer, WarmingBuckets};
