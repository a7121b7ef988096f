use std::fmt;
use std::sync::Arc;

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
