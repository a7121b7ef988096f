//! The meter: SPECS.md semantics under virtual time, and equivalence with
//! the token bucket and with ITU-T I.371's continuous-state leaky bucket.

use std::time::Duration;

use floodwall_leaky_bucket::{Denied, KeyedLeakyBucket, LeakyMeter, LeakyParams, Level};
use floodwall_ratelimit::{Quota, TokenBucket};
use proptest::prelude::*;
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

fn limited(d: Duration) -> Result<(), Denied> {
    Err(Denied::RateLimited { retry_after: d })
}

#[tokio::test(start_paused = true)]
async fn overflow_is_refused_with_the_exact_time_until_it_fits() {
    let meter = LeakyMeter::new(Quota::per_second(100).unwrap().with_burst(10).unwrap());
    let t0 = Instant::now();
    let admitted = (0..25).filter(|_| meter.try_acquire(t0, 1).is_ok()).count();
    assert_eq!(admitted, 10, "the bucket holds 10");
    assert_eq!(meter.level(t0), 10);
    assert_eq!(meter.try_acquire(t0, 1), limited(10 * MS));
    advance(35 * MS).await;
    assert_eq!(
        meter.level(Instant::now()),
        7,
        "3.5 units drained, rounded up"
    );
    assert_eq!(meter.try_acquire(Instant::now(), 3), Ok(()));
    assert_eq!(meter.try_acquire(Instant::now(), 1), limited(5 * MS));
    assert_eq!(
        meter.try_acquire(Instant::now(), 11),
        Err(Denied::ExceedsBurst {
            requested: 11,
            burst: 10
        })
    );
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        meter.level(Instant::now()),
        0,
        "an idle bucket is empty, not below"
    );
    let admitted = (0..25)
        .filter(|_| meter.try_acquire(Instant::now(), 1).is_ok())
        .count();
    assert_eq!(admitted, 10);
}

#[tokio::test(start_paused = true)]
async fn keyed_meters_are_independent() {
    let rate = Quota::per_second(10).unwrap().with_burst(2).unwrap();
    let meters = KeyedLeakyBucket::new(LeakyParams::meter(rate), 100);
    let now = Instant::now();
    for key in ["a", "b"] {
        assert_eq!(meters.try_acquire(&key, now, 2), Ok(()));
        assert_eq!(meters.try_acquire(&key, now, 1), limited(100 * MS));
        assert_eq!(meters.inspect(&key, now, Level::level), Some(2));
    }
    assert_eq!(
        meters.inspect(&"c", now, Level::level),
        None,
        "c was never seen"
    );
    assert_eq!(meters.remaining(&"c", now), 2);
    assert_eq!(meters.keys().len(), 2);
}

/// ITU-T I.371's continuous-state leaky bucket for GCRA(I, L): level `x`
/// (in time units) and last conformance time `lct`, exactly as the
/// recommendation writes it, with weights.
struct ContinuousState {
    x: u64,
    lct: u64,
    interval: u64,
    limit: u64,
    burst: u32,
}

impl ContinuousState {
    fn new(quota: &Quota) -> Self {
        let interval = quota.interval().as_nanos() as u64;
        Self {
            x: 0,
            lct: 0,
            interval,
            limit: u64::from(quota.burst() - 1) * interval,
            burst: quota.burst(),
        }
    }

    fn arrive(&mut self, t: u64, n: u32) -> Result<(), Denied> {
        if n > self.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.burst,
            });
        }
        // X' = X − (ta − LCT), floored at 0.
        let drained = self.x.saturating_sub(t.saturating_sub(self.lct));
        // Conforming iff X' ≤ L − (n − 1)·I, i.e. X' + n·I ≤ L + I.
        let after = drained + u64::from(n) * self.interval;
        if after > self.limit + self.interval {
            return Err(Denied::RateLimited {
                retry_after: Duration::from_nanos(after - self.limit - self.interval),
            });
        }
        self.x = after;
        self.lct = self.lct.max(t);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn meter_equals_token_bucket_and_the_continuous_state_algorithm(
        tokens in 1u32..=1000,
        period_ms in 1u64..=5000,
        burst in 1u32..=20,
        trace in prop::collection::vec((0u64..50_000_000, 0u32..=4), 1..400),
    ) {
        let quota = Quota::new(tokens, Duration::from_millis(period_ms))
            .unwrap()
            .with_burst(burst)
            .unwrap();
        let epoch = Instant::now();
        let meter = LeakyMeter::with_epoch(quota, epoch);
        let bucket = TokenBucket::with_epoch(quota, epoch);
        let mut reference = ContinuousState::new(&quota);
        let mut t = 0u64;
        for (dt, n) in trace {
            t += dt;
            let now = epoch + Duration::from_nanos(t);
            let decision = meter.try_acquire(now, n);
            prop_assert_eq!(decision, bucket.try_acquire(now, n), "vs token bucket at {} ns", t);
            prop_assert_eq!(decision, reference.arrive(t, n), "vs I.371 at {} ns", t);
        }
    }
}
