//! The pieces every floodwall rate limiter shares.
//!
//! Each algorithm crate (`floodwall-token-bucket`, `floodwall-leaky-bucket`,
//! `floodwall-sliding-window`) provides a sans-IO core that decides one
//! request at a time. This crate turns any such core into a Tower layer and
//! gives keyed variants their bounded memory:
//!
//! - [`Limiter`]: what the layer asks of a core (decide now, or schedule
//!   within a wait bound), with [`Refund`] for waiters that give up and
//!   [`Weigh`] for requests that cost more than one unit.
//! - [`RateLimitLayer`] / [`RateLimit`]: the Tower adapter. Sheds in
//!   `call` (no permit held between `poll_ready` and `call`), or waits up to
//!   a bound; every clone shares one limiter; typed errors in
//!   [`floodwall_core::Rejected`]; metrics; a live [`RateLimitHandle`].
//! - [`Quota`] and the GCRA ([`TokenBucket`], [`Tat`]): the rate every
//!   bucket-shaped limiter (token bucket, leaky meter and shaper, the Redis
//!   limiter's local fallback) is built on, validated once.
//! - [`PerKey`] over a [`KeyRule`]: one limiter per key (client IP, user,
//!   room) for any algorithm, on a [`KeyedMap`] with a hard capacity and
//!   lossless idle eviction; [`Keyed`] puts it behind a key extractor.
//!
//! Users normally reach these through an algorithm crate's layer type.
#![forbid(unsafe_code)]

mod bucket;
pub mod error;
pub mod future;
mod gcra;
mod keyed;
mod keyed_bucket;
mod layer;
mod limiter;
mod per_key;
mod quota;
mod service;
mod tiers;
pub mod time;
mod warm;

pub use bucket::TokenBucket;
pub use gcra::{MAX_WAIT, Reservation};
pub use keyed::{Carry, KeyState, KeyedMap};
pub use keyed_bucket::{KeyedTokenBucket, Tat};
pub use layer::{
    Algorithm, Builder, KeyedLayer, LimitKey, RateLimitHandle, RateLimitLayer, Remaining, Schedules,
};
pub use limiter::{
    Advertise, Denied, Keyed, KeyedLimit, Limiter, One, Reconfigure, Refund, Reserved, Weigh,
};
pub use per_key::{DEFAULT_KEY_CAPACITY, KeyRule, PerKey, default_key_capacity, key_capacity};
pub use quota::Quota;
pub use service::RateLimit;
pub use tiers::{TierTat, TieredTokenBucket, Tiers, TiersBuilder};
pub use warm::{WarmCurve, WarmParams, WarmState, WarmUp, WarmingBucket};
