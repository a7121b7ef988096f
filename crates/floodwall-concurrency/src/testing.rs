//! Helpers shared by the algorithms' unit tests.

use std::time::Duration;

use crate::Sample;

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A sample of `rtt` with one request in flight, not dropped.
pub(crate) fn sample(rtt: Duration) -> Sample {
    Sample {
        rtt,
        inflight: 1,
        dropped: false,
    }
}
