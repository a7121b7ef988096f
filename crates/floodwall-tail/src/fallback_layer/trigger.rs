//! What a [`FallbackLayer`] answers for, and the whole of its decision
//! (sans-IO): the configuration ([`FallbackConfig`]), why the fallback
//! answers ([`Trigger`]), what it is handed ([`Cause`]) and
//! [`fallback_trigger`].

use floodwall_core::{BoxError, Classify, ConfigError, Outcome, RejectKind, Rejected};

#[cfg(doc)]
use super::FallbackLayer;

/// What a [`FallbackLayer`] answers for. All three by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct FallbackConfig {
    /// A floodwall layer below refused the request (rate limited, shed,
    /// throttled, circuit open, dropped by priority).
    pub on_rejected: bool,
    /// The call failed: an error, or an answer the classifier calls a
    /// failure or overloaded.
    pub on_failure: bool,
    /// The call ran out of time: a `DeadlineExceeded` rejection, or an
    /// answer the classifier calls timed out.
    pub on_timeout: bool,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            on_rejected: true,
            on_failure: true,
            on_timeout: true,
        }
    }
}

impl FallbackConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] when no trigger is on (the layer would do nothing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.on_rejected || self.on_failure || self.on_timeout) {
            return Err(ConfigError::new(
                "on_rejected/on_failure/on_timeout",
                "at least one trigger must be on",
            ));
        }
        Ok(())
    }
}

/// Why the fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A floodwall layer below refused the request, with this kind.
    Rejected(RejectKind),
    /// The call failed.
    Failure,
    /// The call ran out of time.
    Timeout,
}

impl Trigger {
    pub(super) fn index(self) -> usize {
        match self {
            Self::Rejected(_) => 0,
            Self::Failure => 1,
            Self::Timeout => 2,
        }
    }

    pub(super) fn label(self) -> &'static str {
        ["rejected", "failure", "timeout"][self.index()]
    }
}

/// What failed, handed to the fallback: the trigger and the answer the
/// call gave (a failed response, or the error).
#[derive(Debug)]
pub struct Cause<R> {
    /// Why the fallback answers.
    pub trigger: Trigger,
    /// What the call gave.
    pub answer: Result<R, BoxError>,
}

/// The trigger `result` fires under `config`, if any (sans-IO: the whole
/// decision of the layer).
///
/// ```
/// use floodwall_core::{BoxError, ResultClassifier};
/// use floodwall_tail::{FallbackConfig, Trigger, fallback_trigger};
///
/// let config = FallbackConfig { on_failure: false, ..FallbackConfig::default() };
/// let failed: Result<u32, BoxError> = Err("connection reset".into());
/// assert_eq!(fallback_trigger(&config, &ResultClassifier, failed.as_ref()), None);
/// let ok: Result<u32, BoxError> = Ok(1);
/// assert_eq!(fallback_trigger(&config, &ResultClassifier, ok.as_ref()), None);
/// ```
pub fn fallback_trigger<R, C>(
    config: &FallbackConfig,
    classify: &C,
    result: Result<&R, &BoxError>,
) -> Option<Trigger>
where
    C: Classify<R, BoxError> + ?Sized,
{
    let trigger = match result {
        Err(err) => match Rejected::find(&**err).map(|r| r.kind()) {
            Some(RejectKind::DeadlineExceeded) => Trigger::Timeout,
            Some(kind) => Trigger::Rejected(kind),
            None => match classify.classify(result) {
                Outcome::TimedOut => Trigger::Timeout,
                _ => Trigger::Failure,
            },
        },
        Ok(_) => match classify.classify(result) {
            Outcome::Success => return None,
            Outcome::TimedOut => Trigger::Timeout,
            Outcome::Failure | Outcome::Overloaded => Trigger::Failure,
        },
    };
    let on = match trigger {
        Trigger::Rejected(_) => config.on_rejected,
        Trigger::Failure => config.on_failure,
        Trigger::Timeout => config.on_timeout,
    };
    on.then_some(trigger)
}
