//! Unit tests of the limiter module.
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::{Aimd, AimdConfig};

/// A fixed limit: for admission tests.
#[derive(Debug)]
struct Fixed(u32);

impl Algorithm for Fixed {
    fn limit(&self) -> u32 {
        self.0
    }
    fn update(&mut self, _now: Instant, _sample: &Sample) -> u32 {
        self.0
    }
}

#[test]
fn admits_up_to_the_limit_and_a_finished_request_frees_its_slot() {
    let l = ConcurrencyLimiter::new(Fixed(3));
    let now = Instant::now();
    let tokens: Vec<_> = (0..3).map(|_| l.try_acquire(now).unwrap()).collect();
    assert_eq!(
        tokens.iter().map(Token::in_flight).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let refused = l.try_acquire(now).unwrap_err();
    assert_eq!(
        refused,
        LimitRefused {
            limit: 3,
            in_flight: 3,
            class: 0
        }
    );
    let mut tokens = tokens.into_iter();
    l.ignore(tokens.next().unwrap());
    assert_eq!(l.in_flight(), 2);
    let again = l.try_acquire(now).expect("a slot came back");
    l.success(again, now);
    for t in tokens {
        l.dropped(t, now);
    }
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn samples_carry_the_rtt_the_in_flight_count_and_the_drop_flag() {
    #[derive(Debug, Default)]
    struct Record(Vec<Sample>);
    impl Algorithm for Record {
        fn limit(&self) -> u32 {
            10
        }
        fn update(&mut self, _now: Instant, sample: &Sample) -> u32 {
            self.0.push(*sample);
            10
        }
    }
    let l = ConcurrencyLimiter::new(Record::default());
    let t0 = Instant::now();
    let a = l.try_acquire(t0).unwrap();
    let b = l.try_acquire(t0 + Duration::from_millis(5)).unwrap();
    l.success(a, t0 + Duration::from_millis(30));
    l.dropped(b, t0 + Duration::from_millis(25));
    let samples = l.with_algorithm(|r| r.0.clone());
    assert_eq!(
        samples,
        [
            Sample {
                rtt: Duration::from_millis(30),
                inflight: 1,
                dropped: false
            },
            Sample {
                rtt: Duration::from_millis(20),
                inflight: 2,
                dropped: true
            },
        ]
    );
}

#[test]
fn listeners_hear_the_first_limit_and_every_change_only() {
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heard.clone();
    let aimd = Aimd::new(AimdConfig {
        initial_limit: 2,
        ..AimdConfig::default()
    })
    .unwrap();
    let l = ConcurrencyLimiter::new(aimd).on_limit_change(move |n| h.lock().unwrap().push(n));
    let now = Instant::now();
    let a = l.try_acquire(now).unwrap();
    l.success(a, now); // 1 in flight of 2: busy enough, 2 → 3
    let a = l.try_acquire(now).unwrap();
    l.ignore(a); // no sample, no change
    let a = l.try_acquire(now).unwrap();
    l.dropped(a, now); // 3 → 2
    assert_eq!(*heard.lock().unwrap(), [2, 3, 2]);
}

#[test]
fn a_class_under_its_guarantee_gets_in_when_the_limit_is_reached() {
    let p = Partitions::new(&[0.5, 0.5]).unwrap();
    let l = ConcurrencyLimiter::partitioned(Fixed(4), p);
    let now = Instant::now();
    // Class 1 borrows the whole limit while class 0 is idle.
    let batch: Vec<_> = (0..4).map(|_| l.try_acquire_in(1, now).unwrap()).collect();
    assert!(l.try_acquire_in(1, now).is_err(), "class 1 is over its 2");
    // Class 0 still gets its guaranteed 2, over the limit.
    let a = l.try_acquire_in(0, now).unwrap();
    let b = l.try_acquire_in(0, now).unwrap();
    assert_eq!(b.in_flight(), 6);
    let refused = l.try_acquire_in(0, now).unwrap_err();
    assert_eq!((refused.class, refused.in_flight), (0, 6));
    assert_eq!((l.in_flight_in(0), l.in_flight_in(1)), (2, 4));
    for t in batch.into_iter().chain([a, b]) {
        l.ignore(t);
    }
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn a_class_out_of_range_counts_as_the_last_one() {
    let l = ConcurrencyLimiter::partitioned(Fixed(4), Partitions::new(&[0.75, 0.25]).unwrap());
    let t = l.try_acquire_in(9, Instant::now()).unwrap();
    assert_eq!(t.class(), 1);
    assert_eq!(l.in_flight_in(1), 1);
    assert_eq!(l.in_flight_in(9), 0);
    l.ignore(t);
}

#[test]
fn bad_partitions_are_refused() {
    for shares in [&[][..], &[0.5, 0.6], &[-0.1], &[0.2; 5], &[f64::NAN]] {
        assert_eq!(
            Partitions::new(shares).unwrap_err().field(),
            "partitions",
            "{shares:?}"
        );
    }
    assert_eq!(Partitions::new(&[0.25; 4]).unwrap().guaranteed(3, 10), 3);
}

#[test]
fn concurrent_acquires_never_exceed_the_limit_and_all_slots_come_back() {
    let l = Arc::new(ConcurrencyLimiter::new(Fixed(8)));
    let peak = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (l, peak) = (l.clone(), peak.clone());
            s.spawn(move || {
                for _ in 0..20_000 {
                    if let Ok(t) = l.try_acquire(Instant::now()) {
                        peak.fetch_max(l.in_flight(), Ordering::Relaxed);
                        l.success(t, Instant::now());
                    }
                }
            });
        }
    });
    assert!(peak.load(Ordering::Relaxed) <= 8);
    assert_eq!(l.in_flight(), 0);
}

proptest::proptest! {
    /// Against a model with one counter per class: the same decision for
    /// every acquire and release, for any shares, limit and trace.
    #[test]
    fn partitioned_admission_matches_the_model(
        shares in proptest::collection::vec(0u8..=4, 1..=4),
        limit in 1u32..12,
        ops in proptest::collection::vec((0usize..5, proptest::bool::ANY), 1..200),
    ) {
        let total_share: u32 = shares.iter().map(|&s| u32::from(s)).sum::<u32>().max(4);
        let shares: Vec<f64> = shares.iter().map(|&s| f64::from(s) / f64::from(total_share)).collect();
        let p = Partitions::new(&shares).unwrap();
        let l = ConcurrencyLimiter::partitioned(Fixed(limit), p);
        let mut held: Vec<Vec<Token>> = (0..MAX_CLASSES).map(|_| Vec::new()).collect();
        let mut model = [0u32; MAX_CLASSES];
        let now = Instant::now();
        for (class, acquire) in ops {
            let c = class.min(p.classes() - 1);
            if acquire {
                let sum: u32 = model.iter().sum();
                let admit = sum < limit || (p.classes() > 1 && model[c] < p.guaranteed(c, limit));
                let got = l.try_acquire_in(class, now);
                proptest::prop_assert_eq!(got.is_ok(), admit);
                if let Ok(t) = got {
                    model[c] += 1;
                    held[c].push(t);
                }
            } else if let Some(t) = held[c].pop() {
                model[c] -= 1;
                l.ignore(t);
            }
            proptest::prop_assert_eq!(l.in_flight(), model.iter().sum::<u32>());
            proptest::prop_assert_eq!(l.in_flight_in(c), model[c]);
        }
        for t in held.into_iter().flatten() {
            l.ignore(t);
        }
    }
}
