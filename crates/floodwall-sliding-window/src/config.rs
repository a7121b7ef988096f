use std::time::Duration;

use floodwall_core::ConfigError;

use crate::Window;

/// How a sliding-window layer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum WindowMode {
    /// The two-window counter (Cloudflare's estimate): one `AtomicU64`
    /// (the default).
    #[default]
    Sliding,
    /// A fixed window: the count resets at each window boundary.
    Fixed,
    /// The exact log of admission times: `limit` timestamps.
    Log,
}

/// A sliding-window layer's configuration as plain data, for
/// [`SlidingWindowLayer::new`](crate::SlidingWindowLayer::new) and
/// [`SlidingWindowLayer::builder`](crate::SlidingWindowLayer::builder). A
/// validated [`Window`] converts into a sliding counter with every other
/// field at its default.
///
/// With the `serde` feature it deserializes, durations in human form:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use floodwall_sliding_window::{SlidingWindowConfig, SlidingWindowLayer};
///
/// let cfg: SlidingWindowConfig = serde_json::from_str(
///     r#"{ "name": "login", "limit": 5, "window": "1m", "mode": "log" }"#,
/// ).unwrap();
/// let layer = SlidingWindowLayer::new(cfg).unwrap();
/// assert_eq!(layer.handle().limiter().window().limit(), 5);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SlidingWindowConfig {
    /// Metric label and `RateLimit` policy name. Default `"sliding_window"`.
    #[cfg_attr(feature = "serde", serde(default = "default_name"))]
    pub name: String,
    /// Requests allowed per window (1 to 65,535).
    pub limit: u32,
    /// The window's length.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// Sliding counter (default), fixed window, or exact log.
    #[cfg_attr(feature = "serde", serde(default))]
    pub mode: WindowMode,
    /// Keyed layers: the most keys remembered at once. Default 100,000.
    #[cfg_attr(
        feature = "serde",
        serde(default = "floodwall_ratelimit::default_key_capacity")
    )]
    pub capacity: usize,
}

/// The default name of a sliding-window layer (metric label and policy name).
pub const DEFAULT_NAME: &str = "sliding_window";

#[cfg(feature = "serde")]
fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

impl SlidingWindowConfig {
    /// The default number of keys a keyed layer remembers.
    pub const DEFAULT_CAPACITY: usize = floodwall_ratelimit::DEFAULT_KEY_CAPACITY;

    /// `limit` per `window` with the sliding counter, default name and
    /// capacity.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            limit,
            window,
            mode: WindowMode::Sliding,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// The same configuration counting in `mode`.
    pub fn mode(self, mode: WindowMode) -> Self {
        Self { mode, ..self }
    }

    /// The validated window.
    ///
    /// # Errors
    /// A [`ConfigError`] for a zero or too large limit or length.
    pub fn window(&self) -> Result<Window, ConfigError> {
        Window::new(self.limit, self.window)
    }
}

impl From<Window> for SlidingWindowConfig {
    fn from(window: Window) -> Self {
        Self::new(window.limit(), window.length())
    }
}
