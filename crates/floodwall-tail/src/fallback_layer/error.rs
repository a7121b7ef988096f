//! The error a [`FallbackLayer`] returns when the fallback itself fails:
//! [`FallbackFailed`], with the call's own failure kept.

use std::fmt;

use floodwall_core::BoxError;

#[cfg(doc)]
use super::FallbackLayer;
use super::Trigger;

/// The fallback itself failed: its error is the source, and the call's
/// own failure is kept ([`original`](Self::original)). Never hidden: the
/// fallback's failures are counted
/// (`floodwall_fallback_answers_total{result="failed"}`) and returned.
#[derive(Debug)]
pub struct FallbackFailed {
    pub(super) trigger: Trigger,
    pub(super) original: Option<BoxError>,
    pub(super) fallback: BoxError,
}

impl FallbackFailed {
    /// Why the fallback was asked.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// The call's error, when it failed with one (not for a failed
    /// response).
    pub fn original(&self) -> Option<&BoxError> {
        self.original.as_ref()
    }

    /// The fallback's error.
    pub fn fallback_error(&self) -> &BoxError {
        &self.fallback
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the fallback failed ({}) after ", self.fallback)?;
        match &self.original {
            Some(e) => write!(f, "the call failed: {e}"),
            None => write!(f, "a failed answer ({})", self.trigger.label()),
        }
    }
}

impl std::error::Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.fallback)
    }
}
