//! A GCRA token-bucket rate limiter for Tower.
//!
//! - [`TokenBucket`]: the sans-IO core. One `AtomicU64` of state, a CAS loop,
//!   weighted acquisition, exact retry-after, no clock reads of its own.
//! - [`KeyedTokenBucket`]: one bucket per key (client IP, user, room) with a
//!   hard cap on remembered keys and lossless idle eviction.
//! - [`TokenBucketLayer`] / [`TokenBucketService`]: the Tower adapter. Sheds in
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
//!     .build();
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
//! assert_eq!(handle.available(), 0);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The prefix of this layer's metric names: `floodwall_token_bucket_requests_total`,
/// `floodwall_token_bucket_waited_total`, `floodwall_token_bucket_keys`, `floodwall_token_bucket_evicted_total`
/// (the convention: [`floodwall_core::metrics`]).
pub const METRIC_PREFIX: &str = "token_bucket";

mod bucket;
mod config;
mod gcra;
mod keyed;
mod layer;
mod quota;

pub use bucket::TokenBucket;
pub use config::{ConfigError, TokenBucketConfig};
pub use floodwall_ratelimit::{Denied, Keyed, Limiter, One, Refund, Weigh, error, future};
pub use gcra::{MAX_WAIT, Reservation};
pub use keyed::KeyedTokenBucket;
pub use layer::{Builder, DEFAULT_NAME, TokenBucketHandle, TokenBucketLayer, TokenBucketService};
pub use quota::{Quota, QuotaError};
