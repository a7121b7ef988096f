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
//! - [`RateLimitLayer`] / [`RateLimitService`]: the Tower adapter. Sheds in
//!   `call` (no permit held between `poll_ready` and `call`), or waits up to
//!   a bound; every clone shares one limiter; typed errors in
//!   [`floodwall_core::Rejected`]; metrics; a live [`RateLimitHandle`].
//! - [`KeyedMap`] and [`Keyed`]: one state per key (client IP, user, room)
//!   with a hard capacity and lossless idle eviction.
//!
//! Users normally reach these through an algorithm crate's layer type.
#![forbid(unsafe_code)]

pub mod error;
pub mod future;
mod keyed;
mod layer;
mod limiter;
mod service;
pub mod time;

pub use keyed::{KeyState, KeyedMap};
pub use layer::{Builder, RateLimitHandle, RateLimitLayer};
pub use limiter::{Denied, Keyed, KeyedLimit, Limiter, One, Refund, Weigh};
pub use service::RateLimitService;
