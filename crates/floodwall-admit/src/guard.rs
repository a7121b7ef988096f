//! The guard that gives back what an admitted request held, however the
//! request ends.

use std::fmt;
use std::sync::Arc;

use floodwall_core::BoxError;
use floodwall_core::outcome::{self, Verdict};

use crate::{Policy, Read};

/// Holds an admitted request's permit; gives it back exactly once: when the
/// call is read ([`finish`](Self::finish)), released with a verdict
/// ([`release`](Self::release)), or, if neither happens first, when the
/// guard is dropped (with [`outcome::dropped`]: a cancellation, or a timeout
/// if a deadline layer above dropped it at its deadline).
pub struct Guard<P: Policy> {
    policy: Arc<P>,
    permit: Option<P::Permit>,
    caller_limited: bool,
}

impl<P: Policy> Guard<P> {
    /// Guards `permit`, reading the caller-limited mark of the call being
    /// made now ([`outcome::caller_limited`]) if the policy learns from
    /// outcomes.
    #[inline]
    pub fn new(policy: Arc<P>, permit: P::Permit) -> Self {
        let caller_limited = P::READS_OUTCOMES && outcome::caller_limited();
        Self {
            policy,
            permit: Some(permit),
            caller_limited,
        }
    }

    /// Re-reads the caller-limited mark (for a permit taken before the call
    /// was made, as the [`Backpressure`](crate::Backpressure) mode does).
    #[inline]
    pub(crate) fn mark_call(&mut self) {
        self.caller_limited = P::READS_OUTCOMES && outcome::caller_limited();
    }

    /// Whether the caller's deadline gave this call less than its budget.
    pub fn caller_limited(&self) -> bool {
        self.caller_limited
    }

    /// Whether the permit is still held.
    pub fn is_held(&self) -> bool {
        self.permit.is_some()
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<P> {
        &self.policy
    }

    /// Reads the finished call with the policy's [`Read`] and gives the
    /// permit back with that verdict.
    #[inline]
    pub fn finish<Res>(&mut self, result: Result<&Res, &BoxError>)
    where
        P: Read<Res>,
    {
        if let Some(permit) = self.permit.take() {
            let verdict = self.policy.read(result, self.caller_limited);
            self.policy.release(permit, verdict);
        }
    }

    /// Gives the permit back with `verdict`.
    #[inline]
    pub fn release(&mut self, verdict: Verdict) {
        if let Some(permit) = self.permit.take() {
            self.policy.release(permit, verdict);
        }
    }
}

impl<P: Policy> Drop for Guard<P> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.policy
                .release(permit, outcome::dropped(self.caller_limited));
        }
    }
}

impl<P: Policy> fmt::Debug for Guard<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("held", &self.permit.is_some())
            .field("caller_limited", &self.caller_limited)
            .finish()
    }
}
