use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_ratelimit::Keyed;

use crate::layer::DEFAULT_NAME;
use crate::{
    KeyedSlidingLog, KeyedSlidingWindowCounter, SlidingLog, SlidingWindowCounter,
    SlidingWindowLayer, Window, WindowError,
};

/// A sliding-window layer's configuration as plain data; the algorithm is
/// chosen by the build method.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use floodwall_sliding_window::SlidingWindowConfig;
///
/// let cfg: SlidingWindowConfig =
///     serde_json::from_str(r#"{ "name": "logins", "limit": 5, "window": "15m" }"#).unwrap();
/// let layer = cfg.build_log().unwrap();
/// assert_eq!(layer.handle().policy().quota(), 5);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SlidingWindowConfig {
    /// Metric label and `RateLimit` policy name. Default `"sliding_window"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// The most requests per window.
    pub limit: u32,
    /// The window's length.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// Keyed layers: how many keys to remember. Default 100,000.
    #[cfg_attr(feature = "serde", serde(default = "default_capacity"))]
    pub capacity: usize,
}

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

#[cfg(feature = "serde")]
fn default_capacity() -> usize {
    SlidingWindowConfig::DEFAULT_CAPACITY
}

/// Why a [`SlidingWindowConfig`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The limit or window is invalid.
    Window(WindowError),
    /// A keyed layer must remember at least one key.
    ZeroCapacity,
}

impl From<WindowError> for ConfigError {
    fn from(err: WindowError) -> Self {
        ConfigError::Window(err)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Window(err) => std::fmt::Display::fmt(err, f),
            ConfigError::ZeroCapacity => f.write_str("capacity must be at least 1 key"),
        }
    }
}

/// `Window` is transparent: its message is this error's message.
impl std::error::Error for ConfigError {}

impl SlidingWindowConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// `limit` per `window`, default name and capacity.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            limit,
            window,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// The validated window.
    ///
    /// # Errors
    /// [`ConfigError::Window`] for a zero or too large limit or length.
    pub fn window(&self) -> Result<Window, ConfigError> {
        Ok(Window::new(self.limit, self.window)?)
    }

    fn name(&self) -> Arc<str> {
        Arc::from(self.name.as_str())
    }

    fn keys(&self) -> Result<usize, ConfigError> {
        match self.capacity {
            0 => Err(ConfigError::ZeroCapacity),
            n => Ok(n),
        }
    }

    /// The two-window counter.
    ///
    /// # Errors
    /// As [`window`](Self::window).
    pub fn build_counter(&self) -> Result<SlidingWindowLayer<SlidingWindowCounter>, ConfigError> {
        Ok(SlidingWindowLayer::counter(self.window()?)
            .name(self.name())
            .build())
    }

    /// A fixed window.
    ///
    /// # Errors
    /// As [`window`](Self::window).
    pub fn build_fixed(&self) -> Result<SlidingWindowLayer<SlidingWindowCounter>, ConfigError> {
        Ok(SlidingWindowLayer::fixed(self.window()?)
            .name(self.name())
            .build())
    }

    /// The exact log.
    ///
    /// # Errors
    /// As [`window`](Self::window).
    pub fn build_log(&self) -> Result<SlidingWindowLayer<SlidingLog>, ConfigError> {
        Ok(SlidingWindowLayer::log(self.window()?)
            .name(self.name())
            .build())
    }

    /// A counter per key.
    ///
    /// # Errors
    /// As [`window`](Self::window), and [`ConfigError::ZeroCapacity`].
    pub fn build_counter_keyed<Req, K, X>(
        &self,
        extract: X,
    ) -> Result<SlidingWindowLayer<Keyed<KeyedSlidingWindowCounter<K>, X>>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let keys = self.keys()?;
        Ok(SlidingWindowLayer::counter(self.window()?)
            .name(self.name())
            .build_keyed(keys, extract))
    }

    /// A log per key.
    ///
    /// # Errors
    /// As [`window`](Self::window), and [`ConfigError::ZeroCapacity`].
    pub fn build_log_keyed<Req, K, X>(
        &self,
        extract: X,
    ) -> Result<SlidingWindowLayer<Keyed<KeyedSlidingLog<K>, X>>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    {
        let keys = self.keys()?;
        Ok(SlidingWindowLayer::log(self.window()?)
            .name(self.name())
            .build_keyed(keys, extract))
    }
}
