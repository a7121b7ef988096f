//! A bulkhead: a fixed number of permits, and a bounded FIFO wait for them.
//!
//! The simplest use of the CoDel layer's worker pool: no drop policy but a
//! fixed wait. At most `max_concurrent` requests run at once; a request that
//! finds none free waits, oldest first, in a queue of at most `max_queue`,
//! for at most `max_wait` (zero: refused at once), and is refused with
//! [`Shed`] (kind `Overloaded`: HTTP 503, gRPC `UNAVAILABLE`) if the queue
//! is full or its wait runs out. A freed permit goes to the oldest waiter; a
//! waiter whose future is dropped leaves at once and takes no permit. This
//! is tower-resilience's bulkhead, and tower's `ConcurrencyLimit` +
//! `LoadShed` (`max_wait` zero) without a `Buffer`.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_codel::{BulkheadConfig, BulkheadLayer};
//! use floodwall_core::{BoxError, RejectKind, Rejected};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = BulkheadLayer::new(BulkheadConfig {
//!     max_concurrent: 1,
//!     max_queue: 0,
//!     max_wait: Duration::ZERO,
//! })?;
//! let svc = layer.layer(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, BoxError>(())
//! }));
//! let running = tokio::spawn(svc.clone().oneshot(()));
//! tokio::task::yield_now().await;
//! let err = svc.clone().oneshot(()).await.unwrap_err();
//! assert_eq!(Rejected::find(&*err).unwrap().kind(), RejectKind::Overloaded);
//! running.await??;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::{Codel, CodelConfig, CodelHandle, CodelLayer, ConfigError, Lifo, Policy};

#[cfg(doc)]
use crate::Shed;

/// The default name of a bulkhead layer (metric label).
pub const DEFAULT_NAME: &str = "bulkhead";

/// The prefix of the bulkhead's metric names:
/// `floodwall_bulkhead_requests_total{name, outcome, reason}` and the
/// queue's detail metrics (`floodwall_bulkhead_queue_length`, …, as the
/// CoDel layer's).
pub const METRIC_PREFIX: &str = "bulkhead";

/// A bulkhead's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BulkheadConfig {
    /// How many requests run at once. Default 64.
    pub max_concurrent: usize,
    /// How many requests may wait for a permit; more are refused at once.
    /// Default 0.
    pub max_queue: usize,
    /// How long a request may wait for a permit; zero refuses at once when
    /// none is free. Default 0.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            max_queue: 0,
            max_wait: Duration::ZERO,
        }
    }
}

impl BulkheadConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// Zero `max_concurrent`, or a `max_wait` over a day.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::new("max_concurrent", "must be at least 1"));
        }
        if self.max_wait > Duration::from_secs(86_400) {
            return Err(ConfigError::new("max_wait", "must be at most a day"));
        }
        Ok(())
    }

    /// The CoDel queue this bulkhead is: a FIFO queue whose every request
    /// may wait exactly `max_wait` (Fail-at-Scale timeouts with M = N).
    pub(crate) fn codel(&self) -> CodelConfig {
        let waits = !self.max_wait.is_zero();
        // Nobody waits without a wait: a placeholder timeout for a queue of 0.
        let wait = if waits {
            self.max_wait
        } else {
            Duration::from_millis(1)
        };
        CodelConfig {
            workers: self.max_concurrent,
            max_queue: if waits { self.max_queue } else { 0 },
            policy: Policy::FailAtScale {
                target: wait,
                interval: wait,
            },
            lifo: Lifo::Never,
            min_remaining: Duration::ZERO,
        }
    }
}

/// The service a [`BulkheadLayer`] builds.
pub type Bulkhead<S> = Codel<S>;

/// A live view of a bulkhead: permits in use, waiters, and
/// [`set_workers`](CodelHandle::set_workers) to change the permits (fewer
/// never cancel running requests; the excess drains as they finish).
pub type BulkheadHandle = CodelHandle;

/// A Tower layer that runs at most a fixed number of requests at once, with
/// a bounded FIFO wait for a permit (see the [module docs](self)).
///
/// # Clone
/// The permits live in an `Arc`: every service built from one layer value,
/// and every clone, shares them.
#[derive(Clone)]
pub struct BulkheadLayer {
    inner: CodelLayer,
}

impl BulkheadLayer {
    /// A bulkhead with `config`, named [`DEFAULT_NAME`].
    ///
    /// # Errors
    /// As [`BulkheadConfig::validate`].
    pub fn new(config: BulkheadConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name.
    pub fn builder(config: BulkheadConfig) -> BulkheadBuilder {
        BulkheadBuilder {
            config,
            name: Arc::from(DEFAULT_NAME),
        }
    }

    /// A handle on the live permits and waiters.
    pub fn handle(&self) -> BulkheadHandle {
        self.inner.handle()
    }
}

/// Builds a [`BulkheadLayer`]; made by [`BulkheadLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BulkheadBuilder {
    config: BulkheadConfig,
    name: Arc<str>,
}

impl BulkheadBuilder {
    /// The metric label and handle name. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`BulkheadConfig::validate`].
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        self.config.validate()?;
        Ok(BulkheadLayer {
            inner: CodelLayer::builder(self.config.codel())
                .name(self.name)
                .metric_prefix(METRIC_PREFIX)
                .build()?,
        })
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BulkheadLayer").field(&self.inner).finish()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
