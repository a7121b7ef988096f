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

/// A deadline layer's handle: names the layer and changes its
/// configuration while it serves. Cheap to clone; made by the layers'
/// `handle`.
#[derive(Clone)]
pub struct DeadlineHandle {
    name: Arc<str>,
    target: Target,
}

#[derive(Clone)]
enum Target {
    Server(Arc<crate::server::ServerShared>),
    Client(Arc<crate::client::ClientShared>),
}

impl std::fmt::Debug for DeadlineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DeadlineHandle {
    pub(crate) fn server(shared: Arc<crate::server::ServerShared>) -> Self {
        Self {
            name: shared.name.clone(),
            target: Target::Server(shared),
        }
    }

    pub(crate) fn client(shared: Arc<crate::client::ClientShared>) -> Self {
        Self {
            name: shared.name.clone(),
            target: Target::Client(shared),
        }
    }

    /// Changes a server layer's configuration while it serves (`max`,
    /// `trust_inbound`), validated as the builder validates; the next
    /// request reads it. Requests already admitted keep their deadlines.
    ///
    /// # Errors
    /// [`ConfigError`] as [`Builder::build`] for a server layer; for a
    /// different `wire` (it names the header the layer reads), or for a
    /// client layer's handle.
    pub fn reconfigure_server(&self, config: &ServerDeadlineConfig) -> Result<(), ConfigError> {
        let Target::Server(shared) = &self.target else {
            return Err(ConfigError::new("layer", "this is a client layer's handle"));
        };
        positive("max", config.max)?;
        if config.wire != shared.wire {
            return Err(ConfigError::new("wire", "cannot change while serving"));
        }
        let mut current = shared.config.write();
        *current = config.clone();
        shared.packed.store(
            crate::server::Packed::of(config).0,
            std::sync::atomic::Ordering::Release,
        );
        drop(current);
        reconfigured(&self.name);
        Ok(())
    }

    /// Changes a client layer's configuration while it serves (`margin`,
    /// `timeout`), validated as the builder validates; the next call reads
    /// it.
    ///
    /// # Errors
    /// As [`reconfigure_server`](Self::reconfigure_server), for a client
    /// layer.
    pub fn reconfigure_client(&self, config: &PropagateDeadlineConfig) -> Result<(), ConfigError> {
        let Target::Client(shared) = &self.target else {
            return Err(ConfigError::new("layer", "this is a server layer's handle"));
        };
        positive("timeout", config.timeout)?;
        floodwall_core::config::check_duration("margin", config.margin)?;
        if config.wire != shared.wire {
            return Err(ConfigError::new("wire", "cannot change while serving"));
        }
        *shared.config.write() = config.clone();
        reconfigured(&self.name);
        Ok(())
    }

    /// The layer's name (its metric label).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn reconfigured(name: &Arc<str>) {
    metrics::counter!(
        floodwall_core::metrics::metric_name(crate::METRIC_PREFIX, "reconfigurations_total"),
        floodwall_core::metrics::LABEL_NAME => name.to_string()
    )
    .increment(1);
    tracing::info!(name = %name, "deadline layer reconfigured");
}
