//! Fallback: degrade to another answer instead of failing.
//!
//! This file holds the layer, its builder and its handle, and the state
//! they share; `trigger.rs` the configuration and the sans-IO decision
//! (which failures the fallback answers), `source.rs` where fallback
//! answers come from, `error.rs` the fallback's own failure and
//! `adapter.rs` the Tower service and its response future.

use std::fmt;
use std::sync::Arc;

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{ConfigError, ResultClassifier};
use metrics::Counter;

#[cfg(doc)]
use floodwall_core::Classify;

mod adapter;
mod error;
mod source;
mod trigger;

pub use adapter::{FallbackResponseFuture, FallbackService};
pub use error::FallbackFailed;
pub use source::{
    Fallback, FallbackFuture, FromFn, ServiceFallback, Value, from_fn, service, value,
};
pub use trigger::{Cause, FallbackConfig, Trigger, fallback_trigger};

/// The default name (metric label) of a [`FallbackLayer`].
pub const FALLBACK_NAME: &str = "fallback";

/// The prefix of the fallback layer's metric names:
/// `floodwall_fallback_requests_total{name, outcome, reason}` and
/// `floodwall_fallback_answers_total{name, trigger, result}` (`trigger`:
/// `rejected`, `failure`, `timeout`; `result`: `ok` for a fallback answer
/// given, `failed` for a fallback that failed itself).
pub const FALLBACK_METRIC_PREFIX: &str = "fallback";

struct Shared<F, C> {
    name: Arc<str>,
    config: parking_lot::RwLock<FallbackConfig>,
    fallback: F,
    classify: C,
    requests: RequestCounters,
    /// `[trigger][ok, failed]`.
    answers: [[Counter; 2]; 3],
    reconfigurations: Counter,
}

/// A Tower layer that answers from a fallback when a call is refused by a
/// floodwall layer below, fails, or runs out of time ([`FallbackConfig`]
/// says which), instead of failing: a fixed answer ([`value`]), a function
/// of the request and the cause ([`from_fn`]), or another service
/// ([`service`]).
///
/// - Failures are read by a [`Classify`] ([`ResultClassifier`] by default:
///   every error; `HttpClassifier` reads statuses too).
/// - The fallback's own failure is returned as [`FallbackFailed`], with the
///   call's error kept, and counted: nothing is hidden.
/// - Successful answers pass through untouched; only a fallback that keeps
///   something of the request ([`from_fn`], [`service`]) clones it.
///
/// ```
/// use floodwall_core::BoxError;
/// use floodwall_tail::{FallbackConfig, FallbackLayer, fallback};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let recommendations = service_fn(|_user: u64| async {
///     Err::<Vec<&str>, BoxError>("recommender down".into())
/// });
/// let svc = FallbackLayer::new(FallbackConfig::default(), fallback::value(vec!["top-10"]))?
///     .layer(recommendations);
/// assert_eq!(svc.oneshot(7).await?, vec!["top-10"]);
/// # Ok(())
/// # }
/// ```
pub struct FallbackLayer<F, C = ResultClassifier> {
    shared: Arc<Shared<F, C>>,
}

impl<F, C> Clone for FallbackLayer<F, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<F, C> fmt::Debug for FallbackLayer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .field("config", &*self.shared.config.read())
            .finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<F> {
    /// A layer answering from `fallback` on the triggers of `config`,
    /// reading failures with [`ResultClassifier`].
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn new(config: FallbackConfig, fallback: F) -> Result<Self, ConfigError> {
        FallbackLayer::builder(config, fallback).build()
    }
}

impl FallbackLayer<(), ()> {
    /// A builder, to set the name and the classifier.
    pub fn builder<F>(config: FallbackConfig, fallback: F) -> FallbackBuilder<F> {
        FallbackBuilder {
            config,
            fallback,
            classify: ResultClassifier,
            name: Arc::from(FALLBACK_NAME),
        }
    }
}

impl<F: Send + Sync + 'static, C: Send + Sync + 'static> FallbackLayer<F, C> {
    /// A cheap handle on the layer's configuration.
    pub fn handle(&self) -> FallbackHandle {
        FallbackHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`FallbackLayer`]; from [`FallbackLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct FallbackBuilder<F, C = ResultClassifier> {
    config: FallbackConfig,
    fallback: F,
    classify: C,
    name: Arc<str>,
}

impl<F, C> FallbackBuilder<F, C> {
    /// The layer's name (its metric label). Default [`FALLBACK_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How answers are read (which are failures). Default
    /// [`ResultClassifier`].
    pub fn classify<C2>(self, classify: C2) -> FallbackBuilder<F, C2> {
        FallbackBuilder {
            config: self.config,
            fallback: self.fallback,
            classify,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn build(self) -> Result<FallbackLayer<F, C>, ConfigError> {
        self.config.validate()?;
        let name = self.name;
        let answer = |trigger: &'static str, result: &'static str| metrics::counter!(metric_name(FALLBACK_METRIC_PREFIX, "answers_total"), LABEL_NAME => name.to_string(), "trigger" => trigger, "result" => result);
        let pair = |trigger| [answer(trigger, "ok"), answer(trigger, "failed")];
        Ok(FallbackLayer {
            shared: Arc::new(Shared {
                config: parking_lot::RwLock::new(self.config),
                fallback: self.fallback,
                classify: self.classify,
                requests: RequestCounters::new(FALLBACK_METRIC_PREFIX, &name),
                answers: [pair("rejected"), pair("failure"), pair("timeout")],
                reconfigurations: metrics::counter!(metric_name(FALLBACK_METRIC_PREFIX, "reconfigurations_total"), LABEL_NAME => name.to_string()),
                name,
            }),
        })
    }
}

/// What a [`FallbackHandle`] reads, whatever the fallback.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn config(&self) -> FallbackConfig;
    fn set(&self, config: FallbackConfig);
}

impl<F: Send + Sync, C: Send + Sync> Target for Shared<F, C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> FallbackConfig {
        *self.config.read()
    }

    fn set(&self, config: FallbackConfig) {
        *self.config.write() = config;
        self.reconfigurations.increment(1);
    }
}

/// A cheap, cloneable handle on a [`FallbackLayer`].
#[derive(Clone)]
pub struct FallbackHandle {
    shared: Arc<dyn Target>,
}

impl FallbackHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The triggers in force.
    pub fn config(&self) -> FallbackConfig {
        self.shared.config()
    }

    /// Changes the triggers while the layer serves, validated as
    /// [`FallbackLayer::new`] validates (a refused change changes
    /// nothing); calls under way finish under the triggers they started
    /// with.
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn reconfigure(&self, config: FallbackConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.shared.set(config);
        Ok(())
    }
}

impl fmt::Debug for FallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackHandle")
            .field("name", &self.name())
            .field("config", &self.config())
            .finish()
    }
}
