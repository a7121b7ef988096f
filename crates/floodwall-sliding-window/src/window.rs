use std::time::Duration;

use floodwall_core::ConfigError;

/// The most requests a window may allow: counts are kept in 16 bits so that
/// a counter's whole state fits one `AtomicU64`.
pub const MAX_LIMIT: u32 = u16::MAX as u32;

/// The longest window, about 36 years, so window arithmetic never overflows.
pub const MAX_LENGTH: Duration = Duration::from_secs(36 * 365 * 86_400);

/// A sliding-window limit: at most `limit` requests per `length`.
///
/// ```
/// use std::time::Duration;
/// use floodwall_sliding_window::Window;
///
/// let w = Window::new(100, Duration::from_secs(60))?;
/// assert_eq!((w.limit(), w.length()), (100, Duration::from_secs(60)));
/// assert!(Window::new(0, Duration::from_secs(1)).is_err());
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    limit: u32,
    length_ns: u64,
}

impl Window {
    /// At most `limit` requests per `length`.
    ///
    /// # Errors
    /// a [`ConfigError`] for a limit of 0 or above [`MAX_LIMIT`], or a length
    /// of zero or above [`MAX_LENGTH`].
    pub fn new(limit: u32, length: Duration) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(ConfigError::new(
                "limit",
                "must be at least 1 request per window",
            ));
        }
        if limit > MAX_LIMIT {
            return Err(ConfigError::new(
                "limit",
                "must be at most 65,535 per window (use a shorter window or a token bucket)",
            )
            .with_value(limit));
        }
        floodwall_core::config::check_duration("window", length)?;
        if length.is_zero() {
            return Err(ConfigError::new("window", "must be longer than zero"));
        }
        if length > MAX_LENGTH {
            return Err(ConfigError::new("window", "must be at most about 36 years"));
        }
        Ok(Self {
            limit,
            length_ns: length.as_nanos() as u64,
        })
    }

    /// `limit` requests per second.
    ///
    /// # Errors
    /// As [`Window::new`].
    pub fn per_second(limit: u32) -> Result<Self, ConfigError> {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    ///
    /// # Errors
    /// As [`Window::new`].
    pub fn per_minute(limit: u32) -> Result<Self, ConfigError> {
        Self::new(limit, Duration::from_secs(60))
    }

    /// The most requests per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.length_ns)
    }

    pub(crate) fn length_ns(&self) -> u64 {
        self.length_ns
    }
}

pub(crate) use floodwall_ratelimit::time::nanos_since;
