//! The sans-IO core of hedging: one call's plan ([`HedgeCall`]), what a
//! call does after an answer ([`HedgeStep`]) and why a due hedge was not
//! sent ([`HedgeSkip`]). Nothing here sleeps or reads a clock.

use std::time::Duration;

use floodwall_throttle::{RetryHint, Verdict};
use tokio::time::Instant;

#[cfg(doc)]
use super::Hedge;

/// What a call does after one of its attempts answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeStep {
    /// Return this answer; cancel every other attempt.
    Commit,
    /// Return this answer, marked as given up on (no layer above retries
    /// it): no attempt is left and no hedge will be sent.
    GiveUp,
    /// Keep this answer as the last one and wait for the other attempts or
    /// the next hedge.
    Continue,
}

/// Why a due hedge was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeSkip {
    /// The retry budget is at or under half its tokens.
    Budget,
    /// The deadline in scope leaves less than the hedging delay.
    Deadline,
    /// The server said not to retry, or pushed back longer than allowed.
    Pushback,
}

impl HedgeSkip {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Deadline => "deadline",
            Self::Pushback => "pushback",
        }
    }
}

/// One call's hedging plan (sans-IO): how many attempts are out, when the
/// next hedge is due, and whether hedging stopped. Every method takes the
/// instant; the [`Hedge`] service drives it.
///
/// ```
/// use std::time::Duration;
/// use floodwall_tail::{HedgeCall, HedgeStep};
/// use floodwall_throttle::{RetryHint, Verdict};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let ms = Duration::from_millis;
/// let mut call = HedgeCall::new(t0, 3, Some(ms(10)), ms(500));
/// assert_eq!(call.next_hedge(), Some(t0 + ms(10)));
/// // The hedge went out at 10 ms: the next one is due 10 ms later.
/// assert!(call.hedge_sent(t0 + ms(10)), "sent by the delay: it takes a token");
/// assert_eq!(call.next_hedge(), Some(t0 + ms(20)));
/// // A non-fatal failure sends the next hedge at once...
/// assert_eq!(call.on_answer(t0 + ms(12), Verdict::Failure(RetryHint::Retry)), HedgeStep::Continue);
/// assert_eq!(call.next_hedge(), Some(t0 + ms(12)));
/// // ...and a success commits.
/// assert_eq!(call.on_answer(t0 + ms(13), Verdict::Success), HedgeStep::Commit);
/// ```
#[derive(Debug, Clone)]
pub struct HedgeCall {
    max_attempts: u32,
    sent: u32,
    outstanding: u32,
    delay: Option<Duration>,
    max_pushback: Duration,
    next: Option<Instant>,
    /// Whether `next` was set by an answer (a non-fatal failure or
    /// pushback) rather than by the hedging delay.
    by_answer: bool,
    stopped: Option<HedgeSkip>,
}

impl HedgeCall {
    /// A call whose first attempt started at `now`; `delay` is the hedging
    /// delay in force (`None`: no hedge is sent on a timer).
    pub fn new(
        now: Instant,
        max_attempts: u32,
        delay: Option<Duration>,
        max_pushback: Duration,
    ) -> Self {
        Self {
            max_attempts,
            sent: 1,
            outstanding: 1,
            delay,
            max_pushback,
            next: delay.filter(|_| max_attempts > 1).map(|d| now + d),
            by_answer: false,
            stopped: None,
        }
    }

    /// When the next hedge is due, if one is planned.
    pub fn next_hedge(&self) -> Option<Instant> {
        if self.stopped.is_some() || self.sent >= self.max_attempts {
            return None;
        }
        self.next
    }

    /// Attempts still running.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Attempts sent, the first included.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Why hedging stopped, if it did.
    pub fn stopped(&self) -> Option<HedgeSkip> {
        self.stopped
    }

    /// Whether a hedge due at `now` may be sent: `budget_allows` is the
    /// retry budget's word, `deadline` the deadline in scope (a hedge needs
    /// at least the hedging delay before it). A refusal stops hedging.
    pub fn may_send(
        &mut self,
        now: Instant,
        budget_allows: bool,
        deadline: Option<Instant>,
    ) -> Result<(), HedgeSkip> {
        let needs = self.delay.unwrap_or(Duration::ZERO);
        let skip = if !budget_allows {
            Some(HedgeSkip::Budget)
        } else if deadline.is_some_and(|d| d.saturating_duration_since(now) <= needs) {
            Some(HedgeSkip::Deadline)
        } else {
            None
        };
        match skip {
            Some(skip) => {
                self.stopped = Some(skip);
                Err(skip)
            }
            None => Ok(()),
        }
    }

    /// A hedge went out at `now`. Returns whether the hedging delay sent
    /// it (a slow attempt: it takes a budget token) rather than an answer
    /// (whose failure already took one).
    pub fn hedge_sent(&mut self, now: Instant) -> bool {
        let by_timer = !self.by_answer;
        self.by_answer = false;
        self.sent += 1;
        self.outstanding += 1;
        self.next = self.delay.map(|d| now + d);
        by_timer
    }

    /// Stops hedging (the service could not take another attempt).
    pub fn stop(&mut self, why: HedgeSkip) {
        self.stopped.get_or_insert(why);
    }

    /// An attempt answered at `now` with `verdict`; says what the call does.
    ///
    /// - A success or a fatal answer commits.
    /// - A non-fatal failure (A6 "non-fatal status code") sends the next
    ///   hedge at once; with server pushback, after it (a pushback over
    ///   `max_pushback`, or one saying never, stops hedging).
    /// - With nothing left running and no hedge to come, the answer is
    ///   given up on.
    pub fn on_answer(&mut self, now: Instant, verdict: Verdict) -> HedgeStep {
        self.outstanding = self.outstanding.saturating_sub(1);
        let hint = match verdict {
            Verdict::Success => return HedgeStep::Commit,
            Verdict::Fatal => return HedgeStep::GiveUp,
            Verdict::Failure(hint) | Verdict::Refused(hint) => hint,
        };
        match hint {
            RetryHint::Retry => {
                self.next = Some(now);
                self.by_answer = true;
            }
            RetryHint::RetryAfter(d) if d <= self.max_pushback => {
                self.next = Some(now + d);
                self.by_answer = true;
            }
            RetryHint::RetryAfter(_) | RetryHint::DoNotRetry => self.stop(HedgeSkip::Pushback),
        }
        if self.outstanding == 0 && self.next_hedge().is_none() {
            HedgeStep::GiveUp
        } else {
            HedgeStep::Continue
        }
    }

    /// Whether nothing runs and nothing more will be sent: the last answer
    /// is all there is.
    pub fn exhausted(&self) -> bool {
        self.outstanding == 0 && self.next_hedge().is_none()
    }
}
