use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::ConfigError;

/// The retry budget of gRPC proposal A6 ("retry throttling").
///
/// A token count starts at `max_tokens`; every failed attempt takes one
/// token, every successful one gives back `token_ratio`; the count stays in
/// `[0, max_tokens]`. Retries (and hedges) are allowed only while the count
/// is **above** `max_tokens / 2`. So when failures outnumber successes the
/// client stops retrying, and retries can never more than about double the
/// load on a failing backend.
///
/// Tokens are kept in thousandths, as A6 specifies three decimal places, in
/// one `AtomicU64`, so the arithmetic is exact and lock-free.
///
/// ```
/// use floodwall_throttle::RetryBudget;
///
/// let budget = RetryBudget::new(10.0, 0.1)?;
/// assert!(budget.can_retry());
/// for _ in 0..5 {
///     budget.on_failure();
/// }
/// assert_eq!(budget.tokens(), 5.0);
/// assert!(!budget.can_retry(), "5 is not above 10 / 2");
/// budget.on_success();
/// assert_eq!(budget.tokens(), 5.1);
/// assert!(budget.can_retry());
/// # Ok::<(), floodwall_throttle::ConfigError>(())
/// ```
pub struct RetryBudget {
    milli_tokens: AtomicU64,
    /// `max << 32 | ratio`, in milli-tokens (both at most 10^6): one load
    /// reads a consistent pair, which a reconfiguration replaces.
    params: AtomicU64,
}

fn pack(max: u64, ratio: u64) -> u64 {
    (max << 32) | ratio
}

fn unpack(params: u64) -> (u64, u64) {
    (params >> 32, params & 0xFFFF_FFFF)
}

/// `max_tokens` and `token_ratio` in milli-tokens, validated as A6 says.
fn milli(max_tokens: f64, token_ratio: f64) -> Result<(u64, u64), ConfigError> {
    if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
        return Err(ConfigError::new("max_tokens", "must be in (0, 1000]").with_value(max_tokens));
    }
    let ratio = (token_ratio * 1000.0).round();
    if !(token_ratio.is_finite() && ratio >= 1.0) {
        return Err(
            ConfigError::new("token_ratio", "must be at least 0.001").with_value(token_ratio)
        );
    }
    let max = (max_tokens * 1000.0).round() as u64;
    if max == 0 {
        return Err(ConfigError::new("max_tokens", "must be in (0, 1000]").with_value(max_tokens));
    }
    // More than the max at once changes nothing; it also keeps the sum
    // below overflow.
    Ok((max, (ratio as u64).min(max)))
}

impl RetryBudget {
    /// A full budget of `max_tokens` (A6: in `(0, 1000]`) refilled by
    /// `token_ratio` per success (A6: positive, three decimal places kept).
    ///
    /// # Errors
    /// [`ConfigError`] for values outside those ranges.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<Self, ConfigError> {
        let (max, ratio) = milli(max_tokens, token_ratio)?;
        Ok(Self {
            milli_tokens: AtomicU64::new(max),
            params: AtomicU64::new(pack(max, ratio)),
        })
    }

    /// Changes `max_tokens` and `token_ratio` while the budget is in use,
    /// validated as [`new`](Self::new) validates (a refused change changes
    /// nothing). The tokens are kept, capped at the new maximum, so
    /// lowering the maximum below twice the tokens left can stop retries
    /// at once, and raising it grants nothing at once.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn reconfigure(&self, max_tokens: f64, token_ratio: f64) -> Result<(), ConfigError> {
        let (max, ratio) = milli(max_tokens, token_ratio)?;
        self.params.store(pack(max, ratio), Ordering::Release);
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.min(max)));
        Ok(())
    }

    /// Records a failed attempt: one token less (not below zero).
    pub fn on_failure(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// Records a successful attempt: `token_ratio` more (not above the max).
    pub fn on_success(&self) {
        let (max, ratio) = unpack(self.params.load(Ordering::Acquire));
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < max).then(|| (t + ratio).min(max))
            });
    }

    /// Whether a retry may be sent now: tokens above `max_tokens / 2`.
    pub fn can_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Acquire) * 2
            > unpack(self.params.load(Ordering::Acquire)).0
    }

    /// The token count.
    pub fn tokens(&self) -> f64 {
        self.milli_tokens.load(Ordering::Acquire) as f64 / 1000.0
    }

    /// The maximum token count.
    pub fn max_tokens(&self) -> f64 {
        unpack(self.params.load(Ordering::Acquire)).0 as f64 / 1000.0
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("tokens", &self.tokens())
            .field("max_tokens", &self.max_tokens())
            .field(
                "token_ratio",
                &(unpack(self.params.load(Ordering::Acquire)).1 as f64 / 1000.0),
            )
            .finish()
    }
}
