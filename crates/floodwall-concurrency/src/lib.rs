//! Adaptive concurrency limits: how many requests may be in flight at once,
//! learned from the latency (and the losses) the requests see.
//!
//! A fixed limit is either too low (capacity wasted when the service is
//! fast) or too high (a queue builds when it slows down). An adaptive limit
//! comes down when latency rises above its no-load level and goes up while
//! latency stays flat and the limit is in use.
//!
//! - [`ConcurrencyLimiter`]: admits while fewer than `limit` requests are in flight
//!   (one compare-and-swap), optionally sharing the limit between priority
//!   classes ([`Partitions`]: a guaranteed share each, borrowing when idle,
//!   atomic), and feeds each finished request to an [`Algorithm`];
//! - [`AdaptiveLimitLayer`]: the Tower layer (sheds in `call` with
//!   [`LimitExceeded`], kind `Overloaded`), with metrics and a handle;
//! - the algorithms, sans-IO: [`Vegas`], [`Gradient2`] and [`Aimd`] with
//!   Netflix concurrency-limits' formulas and defaults, [`Windowed`] (its
//!   `WindowedLimit`), [`EnvoyGradient`] (Envoy's adaptive concurrency
//!   gradient controller) and [`Bbr`] (go-kratos/aegis' CPU-aware limiter,
//!   reading [`cpu::SystemCpu`]).
//!
//! A CoDel queue's worker count can follow the limit: pass
//! `CodelHandle::set_workers` to [`Builder::on_limit_change`].
//!
//! ```
//! use floodwall_concurrency::{AdaptiveLimitLayer, Vegas, VegasConfig, WindowConfig, Windowed};
//! use floodwall_core::BoxError;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Vegas, moving about once per round trip (100 ms windows).
//! let vegas = Windowed::new(
//!     Vegas::new(VegasConfig::default())?,
//!     WindowConfig::every(Duration::from_millis(100)),
//! )?;
//! let layer = AdaptiveLimitLayer::builder(vegas).name("rooms").build()?;
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, BoxError>(x + 1) }));
//! assert_eq!(svc.oneshot(41).await?, 42);
//! assert_eq!((handle.limit(), handle.in_flight()), (20, 0));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// The prefix of the adaptive limit's metric names (the convention:
/// [`floodwall_core::metrics`]): `floodwall_concurrency_requests_total{name,
/// outcome, reason}`; `floodwall_concurrency_calls_total{name, outcome}` for
/// admitted requests as they finish (`success`, `dropped`, `ignored`,
/// `cancelled`); the gauges `floodwall_concurrency_limit{name}`,
/// `floodwall_concurrency_in_flight{name}` and
/// `floodwall_concurrency_rtt_seconds{name, estimate}`.
pub const METRIC_PREFIX: &str = "concurrency";

mod aimd;
mod bbr;
pub mod cpu;
mod envoy;
pub mod error;
mod gradient2;
mod layer;
mod limiter;
mod partition;
mod policy;
mod vegas;
mod windowed;

#[cfg(test)]
mod testing;

use std::time::Duration;

use tokio::time::Instant;

pub use aimd::{Aimd, AimdConfig};
pub use bbr::{Bbr, BbrConfig};
pub use envoy::{EnvoyGradient, EnvoyGradientConfig};
pub use error::{ConfigError, LimitExceeded};
pub use gradient2::{Gradient2, Gradient2Config};
pub use layer::{AdaptiveLimit, AdaptiveLimitHandle, AdaptiveLimitLayer, Builder, DEFAULT_NAME};
pub use partition::{ByCriticality, Partition, SingleClass};
pub use policy::{AdaptiveLimitPolicy, OnCancel};

/// The response futures of [`AdaptiveLimit`].
pub mod future {
    /// The response future of [`AdaptiveLimit`](crate::AdaptiveLimit): the
    /// inner future with the request's slot, or a refusal ready at once.
    pub type ResponseFuture<F, A, C = floodwall_core::ResultClassifier, P = crate::SingleClass> =
        floodwall_admit::future::ResponseFuture<F, crate::AdaptiveLimitPolicy<A, C, P>>;
}
#[doc(inline)]
pub use future::ResponseFuture;
pub use limiter::{
    ConcurrencyLimiter, LimitRefused, MAX_CLASSES, MAX_IN_FLIGHT, Partitions, Token,
};
pub use vegas::{Vegas, VegasConfig};
pub use windowed::{WindowConfig, Windowed};

/// What one finished request tells the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// From sending the request to its answer (or its drop).
    pub rtt: Duration,
    /// Requests in flight when this one started, itself included.
    pub inflight: u32,
    /// It timed out or was refused as overloaded.
    pub dropped: bool,
}

/// The round-trip times an algorithm steers by, for handles and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimates {
    /// The reference RTT the latest one is compared with: Vegas' no-load
    /// RTT, Gradient2's long-term average, the Envoy controller's minRTT,
    /// the BBR limiter's minimum RT. `None` until measured (and for AIMD,
    /// which has none).
    pub baseline: Option<Duration>,
    /// The most recent RTT the algorithm used: the last sample's, or the
    /// Envoy controller's last window aggregate.
    pub latest: Option<Duration>,
}

/// A concurrency-limit algorithm: a sans-IO state machine fed one sample per
/// finished request, at the instant it finished.
///
/// Implement it to plug an algorithm of your own into [`ConcurrencyLimiter`] and
/// [`AdaptiveLimitLayer`]; `update` runs under the limiter's lock, once per
/// finished request, so it should be a few arithmetic operations.
pub trait Algorithm: Send + 'static {
    /// The limit now.
    fn limit(&self) -> u32;

    /// Takes one sample, taken at `now`, and returns the new limit.
    fn update(&mut self, now: Instant, sample: &Sample) -> u32;

    /// The RTTs the algorithm steers by. The default reports none.
    fn estimates(&self) -> Estimates {
        Estimates::default()
    }
}

/// An algorithm whose parameters can change while it runs (live
/// reconfiguration, through
/// [`AdaptiveLimitHandle::reconfigure`](crate::AdaptiveLimitHandle::reconfigure)):
/// the limit it has carries over, clamped to the new bounds, and its RTT
/// estimates are kept.
pub trait Reconfigure: Algorithm + Sized {
    /// The configuration it takes.
    type Config;

    /// Applies `config`, validated as the algorithm's constructor
    /// validates (a refused configuration changes nothing).
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending field.
    fn reconfigure(&mut self, config: Self::Config) -> Result<(), ConfigError>;
}

/// What [`AdaptiveLimitLayer::new`] and [`builder`](AdaptiveLimitLayer::builder)
/// take: an algorithm's config (`VegasConfig`, `Gradient2Config`,
/// `AimdConfig`, `EnvoyGradientConfig`, `BbrConfig`), validated into the
/// algorithm, or an algorithm already built (a [`Windowed`] one, or your
/// own [`Algorithm`]).
pub trait IntoAlgorithm {
    /// The algorithm it becomes.
    type Algorithm: Algorithm;

    /// Validates and builds the algorithm.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending field.
    fn into_algorithm(self) -> Result<Self::Algorithm, ConfigError>;
}

impl<A: Algorithm> IntoAlgorithm for A {
    type Algorithm = A;

    fn into_algorithm(self) -> Result<A, ConfigError> {
        Ok(self)
    }
}

macro_rules! config_into_algorithm {
    ($($config:ty => $algorithm:ty),* $(,)?) => {$(
        impl IntoAlgorithm for $config {
            type Algorithm = $algorithm;

            fn into_algorithm(self) -> Result<$algorithm, ConfigError> {
                <$algorithm>::new(self)
            }
        }
    )*};
}

config_into_algorithm!(
    VegasConfig => Vegas,
    Gradient2Config => Gradient2,
    AimdConfig => Aimd,
    EnvoyGradientConfig => EnvoyGradient,
    BbrConfig => Bbr,
);

/// Netflix's `Log10RootFunction`: `max(1, ⌊log10 n⌋)` for `n < 1000`, and
/// `⌊√n⌋` from 1000 on (sic: the library switches to the square root there).
pub fn log10_root(n: u32) -> u32 {
    if n < 1000 {
        // ⌊log10 n⌋ for n in 0..1000, at least 1.
        match n {
            0..=99 => 1,
            _ => 2,
        }
    } else {
        (f64::from(n)).sqrt() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log10_root_matches_the_library_table() {
        assert_eq!(log10_root(0), 1);
        assert_eq!(log10_root(9), 1);
        assert_eq!(log10_root(10), 1);
        assert_eq!(log10_root(99), 1);
        assert_eq!(log10_root(100), 2);
        assert_eq!(log10_root(999), 2);
        assert_eq!(log10_root(1000), 31);
        assert_eq!(log10_root(10_000), 100);
    }
}
