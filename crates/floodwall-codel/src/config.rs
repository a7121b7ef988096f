use std::time::Duration;

pub use floodwall_core::ConfigError;

/// How long a request may wait, and which waiting requests are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Policy {
    /// Facebook's "Fail at Scale" queue timeouts (the default): a request
    /// queued while the queue has not been empty at any time in the last
    /// `interval` may wait `target`, any other request `interval`. A request
    /// that waits longer is dropped.
    FailAtScale {
        /// The short timeout, M (default 5 ms).
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        target: Duration,
        /// The long timeout and the memory of the last empty queue, N
        /// (default 100 ms).
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        interval: Duration,
    },
    /// RFC 8289 CoDel on request sojourn times, at dequeue: once sojourns
    /// have stayed at or above `target` for `interval`, drop one request and
    /// then more, at `interval / √count` spacing, until a sojourn falls below
    /// `target`.
    Codel {
        /// TARGET (default 5 ms).
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        target: Duration,
        /// INTERVAL (default 100 ms).
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        interval: Duration,
    },
}

impl Policy {
    /// Fail-at-Scale timeouts with M = 5 ms, N = 100 ms.
    pub const fn fail_at_scale() -> Self {
        Policy::FailAtScale {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
        }
    }

    /// RFC 8289 with TARGET = 5 ms, INTERVAL = 100 ms.
    pub const fn codel() -> Self {
        Policy::Codel {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
        }
    }

    /// The policy's interval (N, or INTERVAL).
    pub const fn interval(&self) -> Duration {
        match *self {
            Policy::FailAtScale { interval, .. } | Policy::Codel { interval, .. } => interval,
        }
    }

    /// The policy's target (M, or TARGET).
    pub const fn target(&self) -> Duration {
        match *self {
            Policy::FailAtScale { target, .. } | Policy::Codel { target, .. } => target,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::fail_at_scale()
    }
}

/// When the queue serves the newest request first instead of the oldest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "snake_case", deny_unknown_fields)
)]
pub enum Lifo {
    /// Always oldest first.
    Never,
    /// Newest first while the queue has not been empty for longer than the
    /// policy's interval (the default): the queue is standing, not bursting.
    #[default]
    Persisted,
    /// Newest first while **more than** this many requests wait, as HHVM's
    /// `JobQueue` does (it decrements its count before comparing): `0` is
    /// pure LIFO whenever anything waits.
    Length(usize),
    /// Newest first when either of the above holds.
    PersistedOrLength(usize),
}

/// An admission queue's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct CodelConfig {
    /// How many requests the inner service runs at once. Default 64.
    pub workers: usize,
    /// How many requests may wait; more are rejected at once. Default 1024.
    pub max_queue: usize,
    /// The drop policy. Default [`Policy::fail_at_scale`].
    pub policy: Policy,
    /// When to serve newest first. Default [`Lifo::Persisted`].
    pub lifo: Lifo,
    /// A request whose [`Deadline`](floodwall_core::Deadline) leaves less
    /// than this when it would start is dropped instead of run. Default 0:
    /// only requests whose deadline has passed.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_remaining: Duration,
}

impl Default for CodelConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            max_queue: 1024,
            policy: Policy::default(),
            lifo: Lifo::default(),
            min_remaining: Duration::ZERO,
        }
    }
}

impl CodelConfig {
    /// The defaults with `workers` workers.
    pub fn with_workers(workers: usize) -> Self {
        Self {
            workers,
            ..Self::default()
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field: zero workers, a zero target or interval, a
    /// target longer than the interval, or a duration over a day.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const DAY: Duration = Duration::from_secs(86_400);
        if self.workers == 0 {
            return Err(ConfigError::new("workers", "must be at least 1"));
        }
        let (target, interval) = (self.policy.target(), self.policy.interval());
        if target.is_zero() {
            return Err(ConfigError::new("policy.target", "must be above zero"));
        }
        if interval.is_zero() || interval > DAY {
            return Err(ConfigError::new(
                "policy.interval",
                "must be above zero and at most a day",
            ));
        }
        if target > interval {
            return Err(ConfigError::new(
                "policy.target",
                "must not exceed the interval",
            ));
        }
        if self.min_remaining > DAY {
            return Err(ConfigError::new("min_remaining", "must be at most a day"));
        }
        Ok(())
    }
}
