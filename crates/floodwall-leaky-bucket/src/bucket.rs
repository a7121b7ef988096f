//! [`LeakyBucket`]: the limiter a [`LeakyBucketLayer`](crate::LeakyBucketLayer)
//! decides with, a meter or a shaper as configured.

use std::time::Duration;

use floodwall_ratelimit::{Denied, Limiter, Quota, Refund, Remaining, Reserved};
use tokio::time::Instant;

use crate::{LeakyMeter, LeakyShaper};

/// A leaky bucket in either form, chosen by configuration: what an unkeyed
/// [`LeakyBucketLayer`](crate::LeakyBucketLayer) holds.
#[derive(Debug)]
pub enum LeakyBucket {
    /// Overflow is refused.
    Meter(LeakyMeter),
    /// Requests wait for start slots one interval apart.
    Shaper(LeakyShaper),
}

impl LeakyBucket {
    /// Units in a meter at `now` (0 for a shaper).
    pub fn level(&self, now: Instant) -> u32 {
        match self {
            LeakyBucket::Meter(meter) => meter.level(now),
            LeakyBucket::Shaper(_) => 0,
        }
    }

    /// Requests waiting in a shaper's queue at `now` (0 for a meter).
    pub fn queued(&self, now: Instant) -> u32 {
        match self {
            LeakyBucket::Meter(_) => 0,
            LeakyBucket::Shaper(shaper) => shaper.queued(now),
        }
    }

    /// A shaper's queue capacity; `None` for a meter.
    pub fn queue(&self) -> Option<u32> {
        match self {
            LeakyBucket::Meter(_) => None,
            LeakyBucket::Shaper(shaper) => Some(shaper.queue()),
        }
    }

    /// The rate (and, for a meter, capacity).
    pub fn quota(&self) -> Quota {
        match self {
            LeakyBucket::Meter(meter) => meter.quota(),
            LeakyBucket::Shaper(shaper) => shaper.quota(),
        }
    }
}

impl<Req> Limiter<Req> for LeakyBucket {
    #[inline]
    fn acquire(&self, req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        match self {
            LeakyBucket::Meter(meter) => meter.try_acquire(now, n),
            LeakyBucket::Shaper(shaper) => Limiter::<Req>::acquire(shaper, req, now, n),
        }
    }

    fn reserve(&self, req: &Req, now: Instant, n: u32, max_wait: Duration) -> Reserved<()> {
        match self {
            LeakyBucket::Meter(meter) => meter.try_acquire(now, n).map(|()| (Duration::ZERO, ())),
            LeakyBucket::Shaper(shaper) => shaper.reserve(req, now, n, max_wait),
        }
    }
}

/// A cancelled shaper waiter's slot is not given back (see [`LeakyShaper`]).
impl Refund for LeakyBucket {
    type Permit = ();
}

/// A meter's free capacity; a shaper's free places in its queue.
impl Remaining for LeakyBucket {
    fn remaining(&self, now: Instant) -> u32 {
        match self {
            LeakyBucket::Meter(meter) => meter.capacity() - meter.level(now),
            LeakyBucket::Shaper(shaper) => shaper.queue().saturating_sub(shaper.queued(now)),
        }
    }
}

impl floodwall_ratelimit::Reconfigure for LeakyBucket {
    type Params = crate::LeakyParams;

    /// The mode (meter or shaper) is the bucket's own; `params` gives the
    /// rate, the capacity (a meter's burst) and the queue (a shaper's).
    fn reconfigure(&self, params: crate::LeakyParams, now: Instant) {
        match self {
            LeakyBucket::Meter(meter) => meter.reconfigure(*params.quota(), now),
            LeakyBucket::Shaper(shaper) => shaper.reconfigure(
                *params.quota(),
                params.queue().unwrap_or(shaper.queue()),
                now,
            ),
        }
    }

    fn policy(params: &crate::LeakyParams) -> (u64, Duration) {
        (u64::from(params.quota().tokens()), params.quota().period())
    }
}

impl floodwall_ratelimit::Advertise for crate::LeakyParams {
    fn advertised(&self) -> (u64, Duration) {
        (u64::from(self.quota().tokens()), self.quota().period())
    }
}
