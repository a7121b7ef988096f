//! The handle on a CoDel layer's live state.

use std::fmt;
use std::sync::Arc;

use super::Shared;
use crate::config::{CodelConfig, ConfigError};
use floodwall_core::sync::Ordering;
use tokio::time::Instant;

/// Reads a [`CodelLayer`](crate::CodelLayer)'s live state.
pub struct CodelHandle {
    pub(super) shared: Arc<dyn Target>,
}

pub(super) trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn workers(&self) -> usize;
    fn set_workers(&self, workers: usize);
    fn busy(&self) -> usize;
    fn queue_len(&self) -> usize;
    fn is_lifo(&self) -> bool;
    fn waiters(&self) -> usize;
    fn reconfigure(&self, config: &CodelConfig) -> Result<(), ConfigError>;
    fn config(&self) -> CodelConfig;
}

impl<X: Send + Sync> Target for Shared<X> {
    fn name(&self) -> &str {
        &self.name
    }

    fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    fn set_workers(&self, workers: usize) {
        let workers = workers.max(1);
        let before = self.workers.swap(workers, Ordering::SeqCst);
        if workers > before {
            // More room: hand it to whoever waits.
            let mut w = self.waiters.lock();
            self.dispatch(&mut w, Instant::now());
        }
    }

    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    fn queue_len(&self) -> usize {
        self.waiters.lock().queue.len()
    }

    fn is_lifo(&self) -> bool {
        self.waiters.lock().queue.is_lifo(Instant::now())
    }

    fn waiters(&self) -> usize {
        self.waiters.lock().slots.len()
    }

    fn reconfigure(&self, config: &CodelConfig) -> Result<(), ConfigError> {
        config.validate()?;
        {
            let mut w = self.waiters.lock();
            w.queue.reconfigure(config)?;
            self.min_remaining
                .store(super::nanos(config.min_remaining), Ordering::Relaxed);
            *self.config.lock() = *config;
        }
        self.set_workers(config.workers);
        self.metrics.reconfigured.increment(1);
        self.metrics.limit.set(config.workers as f64);
        Ok(())
    }

    fn config(&self) -> CodelConfig {
        let mut config = *self.config.lock();
        config.workers = self.workers();
        config
    }
}

impl CodelHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// How many requests may run at once.
    pub fn workers(&self) -> usize {
        self.shared.workers()
    }

    /// Changes how many requests may run at once (at least 1). More workers
    /// are handed to waiting requests at once; with fewer, running requests
    /// finish and the queue waits until the count is under the new number.
    ///
    /// This is how the queue follows an adaptive concurrency limit:
    /// `floodwall-concurrency`'s `Builder::on_limit_change` can call it
    /// with every new limit.
    pub fn set_workers(&self, workers: usize) {
        self.shared.set_workers(workers);
    }

    /// Workers taken now (running requests, and requests just granted one).
    pub fn in_flight(&self) -> usize {
        self.shared.busy()
    }

    /// Requests waiting now.
    pub fn queue_len(&self) -> usize {
        self.shared.queue_len()
    }

    /// Whether the queue would serve newest first now.
    pub fn is_lifo(&self) -> bool {
        self.shared.is_lifo()
    }

    /// Changes the layer's configuration while it serves, validated as
    /// [`CodelLayer::new`](crate::CodelLayer::new) validates (a refused
    /// configuration changes nothing). Workers as
    /// [`set_workers`](Self::set_workers): fewer never cancel a running
    /// request, the excess drains as they finish; the queue's policy
    /// (CoDel target and interval, fail-at-scale M and N), LIFO rule, bound
    /// and `min_remaining` apply to the next decision, with the requests
    /// already waiting and CoDel's state kept (see
    /// [`AdmissionQueue::reconfigure`](crate::AdmissionQueue::reconfigure)).
    /// Counted in `floodwall_<layer>_reconfigurations_total{name}`;
    /// `floodwall_<layer>_limit{name}` shows the workers.
    ///
    /// # Errors
    /// As [`CodelConfig::validate`].
    pub fn reconfigure(&self, config: &CodelConfig) -> Result<(), ConfigError> {
        self.shared.reconfigure(config)
    }

    /// As [`reconfigure`](Self::reconfigure), for a bulkhead's
    /// configuration.
    ///
    /// # Errors
    /// As [`BulkheadConfig::validate`](crate::BulkheadConfig::validate).
    pub fn reconfigure_bulkhead(&self, config: &crate::BulkheadConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.shared.reconfigure(&config.codel())
    }

    /// The configuration in force (workers as set last).
    pub fn config(&self) -> CodelConfig {
        self.shared.config()
    }

    /// Response futures that are waiting: queued, or granted a worker they
    /// have not started on yet, or dropped by the queue and not yet told.
    /// Zero once every response future has finished or been dropped.
    pub fn waiters(&self) -> usize {
        self.shared.waiters()
    }
}

impl Clone for CodelHandle {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for CodelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodelHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("queue_len", &self.queue_len())
            .finish()
    }
}
