//! **floodwall**: Tower layers that keep services alive under overload.
//!
//! Each layer is its own crate, re-exported here behind a feature:
//!
//! | module | feature | what it does |
//! |---|---|---|
//! | [`core`] | always | shared vocabulary: rejections, classification, arrival, deadline, priority |
//! | `token_bucket` | `token-bucket` (default) | GCRA token-bucket rate limiter, single or keyed |
//! | `leaky_bucket` | `leaky-bucket` | leaky bucket as a meter (refuses overflow) or a shaper (queues, spaces starts) |
//! | `sliding_window` | `sliding-window` | two-window counter, exact sliding log, fixed window |
//! | `throttle` | `throttle` | Google-SRE adaptive client throttling, gRPC-A6 retry budget and retries |
//! | `breaker` | `breaker` | circuit breaker: count and time windows, failure and slow-call rates, half-open probes, ramp |
//! | `tail` | `tail` | tail latency and degradation: hedging (gRPC A6), request coalescing, fallback |
//! | `hotkey` | `hotkey` | hot keys: HeavyKeeper Top-K, hot-key marking, per-hot-key quotas and cache, write aggregation |
//! | `deadline` | `deadline` | deadline propagation: `grpc-timeout` and an HTTP header, server enforcement, task-scoped deadlines for outbound calls |
//! | `codel` | `codel` | server admission queue: worker limit, Fail-at-Scale timeouts or RFC 8289 CoDel, adaptive LIFO, deadline-aware drops |
//! | `concurrency` | `concurrency` | adaptive concurrency limit: Vegas, Gradient2, AIMD, Envoy gradient controller, BBR-style CPU-aware; priority partitions |
//! | `priority` | `priority` | DAGOR priority admission: edge assignment, adaptive admission level, collaborative clients, criticality mode |
//! | `ratelimit` | any rate limiter | the Tower adapter and bounded keyed map the rate limiters share |
//! | `http` | `http` | rejections as HTTP 429/503/504 with `Retry-After` and `RateLimit` fields |
//! | `grpc` | `grpc` | rejections as `tonic::Status` with `grpc-retry-pushback-ms` |
//! | `redis` | `redis` | distributed GCRA limiter on Redis: token leasing, per-call timeout, breaker, local fallback |
//!
//! `full` enables everything, `serde` the configuration types'
//! `Deserialize`.
//!
//! # Example
//!
//! A per-client-IP limit on an HTTP service, rejections answered with 429:
//!
//! ```
//! # #[cfg(all(feature = "token-bucket", feature = "http"))] {
//! use std::net::{IpAddr, SocketAddr};
//! use floodwall::core::BoxError;
//! use floodwall::http::HttpRejectionLayer;
//! use floodwall::token_bucket::{Quota, TokenBucketLayer};
//! use tower::{ServiceBuilder, service_fn};
//!
//! fn client_ip(req: &http::Request<()>) -> Option<IpAddr> {
//!     req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let per_ip = TokenBucketLayer::builder(Quota::per_second(10)?.with_burst(20)?)
//!     .name("per_ip")
//!     .capacity(100_000)
//!     .build_keyed(client_ip)?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(HttpRejectionLayer::new())
//!     .layer(per_ip)
//!     .service(service_fn(|_: http::Request<()>| async {
//!         Ok::<_, BoxError>(http::Response::new(String::new()))
//!     }));
//! # let _ = svc;
//! # Ok(()) }
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use floodwall_core as core;

/// The Tower wiring every admission-style layer shares (for writing your
/// own layer the floodwall way, and for the body-end and readiness modes).
pub use floodwall_admit as admit;

#[cfg(feature = "token-bucket")]
#[cfg_attr(docsrs, doc(cfg(feature = "token-bucket")))]
pub use floodwall_token_bucket as token_bucket;

#[cfg(feature = "leaky-bucket")]
#[cfg_attr(docsrs, doc(cfg(feature = "leaky-bucket")))]
pub use floodwall_leaky_bucket as leaky_bucket;

#[cfg(feature = "sliding-window")]
#[cfg_attr(docsrs, doc(cfg(feature = "sliding-window")))]
pub use floodwall_sliding_window as sliding_window;

/// The Tower adapter and keyed state shared by the rate limiters, for
/// plugging in a limiter of your own.
#[cfg(any(
    feature = "token-bucket",
    feature = "leaky-bucket",
    feature = "sliding-window"
))]
pub use floodwall_ratelimit as ratelimit;

#[cfg(feature = "throttle")]
#[cfg_attr(docsrs, doc(cfg(feature = "throttle")))]
pub use floodwall_throttle as throttle;

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub use floodwall_breaker as breaker;

#[cfg(feature = "codel")]
#[cfg_attr(docsrs, doc(cfg(feature = "codel")))]
pub use floodwall_codel as codel;
#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub use floodwall_codel::bulkhead;
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub use floodwall_concurrency as concurrency;

#[cfg(feature = "deadline")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadline")))]
pub use floodwall_deadline as deadline;

#[cfg(feature = "priority")]
#[cfg_attr(docsrs, doc(cfg(feature = "priority")))]
pub use floodwall_priority as priority;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use floodwall_http as http;

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub use floodwall_grpc as grpc;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use floodwall_redis as redis;

#[cfg(feature = "tail")]
#[cfg_attr(docsrs, doc(cfg(feature = "tail")))]
pub use floodwall_tail as tail;

#[cfg(feature = "hotkey")]
#[cfg_attr(docsrs, doc(cfg(feature = "hotkey")))]
pub use floodwall_hotkey as hotkey;
