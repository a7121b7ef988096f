//! The configuration error every floodwall layer returns, and the bound
//! every configured duration is checked against.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// An invalid field in a layer's configuration: which field, what is wrong
/// with it, and the value given where that helps. Every floodwall layer's
/// `new`, `build` and `validate` return this one type.
///
/// ```
/// use floodwall_core::ConfigError;
///
/// let err = ConfigError::new("workers", "must be at least 1");
/// assert_eq!(err.field(), "workers");
/// assert_eq!(err.to_string(), "workers must be at least 1");
///
/// let err = ConfigError::new("k", "must be finite and at least 1").with_value(0.5);
/// assert_eq!(err.to_string(), "k must be finite and at least 1 (got 0.5)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: &'static str,
    value: Option<Arc<str>>,
}

impl ConfigError {
    /// `field` (a path such as `policy.target`) is invalid because it
    /// `problem` ("must be above zero").
    pub const fn new(field: &'static str, problem: &'static str) -> Self {
        Self {
            field,
            problem,
            value: None,
        }
    }

    /// The same error, naming the value that was given.
    pub fn with_value(mut self, value: impl fmt::Display) -> Self {
        self.value = Some(Arc::from(value.to_string()));
        self
    }

    /// The field at fault.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub const fn problem(&self) -> &'static str {
        self.problem
    }

    /// The value given, as text, where the error names it.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)?;
        match &self.value {
            Some(value) => write!(f, " (got {value})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The longest duration any floodwall config accepts: 365 days. Deadlines,
/// timers and windows are computed as `now + duration` on requests; bounded
/// here, no accepted value can overflow an `Instant`, and none is long
/// enough to be anything but a mistake.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Checks that `value` is at most [`MAX_DURATION`].
///
/// # Errors
/// A [`ConfigError`] naming `field`, with the value.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::config::{MAX_DURATION, check_duration};
///
/// assert!(check_duration("window", Duration::from_secs(60)).is_ok());
/// let err = check_duration("window", MAX_DURATION * 2).unwrap_err();
/// assert_eq!(err.field(), "window");
/// assert!(err.to_string().starts_with("window must be at most 365 days"));
/// ```
pub fn check_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::new(field, "must be at most 365 days")
            .with_value(format_args!("{value:?}")));
    }
    Ok(())
}
