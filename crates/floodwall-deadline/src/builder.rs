//! The builder and handle both deadline layers share.

use std::sync::Arc;
use std::time::Duration;

use floodwall_core::ConfigError;

use crate::DEFAULT_NAME;
use crate::client::{PropagateDeadlineConfig, PropagateDeadlineLayer};
use crate::server::{ServerDeadlineConfig, ServerDeadlineLayer};

/// Builds a [`ServerDeadlineLayer`] (from a [`ServerDeadlineConfig`]) or a
/// [`PropagateDeadlineLayer`] (from a [`PropagateDeadlineConfig`]); made by
/// the layers' `builder`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<C> {
    config: C,
    name: Arc<str>,
}

impl<C> Builder<C> {
    pub(crate) fn new(config: C) -> Self {
        Self {
            config,
            name: Arc::from(DEFAULT_NAME),
        }
    }

    /// The metric label and handle name. Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }
}

impl Builder<ServerDeadlineConfig> {
    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// [`ConfigError`] when `max` is zero (every request would be refused)
    /// or above [`MAX_DURATION`](floodwall_core::config::MAX_DURATION).
    pub fn build(self) -> Result<ServerDeadlineLayer, ConfigError> {
        positive("max", self.config.max)?;
        Ok(ServerDeadlineLayer::from_parts(self.config, self.name))
    }
}

impl Builder<PropagateDeadlineConfig> {
    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// [`ConfigError`] when `timeout` is zero (every call would fail
    /// before it is sent), or `timeout` or `margin` is above
    /// [`MAX_DURATION`](floodwall_core::config::MAX_DURATION).
    pub fn build(self) -> Result<PropagateDeadlineLayer, ConfigError> {
        positive("timeout", self.config.timeout)?;
        floodwall_core::config::check_duration("margin", self.config.margin)?;
        Ok(PropagateDeadlineLayer::from_parts(self.config, self.name))
    }
}

fn positive(field: &'static str, bound: Option<Duration>) -> Result<(), ConfigError> {
    if let Some(d) = bound {
        floodwall_core::config::check_duration(field, d)?;
    }
    match bound {
        Some(d) if d.is_zero() => {
            Err(ConfigError::new(field, "must be > 0 when set").with_value("0s"))
        }
        _ => Ok(()),
    }
}

/// A deadline layer's handle. The layers hold no state that changes, so
/// it names the layer (its metric label); cheap to clone; made by the
/// layers' `handle`.
#[derive(Debug, Clone)]
pub struct DeadlineHandle {
    name: Arc<str>,
}

impl DeadlineHandle {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self { name }
    }

    /// The layer's name (its metric label).
    pub fn name(&self) -> &str {
        &self.name
    }
}
