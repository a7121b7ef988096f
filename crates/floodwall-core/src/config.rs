use std::fmt;

/// An invalid field in a layer's configuration: which field, and what is
/// wrong with it. Layers whose configuration is a plain struct of numbers
/// and durations return it from `validate()` and `build()`.
///
/// ```
/// use floodwall_core::ConfigError;
///
/// let err = ConfigError::new("workers", "must be at least 1");
/// assert_eq!(err.field(), "workers");
/// assert_eq!(err.to_string(), "workers must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: &'static str,
}

impl ConfigError {
    /// `field` (a path such as `policy.target`) is invalid because it
    /// `problem` ("must be above zero").
    pub const fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }

    /// The field at fault.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub const fn problem(&self) -> &'static str {
        self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}
