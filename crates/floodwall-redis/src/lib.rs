//! Distributed GCRA rate limiting on Redis, with local fallback, for Tower.
//!
//! A per-instance limit cannot enforce a global quota once a service runs
//! on many instances. This crate keeps the quota's state — one GCRA
//! theoretical arrival time per key — in the Redis the deployment already
//! runs, and updates it atomically with one Lua script per decision.
//!
//! - [`RedisLimiter`]: the limiter. One `EVALSHA` per decision (the script
//!   is loaded once and reloaded on `NOSCRIPT`), Redis's own clock (`TIME`),
//!   keys that expire as soon as their bucket is full again, optional token
//!   **leasing**, a per-call **timeout** (20 ms by default), a
//!   **circuit breaker** guarding Redis and a **fallback**: a local token
//!   bucket at a share of the global rate, fail open, or fail closed.
//! - [`RedisRateLimitLayer`]: the Tower adapter, keyed by any function of the
//!   request; refusals are the same
//!   [`RateLimited`](error::RateLimited) errors as every floodwall rate
//!   limiter's, so `floodwall-http` and `floodwall-grpc` answer 429 /
//!   `RESOURCE_EXHAUSTED` with `Retry-After`.
//! - [`RedisConnection`]: what it talks through — a connection of
//!   [redis-rs](redis), made from a `redis::Client` (credentials, TLS with
//!   the `tls` feature, database numbers), a `ConnectionManager`, a cluster
//!   client or connection, or Sentinel (feature `sentinel`).
//!
//! ```no_run
//! use std::time::Duration;
//! use floodwall_redis::{Fallback, RedisLimiter, RedisRateLimitLayer};
//! use floodwall_ratelimit::Quota;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//! // 1,000 requests per second per room, across every instance.
//! let per_room = RedisLimiter::builder(redis, Quota::per_second(1000)?.with_burst(100)?)
//!     .name("room")
//!     .lease(10, Duration::from_millis(100))
//!     .fallback(Fallback::Local { share: 0.25 }) // four instances
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(RedisRateLimitLayer::new(per_room, |room: &u64| Some(*room)))
//!     .service(service_fn(|room: u64| async move { Ok::<_, floodwall_core::BoxError>(room) }));
//! svc.oneshot(42).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The decision
//! For a quota of rate `r` (interval `I = 1/r`) and burst `b`, the script
//! reads `now` from Redis's `TIME` (so instances' clocks do not matter),
//! computes `tat = max(TAT, now)` and the tokens available,
//! `⌊(now + b·I − tat) / I⌋`, and grants `min(want, available)` tokens if
//! that covers the request's weight `n`, moving the TAT by what it grants.
//! Without leasing `want = n` and this is exactly the token bucket's GCRA
//! step (a request conforms iff `tat + n·I − now ≤ b·I`; a refusal is told
//! `retry_after = tat + n·I − b·I − now`). The key's TTL is `TAT − now`:
//! once the bucket is full again the key disappears, so idle keys cost
//! Redis nothing.
//!
//! # Leasing, and what it can over-admit
//! With [`lease(max_tokens, max_age)`](Builder::lease), a request that finds
//! no leased tokens asks Redis for a batch of `L = min(max_tokens, b,
//! ⌊r·max_age⌋)` tokens, spends one and keeps the rest for the next
//! requests on the same key, which need no round trip; leased tokens expire
//! after `max_age`. At most one lease fetch per key is in flight per
//! instance (others ask only for themselves), so an instance never holds
//! more than `L − 1` unspent tokens of a key. Tokens are taken out of the
//! global bucket when leased, so leasing never raises the long-run rate.
//! The bound, for `N` instances sharing a key: over any interval the
//! requests admitted exceed what the global bucket alone would admit by at
//! most `N·(L − 1)` (tokens leased before the interval and spent in it),
//! and fall short of it by at most `N·(L − 1)` (leased tokens that expire or
//! are still held at the end). Redis round trips drop to about `1/L` of the
//! requests. With `L < 2` (slow quotas) leasing is off.
//!
//! # Remembered refusals
//! When Redis refuses a key it says when the key's next token conforms;
//! until then the instance refuses that key's requests itself, with the
//! exact remaining wait, and no round trip. This is exact — a GCRA bucket
//! only refills with time, so Redis would refuse them too — and it means a
//! key far over its quota costs Redis one call per token interval per
//! instance, not one per request. (The wait is counted from when the
//! refused call was sent, so a remembered refusal never outlasts Redis's.)
//!
//! # When Redis is away
//! Every call is bounded by the timeout, connecting and script reload
//! included. A failure or timeout is recorded by a circuit breaker
//! ([`RedisLimiter::default_breaker`]: open after 3 failures in a row,
//! 500 ms growing to 1 s) and the request is decided by the [`Fallback`]
//! at once. While the breaker is open no request touches Redis; after the
//! open duration a few probes go through, and when they succeed Redis
//! decides again. [`RedisLimiter::health`] and the
//! `floodwall_redis_fallback` gauge tell which is deciding, and why:
//! every failed call is classified ([`ErrorClass`]: unreachable, timeout,
//! auth, read-only, loading, script) in the health, in
//! [`RedisStats::errors_by_class`] and in the `reason` label of
//! `floodwall_redis_errors_total`. An `auth` error will not heal by
//! waiting; a `read_only` or `loading` one usually does within seconds.
//!
//! # Redis Cluster
//! The script touches exactly one key, passed in `KEYS[1]`, so every call
//! stays within one hash slot, as Cluster requires. Keys are
//! `{prefix}{key}`, by default `floodwall:{name}:{key}`; each key hashes on
//! its own and different keys spread over the cluster. A hash tag in the
//! key (`floodwall:room:{42}`) decides the slot by the tagged part only: use
//! one to co-locate related limits with other data of the same entity, and
//! never a tag shared by every key (`{floodwall}:…`), which would put the
//! whole limiter on one node. [`hash_slot`] computes a key's slot.
//!
//! Build the limiter from a `redis::cluster::ClusterClient` (or a
//! `ClusterConnection`): redis-rs routes each call to the slot's master,
//! follows `MOVED` and `ASK`, and finds the new master after a failover;
//! calls that meet a failover in progress fail as
//! [`ErrorClass::ReadOnly`] and are decided by the fallback meanwhile.
//!
//! # Metrics
//! `floodwall_redis_admitted_total` / `floodwall_redis_rejected_total`
//! (labels `name`, `source`: `redis`, `lease`, `cached`, `fallback`,
//! `fail_open`, `fail_closed`), `floodwall_redis_round_trips_total`,
//! `floodwall_redis_round_trip_seconds`, `floodwall_redis_errors_total`
//! (label `reason`: an [`ErrorClass`]) and the `floodwall_redis_fallback`
//! gauge.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The prefix of the Redis limiter's metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_redis_requests_total{name,
/// outcome, reason, source}` (`source`: who decided: `redis`, `lease`,
/// `cached`, `fallback`, `fail_open`, `fail_closed`);
/// `floodwall_redis_round_trips_total{name}`,
/// `floodwall_redis_round_trip_seconds{name}`,
/// `floodwall_redis_errors_total{name, reason}` and the gauge
/// `floodwall_redis_fallback{name}` (1 while the local fallback decides).
pub const METRIC_PREFIX: &str = "redis";

/// The label naming who decided a request on `floodwall_redis_requests_total`.
pub const LABEL_SOURCE: &str = "source";

mod cluster;
mod config;
mod connection;
pub mod error;
mod layer;
mod lease;
mod limiter;
mod script;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;

/// Entry points for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    /// Reads `bytes` as redis-rs would off the socket and then as the
    /// limiter reads its script's reply for a request that asked for
    /// `want` tokens: the tokens granted, if the reply is one.
    pub fn script_reply(bytes: &[u8], want: u32) -> Option<u32> {
        let value = redis::parse_redis_value(bytes).ok()?;
        crate::script::parse(value, want).ok().map(|g| g.granted)
    }
}

pub use cluster::hash_slot;
pub use config::{LeaseConfig, RedisLimiterConfig};
pub use connection::RedisConnection;
pub use error::ErrorClass;
pub use floodwall_core::ConfigError;
pub use floodwall_ratelimit::{One, Quota, Weigh};
pub use layer::{RedisRateLimit, RedisRateLimitLayer};
/// The redis-rs crate this one is built on, for building clients and
/// connections of the same version.
pub use redis;

/// The response future of [`RedisRateLimit`].
pub mod future {
    pub use crate::layer::{RedisCheck, ResponseFuture};
}
#[doc(inline)]
pub use future::ResponseFuture;
pub use limiter::{
    Builder, DEFAULT_NAME, ErrorCounts, Fallback, Health, Key, RedisLimiter, RedisStats, Refusal,
    Source,
};
