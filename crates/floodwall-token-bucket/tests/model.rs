//! Property tests: the atomic GCRA core against a plain token counter kept in
//! exact rational arithmetic, on random traces.

use std::time::Duration;

use floodwall_token_bucket::{Denied, KeyedTokenBucket, Quota, TokenBucket};
use proptest::prelude::*;
use tokio::time::Instant;

/// The textbook token bucket: `tokens` is a rational number whose
/// denominator is the interval `I` (so `scaled = tokens × I` is an exact
/// integer), refilled by `elapsed / I` and capped at `b`.
struct ReferenceBucket {
    scaled: u128,
    last: u64,
    interval: u128,
    burst: u32,
}

impl ReferenceBucket {
    fn new(quota: &Quota) -> Self {
        let interval = quota.interval().as_nanos();
        Self {
            scaled: interval * u128::from(quota.burst()),
            last: 0,
            interval,
            burst: quota.burst(),
        }
    }

    fn acquire(&mut self, t: u64, n: u32) -> Result<(), Denied> {
        let t = t.max(self.last);
        let cap = self.interval * u128::from(self.burst);
        self.scaled = (self.scaled + u128::from(t - self.last)).min(cap);
        self.last = t;
        if n > self.burst {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.burst,
            });
        }
        let need = u128::from(n) * self.interval;
        if self.scaled >= need {
            self.scaled -= need;
            Ok(())
        } else {
            // The refill needs exactly `need − scaled` more nanoseconds.
            let wait = u64::try_from(need - self.scaled).unwrap();
            Err(Denied::RateLimited {
                retry_after: Duration::from_nanos(wait),
            })
        }
    }
}

fn quota_strategy() -> impl Strategy<Value = Quota> {
    (1u32..=1000, 1u64..=5_000_000_000, 1u32..=50).prop_map(|(tokens, period_ns, burst)| {
        Quota::new(
            tokens,
            Duration::from_nanos(period_ns.max(u64::from(tokens))),
        )
        .unwrap()
        .with_burst(burst)
        .unwrap()
    })
}

/// Steps of (time advance in ns, weight); weights sometimes above the burst,
/// advances sometimes zero (simultaneous arrivals), sometimes huge (idleness).
fn trace_strategy() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![
                3 => Just(0u64),
                6 => 0u64..50_000_000,
                1 => 0u64..20_000_000_000,
            ],
            prop_oneof![8 => 1u32..=2, 2 => 0u32..=60],
        ),
        1..400,
    )
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Reserve {
        max_wait_ms: u64,
    },
    /// Cancel the outstanding reservation with this index (modulo their
    /// number), if its start is still in the future.
    Cancel(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Acquire),
        4 => (0u64..500).prop_map(|max_wait_ms| Op::Reserve { max_wait_ms }),
        3 => any::<usize>().prop_map(Op::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever mix of immediate requests, reservations and cancellations,
    /// the requests that do start obey the GCRA bound in every window:
    /// `k` starts within `[s_i, s_j]` need `k ≤ burst + (s_j − s_i) / I`.
    #[test]
    fn reservations_and_cancellations_never_overadmit(
        rate in 1u32..=100,
        burst in 1u32..=4,
        ops in prop::collection::vec((0u64..30, op_strategy()), 1..300),
    ) {
        let quota = Quota::per_second(rate).unwrap().with_burst(burst).unwrap();
        let epoch = Instant::now();
        let bucket = TokenBucket::with_epoch(quota, epoch);
        let interval = quota.interval().as_nanos() as u64;
        let mut t = 0u64;
        let mut starts: Vec<u64> = Vec::new();
        let mut pending: Vec<(u64, floodwall_token_bucket::Reservation)> = Vec::new();
        for (dt_ms, op) in ops {
            t += dt_ms * 1_000_000;
            let now = epoch + Duration::from_nanos(t);
            // Reservations whose start has come run; they can no longer cancel.
            pending.retain(|&(start, _)| {
                if start <= t {
                    starts.push(start);
                    false
                } else {
                    true
                }
            });
            match op {
                Op::Acquire => {
                    if bucket.try_acquire(now, 1).is_ok() {
                        starts.push(t);
                    }
                }
                Op::Reserve { max_wait_ms } => {
                    if let Ok(r) = bucket.reserve(now, 1, Duration::from_millis(max_wait_ms)) {
                        pending.push((t + r.wait().as_nanos() as u64, r));
                    }
                }
                Op::Cancel(i) if !pending.is_empty() => {
                    let (_, r) = pending.remove(i % pending.len());
                    bucket.cancel(r, now);
                }
                Op::Cancel(_) => {}
            }
        }
        starts.extend(pending.iter().map(|&(start, _)| start));
        starts.sort_unstable();
        for i in 0..starts.len() {
            for j in i..starts.len() {
                let k = (j - i + 1) as u64;
                prop_assert!(
                    k <= u64::from(burst) + (starts[j] - starts[i]) / interval,
                    "{} starts in [{}, {}] ns", k, starts[i], starts[j]
                );
            }
        }
    }

    #[test]
    fn gcra_core_matches_the_rational_token_counter(
        quota in quota_strategy(),
        trace in trace_strategy(),
    ) {
        let epoch = Instant::now();
        let bucket = TokenBucket::with_epoch(quota, epoch);
        let mut reference = ReferenceBucket::new(&quota);
        let mut t = 0u64;
        for (dt, n) in trace {
            t += dt;
            let now = epoch + Duration::from_nanos(t);
            prop_assert_eq!(bucket.try_acquire(now, n), reference.acquire(t, n), "t = {} ns, n = {}", t, n);
        }
    }

    #[test]
    fn keyed_buckets_match_independent_buckets(
        quota in quota_strategy(),
        trace in prop::collection::vec((0u64..20_000_000, 0u8..8, 1u32..=3), 1..400),
    ) {
        let epoch = Instant::now();
        let keyed = KeyedTokenBucket::with_epoch(quota, 1024, epoch);
        let mut singles: Vec<ReferenceBucket> = (0..8).map(|_| ReferenceBucket::new(&quota)).collect();
        let mut t = 0u64;
        for (dt, key, n) in trace {
            t += dt;
            let now = epoch + Duration::from_nanos(t);
            prop_assert_eq!(
                keyed.try_acquire(&key, now, n),
                singles[usize::from(key)].acquire(t, n)
            );
        }
    }
}
