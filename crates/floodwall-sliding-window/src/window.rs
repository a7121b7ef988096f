use std::fmt;
use std::time::Duration;

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
/// # Ok::<(), floodwall_sliding_window::WindowError>(())
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
    /// [`WindowError`] for a limit of 0 or above [`MAX_LIMIT`], or a length
    /// of zero or above [`MAX_LENGTH`].
    pub fn new(limit: u32, length: Duration) -> Result<Self, WindowError> {
        if limit == 0 {
            return Err(WindowError::ZeroLimit);
        }
        if limit > MAX_LIMIT {
            return Err(WindowError::LimitTooLarge(limit));
        }
        if length.is_zero() {
            return Err(WindowError::ZeroLength);
        }
        if length > MAX_LENGTH {
            return Err(WindowError::TooLong);
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
    pub fn per_second(limit: u32) -> Result<Self, WindowError> {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    ///
    /// # Errors
    /// As [`Window::new`].
    pub fn per_minute(limit: u32) -> Result<Self, WindowError> {
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

/// Why a [`Window`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowError {
    /// A limit of zero would refuse everything.
    ZeroLimit,
    /// The limit is above [`MAX_LIMIT`].
    LimitTooLarge(u32),
    /// The window has no length.
    ZeroLength,
    /// The window is longer than [`MAX_LENGTH`].
    TooLong,
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::ZeroLimit => f.write_str("limit must be at least 1 request per window"),
            WindowError::LimitTooLarge(n) => write!(
                f,
                "limit {n} is above {MAX_LIMIT} per window (use a shorter window or a token bucket)"
            ),
            WindowError::ZeroLength => f.write_str("window length must be longer than zero"),
            WindowError::TooLong => f.write_str("window length is above about 36 years"),
        }
    }
}

impl std::error::Error for WindowError {}

pub(crate) use floodwall_ratelimit::time::nanos_since;
