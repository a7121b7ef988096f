//! The sans-IO queue under virtual time: the RFC 8289 drop schedule, the
//! threshold convention, Fail-at-Scale timeouts, LIFO and FIFO order,
//! deadline-aware dropping and queue-full rejection.

use std::time::Duration;

use floodwall_codel::{AdmissionQueue, CodelConfig, DropReason, Lifo, Policy};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn codel_fifo() -> CodelConfig {
    CodelConfig {
        policy: Policy::codel(),
        lifo: Lifo::Never,
        max_queue: 100_000,
        ..Default::default()
    }
}

/// Pops once every millisecond over `[from, to]`, returning the
/// millisecond of every CoDel drop.
fn pop_every_ms(q: &mut AdmissionQueue<u32>, t0: Instant, from: u64, to: u64) -> Vec<u64> {
    let mut drops = Vec::new();
    for t in from..=to {
        let mut dropped = 0;
        q.pop(t0 + ms(t), |_, why| {
            assert_eq!(why, DropReason::Codel);
            dropped += 1;
        });
        drops.extend(std::iter::repeat_n(t, dropped));
    }
    drops
}

#[test]
fn rfc8289_drop_schedule_follows_the_control_law() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..5_000 {
        q.push(t0, i, t0, None).unwrap();
    }
    let drops = pop_every_ms(&mut q, t0, 10, 600);
    // Sojourns are above TARGET from the first pop (10 ms), so the first
    // drop comes one INTERVAL later, at 110 ms, entering the dropping
    // state with count 1; then drop k+1 is due at drop_next + 100/sqrt(k).
    let mut expected = vec![110u64];
    let mut next: f64 = 110.0 + 100.0;
    let mut count = 1.0f64;
    while next <= 600.0 {
        expected.push(next.ceil() as u64);
        count += 1.0;
        next += 100.0 / count.sqrt();
    }
    assert_eq!(drops, expected);
    assert_eq!(drops[..5], [110, 210, 281, 339, 389]);
    assert!(q.is_dropping());
}

#[test]
fn leaving_and_reentering_within_16_intervals_reuses_the_count() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..1_000 {
        q.push(t0, i, t0, None).unwrap();
    }
    let drops = pop_every_ms(&mut q, t0, 10, 400);
    assert_eq!(drops, [110, 210, 281, 339, 389]);
    assert_eq!(q.drop_count(), 5);
    let last_drop_next = q.drop_next().unwrap();

    // The queue empties: an empty dequeue leaves the dropping state.
    while q.remove(|_| true).is_some() {}
    assert_eq!(q.pop(t0 + ms(401), |_, _| panic!("nothing to drop")), None);
    assert!(!q.is_dropping());

    // New requests, each already 10 ms old: above TARGET again.
    let t1 = t0 + ms(500);
    for i in 0..100 {
        q.push(t1, i, t1 - ms(10), None).unwrap();
    }
    assert_eq!(q.pop(t1, |_, _| panic!("first interval")), Some(0));
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t1 + ms(100), |i, _| dropped.push(i)), Some(2));
    assert_eq!(dropped, [1]);
    // Re-entered within 16 intervals of the last drop_next: count = 5 - 1.
    assert!(t1 + ms(100) - last_drop_next < ms(1600));
    assert_eq!(q.drop_count(), 4);
    assert_eq!(
        q.drop_next(),
        Some(t1 + ms(100) + ms(50)),
        "100 ms / sqrt(4)"
    );
}

#[test]
fn reentering_after_16_intervals_starts_the_count_again() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..1_000 {
        q.push(t0, i, t0, None).unwrap();
    }
    pop_every_ms(&mut q, t0, 10, 400);
    while q.remove(|_| true).is_some() {}
    q.pop(t0 + ms(401), |_, _| {});
    let t1 = t0 + ms(400) + ms(1_700);
    for i in 0..100 {
        q.push(t1, i, t1 - ms(10), None).unwrap();
    }
    q.pop(t1, |_, _| {});
    q.pop(t1 + ms(100), |_, _| {});
    assert!(q.is_dropping());
    assert_eq!(q.drop_count(), 1);
    assert_eq!(q.drop_next(), Some(t1 + ms(200)));
}

#[test]
fn a_sojourn_equal_to_target_counts_as_above() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..10 {
        q.push(t0, i, t0, None).unwrap();
    }
    // Exactly 5 ms: above, so the interval starts and 100 ms later the
    // next above-target pop drops.
    assert_eq!(q.pop(t0 + ms(5), |_, _| panic!()), Some(0));
    let mut dropped = 0;
    q.pop(t0 + ms(105), |_, _| dropped += 1);
    assert_eq!(dropped, 1);

    // Just below TARGET resets the interval: no drop 100 ms later.
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..10 {
        q.push(t0, i, t0, None).unwrap();
    }
    let below = t0 + ms(5) - Duration::from_nanos(1);
    assert_eq!(q.pop(below, |_, _| panic!()), Some(0));
    assert_eq!(
        q.pop(t0 + ms(100), |_, _| panic!("interval started at 100 ms")),
        Some(1)
    );
    assert_eq!(
        q.pop(t0 + ms(199), |_, _| panic!("not yet an interval")),
        Some(2)
    );
    let mut dropped = 0;
    q.pop(t0 + ms(200), |_, _| dropped += 1);
    assert_eq!(dropped, 1);
}

#[test]
fn the_last_request_is_never_dropped_by_codel() {
    // The RFC's bytes <= maxpacket: with nobody else queued, serve.
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    q.push(t0, 0, t0, None).unwrap();
    q.push(t0, 1, t0, None).unwrap();
    assert_eq!(q.pop(t0 + ms(10), |_, _| panic!()), Some(0));
    assert_eq!(q.pop(t0 + ms(500), |_, _| panic!()), Some(1));
}

#[test]
fn fail_at_scale_timeout_is_n_when_calm_and_m_when_standing() {
    let t0 = Instant::now();
    let config = CodelConfig {
        lifo: Lifo::Never,
        ..Default::default()
    };
    let mut q = AdmissionQueue::new(&config).unwrap();
    // Empty queue: the long timeout.
    assert_eq!(q.push(t0, 0, t0, None), Ok(Some(t0 + ms(100))));
    // Not empty since t0, but only for 100 ms: still N.
    assert_eq!(q.timeout_at(t0 + ms(100)), Some(ms(100)));
    // Not empty at any time in the last 100 ms: M.
    let t = t0 + ms(101);
    assert_eq!(q.push(t, 1, t, None), Ok(Some(t + ms(5))));

    let mut dropped = Vec::new();
    // At 100 ms request 0 has waited exactly its timeout: still served.
    assert_eq!(q.pop(t0 + ms(100), |i, r| dropped.push((i, r))), Some(0));
    // Request 1 waited 6 ms > 5 ms: dropped, nothing left.
    assert_eq!(q.pop(t + ms(6), |i, r| dropped.push((i, r))), None);
    assert_eq!(dropped, [(1, DropReason::Timeout)]);

    // The queue emptied: calm again, N.
    let t2 = t + ms(7);
    assert_eq!(q.push(t2, 2, t2, None), Ok(Some(t2 + ms(100))));
}

#[test]
fn queue_time_counts_from_arrival() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig::default()).unwrap();
    let arrived = t0 - ms(60);
    assert_eq!(q.push(t0, 0, arrived, None), Ok(Some(arrived + ms(100))));
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t0 + ms(41), |i, r| dropped.push((i, r))), None);
    assert_eq!(dropped, [(0, DropReason::Timeout)]);
}

#[test]
fn fifo_when_calm_lifo_when_standing() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig {
        policy: Policy::FailAtScale {
            target: ms(50),
            interval: ms(100),
        },
        ..Default::default()
    })
    .unwrap();
    for i in 0..6 {
        q.push(t0, i, t0, None).unwrap();
    }
    assert!(!q.is_lifo(t0 + ms(50)));
    assert_eq!(q.pop(t0 + ms(50), |_, _| panic!()), Some(0));
    assert_eq!(q.pop(t0 + ms(60), |_, _| panic!()), Some(1));
    // Standing for more than N: newest first, once the expired requests
    // are gone. 2..=5 were queued while calm (timeout N = 100 ms) and have
    // waited 101 ms: dropped first, oldest first.
    let t = t0 + ms(101);
    q.push(t, 6, t, None).unwrap();
    q.push(t, 7, t, None).unwrap();
    assert!(q.is_lifo(t));
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t, |i, r| dropped.push((i, r))), Some(7));
    assert_eq!(dropped, [2, 3, 4, 5].map(|i| (i, DropReason::Timeout)));
    assert_eq!(q.pop(t, |_, _| panic!()), Some(6));
    // Emptied: calm, FIFO again.
    q.push(t, 7, t, None).unwrap();
    q.push(t, 8, t, None).unwrap();
    assert!(!q.is_lifo(t));
    assert_eq!(q.pop(t, |_, _| panic!()), Some(7));
}

#[test]
fn hhvm_style_length_threshold() {
    let t0 = Instant::now();
    // HHVM's JobQueue: newest first while more than T wait.
    let mut q = AdmissionQueue::new(&CodelConfig {
        lifo: Lifo::Length(2),
        ..Default::default()
    })
    .unwrap();
    for i in 0..4 {
        q.push(t0, i, t0, None).unwrap();
    }
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(3), "4 waiting: LIFO");
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(2), "3 waiting: LIFO");
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(0), "2 waiting: FIFO");
}

#[test]
fn a_zero_length_threshold_is_pure_lifo() {
    let t0 = Instant::now();
    let config = CodelConfig {
        lifo: Lifo::Length(0),
        ..Default::default()
    };
    config.validate().unwrap();
    let mut q = AdmissionQueue::new(&config).unwrap();
    assert!(!q.is_lifo(t0), "nothing waits");
    for i in 0..3 {
        q.push(t0, i, t0, None).unwrap();
    }
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(2));
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(1));
    assert_eq!(
        q.pop(t0, |_, _| panic!()),
        Some(0),
        "one waiting: still newest first"
    );
}

#[test]
fn the_queue_refuses_a_config_the_layer_refuses() {
    let bad = CodelConfig {
        workers: 0,
        ..Default::default()
    };
    assert_eq!(
        AdmissionQueue::<u32>::new(&bad).unwrap_err().field(),
        "workers"
    );
}

#[test]
fn deadlines_that_cannot_be_met_are_dropped() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig {
        min_remaining: ms(10),
        ..Default::default()
    })
    .unwrap();
    // Leaves exactly min_remaining: cannot be met, refused at once.
    assert_eq!(
        q.push(t0, 0, t0, Some(t0 + ms(10))),
        Err((0, DropReason::Deadline))
    );
    q.push(t0, 1, t0, Some(t0 + ms(30))).unwrap();
    q.push(t0, 2, t0, Some(t0 + ms(90))).unwrap();
    let mut dropped = Vec::new();
    // At 20 ms request 1 would have 10 ms left: dropped; 2 is served.
    assert_eq!(q.pop(t0 + ms(20), |i, r| dropped.push((i, r))), Some(2));
    assert_eq!(dropped, [(1, DropReason::Deadline)]);
}

#[test]
fn a_full_queue_rejects_at_once() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig {
        max_queue: 2,
        ..Default::default()
    })
    .unwrap();
    q.push(t0, 0, t0, None).unwrap();
    q.push(t0, 1, t0, None).unwrap();
    assert_eq!(q.push(t0, 2, t0, None), Err((2, DropReason::Full)));
    assert_eq!(q.len(), 2);
    q.pop(t0, |_, _| panic!());
    q.push(t0, 3, t0, None).unwrap();
}

#[test]
fn removing_a_waiter_takes_it_out_at_once() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig::default()).unwrap();
    for i in 0..3 {
        q.push(t0, i, t0, None).unwrap();
    }
    assert_eq!(q.remove(|&i| i == 1), Some(1));
    assert_eq!(q.remove(|&i| i == 1), None);
    assert_eq!(q.len(), 2);
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(0));
    assert_eq!(q.pop(t0, |_, _| panic!()), Some(2));
    assert!(q.is_empty());
}

#[test]
fn invalid_configs_name_their_field() {
    let bad = [
        (
            CodelConfig {
                workers: 0,
                ..Default::default()
            },
            "workers",
        ),
        (
            CodelConfig {
                policy: Policy::Codel {
                    target: ms(0),
                    interval: ms(100),
                },
                ..Default::default()
            },
            "policy.target",
        ),
        (
            CodelConfig {
                policy: Policy::FailAtScale {
                    target: ms(200),
                    interval: ms(100),
                },
                ..Default::default()
            },
            "policy.target",
        ),
        (
            CodelConfig {
                policy: Policy::FailAtScale {
                    target: ms(5),
                    interval: ms(0),
                },
                ..Default::default()
            },
            "policy.interval",
        ),
    ];
    for (config, field) in bad {
        assert_eq!(config.validate().unwrap_err().field(), field, "{config:?}");
    }
    CodelConfig::default().validate().unwrap();
}

#[cfg(feature = "serde")]
#[test]
fn config_deserializes_with_human_durations() {
    let config: CodelConfig = serde_json::from_str(
        r#"{ "workers": 8, "max_queue": 64,
             "policy": { "codel": { "target": "10ms", "interval": "200ms" } },
             "lifo": { "length": 16 }, "min_remaining": "2ms" }"#,
    )
    .unwrap();
    assert_eq!(
        config,
        CodelConfig {
            workers: 8,
            max_queue: 64,
            policy: Policy::Codel {
                target: ms(10),
                interval: ms(200)
            },
            lifo: Lifo::Length(16),
            min_remaining: ms(2),
        }
    );
    let partial: CodelConfig = serde_json::from_str(r#"{ "lifo": "never" }"#).unwrap();
    assert_eq!(
        partial,
        CodelConfig {
            lifo: Lifo::Never,
            ..Default::default()
        }
    );
    assert!(serde_json::from_str::<CodelConfig>(r#"{ "wrokers": 1 }"#).is_err());
}

#[test]
fn a_queue_emptied_by_cancellations_starts_the_next_episode_afresh() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..1_000 {
        q.push(t0, i, t0, None).unwrap();
    }
    pop_every_ms(&mut q, t0, 10, 400);
    assert!(q.is_dropping());
    // Every waiter gives up; no pop ever sees the empty queue.
    while q.remove(|_| true).is_some() {}
    assert!(!q.is_dropping());

    // The next episode must wait a whole INTERVAL above TARGET again.
    let t1 = t0 + ms(500);
    for i in 0..100 {
        q.push(t1, i, t1 - ms(10), None).unwrap();
    }
    assert_eq!(q.pop(t1, |_, _| panic!("first above")), Some(0));
    assert_eq!(
        q.pop(t1 + ms(99), |_, _| panic!("within the interval")),
        Some(1)
    );
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t1 + ms(100), |i, _| dropped.push(i)), Some(3));
    assert_eq!(dropped, [2]);
    assert_eq!(q.drop_count(), 4, "the count is still reused");
}

#[test]
fn several_drops_are_due_in_one_dequeue() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..100 {
        q.push(t0, i, t0, None).unwrap();
    }
    assert_eq!(q.pop(t0 + ms(10), |_, _| panic!()), Some(0));
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t0 + ms(110), |i, _| dropped.push(i)), Some(2));
    // Next drops due at 210 and 210 + 100/sqrt(2) = 280.7: a dequeue at
    // 300 ms makes both, then serves.
    assert_eq!(q.pop(t0 + ms(300), |i, _| dropped.push(i)), Some(5));
    assert_eq!(dropped, [1, 3, 4]);
    assert_eq!(q.drop_count(), 3);
}

#[test]
fn a_sojourn_below_target_leaves_the_dropping_state() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&codel_fifo()).unwrap();
    for i in 0..10 {
        q.push(t0, i, t0, None).unwrap();
    }
    q.pop(t0 + ms(10), |_, _| {});
    q.pop(t0 + ms(110), |_, _| {});
    assert!(q.is_dropping());
    // A fresh head (the old requests gave up; the queue never emptied):
    // its sojourn is below TARGET.
    let t = t0 + ms(120);
    q.push(t, 10, t, None).unwrap();
    q.push(t, 11, t, None).unwrap();
    while q.remove(|&i| i < 10).is_some() {}
    assert!(q.is_dropping());
    assert_eq!(q.pop(t + ms(1), |_, _| panic!()), Some(10));
    assert!(!q.is_dropping());
}

#[test]
fn codel_with_lifo_drops_the_oldest_and_serves_the_newest() {
    let t0 = Instant::now();
    let mut q = AdmissionQueue::new(&CodelConfig {
        policy: Policy::codel(),
        lifo: Lifo::Length(2),
        ..Default::default()
    })
    .unwrap();
    for i in 0..10 {
        q.push(t0, i, t0, None).unwrap();
    }
    // Judged on the oldest request's sojourn, whatever is served.
    assert_eq!(q.pop(t0 + ms(10), |_, _| panic!()), Some(9));
    q.push(t0 + ms(100), 10, t0 + ms(100), None).unwrap();
    let mut dropped = Vec::new();
    assert_eq!(q.pop(t0 + ms(110), |i, r| dropped.push((i, r))), Some(10));
    assert_eq!(dropped, [(0, DropReason::Codel)], "the oldest goes");
    assert!(q.is_dropping());
}
