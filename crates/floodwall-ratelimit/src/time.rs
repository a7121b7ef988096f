//! The one time helper the rate limiters share: instants as nanoseconds
//! since a limiter's epoch, the form their atomic state holds.

use tokio::time::Instant;

/// Nanoseconds from `epoch` to `now`, saturating at both ends (an instant
/// before the epoch is 0; one past `u64::MAX` ns, about 584 years, is
/// `u64::MAX`).
///
/// ```
/// use std::time::Duration;
/// use floodwall_ratelimit::time::nanos_since;
/// use tokio::time::Instant;
///
/// let epoch = Instant::now();
/// assert_eq!(nanos_since(epoch, epoch + Duration::from_micros(3)), 3_000);
/// assert_eq!(nanos_since(epoch + Duration::from_secs(1), epoch), 0);
/// ```
#[inline]
pub fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    let d = now.saturating_duration_since(epoch);
    // `as_secs() * 1e9 + subsec` without the u128 of `as_nanos()`.
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}
