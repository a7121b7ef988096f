//! Unit tests of the controller module.
use super::*;

fn p(b: u8, u: u8) -> Priority {
    Priority::new(b, u).unwrap()
}

#[test]
fn queuing_samples_round_to_the_nearest_microsecond_and_saturate() {
    assert_eq!(micros(Duration::ZERO), 0);
    assert_eq!(micros(Duration::from_nanos(499)), 0);
    assert_eq!(micros(Duration::from_nanos(500)), 1);
    assert_eq!(micros(Duration::from_nanos(20_000_499)), 20_000);
    assert_eq!(micros(Duration::new(3, 999_999_500)), 4_000_000);
    assert_eq!(micros(Duration::from_micros(MAX_SAMPLE_US)), MAX_SAMPLE_US);
    assert_eq!(
        micros(Duration::from_micros(MAX_SAMPLE_US + 1)),
        MAX_SAMPLE_US
    );
    assert_eq!(micros(Duration::from_secs(17)), MAX_SAMPLE_US);
    assert_eq!(micros(Duration::MAX), MAX_SAMPLE_US);
}

fn level(cells: &[(Priority, u32)], drops: u64, old: Priority, overloaded: bool) -> Priority {
    let mut cells: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
    cells.sort_unstable();
    let least_seen = cells.last().map_or(0, |c| c.0);
    let w = Window {
        cells: &cells,
        upstream_drops: drops,
        overloaded,
        least_seen,
    };
    Priority::from_index(w.next_level(old.index(), 0.05, 0.01).0)
}

#[test]
fn overload_sheds_alpha_of_the_admitted() {
    // 100 admitted in four cells; N_exp = 95: the cells of 40+30+20 = 90
    // fit, the fourth (10 more, 100) does not.
    let cells = [(p(0, 5), 40), (p(1, 0), 30), (p(1, 9), 20), (p(2, 3), 10)];
    assert_eq!(level(&cells, 0, Priority::LOWEST, true), p(2, 2));
}

#[test]
fn refused_arrivals_do_not_count_as_admitted() {
    // Level (1, 9): N_adm = 90 (the (2, 3) cell was refused). Overloaded:
    // N_exp = 85.5: 40 + 30 = 70 fits, + 20 = 90 does not.
    let cells = [(p(0, 5), 40), (p(1, 0), 30), (p(1, 9), 20), (p(2, 3), 10)];
    assert_eq!(level(&cells, 0, p(1, 9), true), p(1, 8));
    // Not overloaded: N_exp = 90 + 0.01 × 100 = 91 stops short of (2, 3),
    // so β·N admits no further arrival: the progress rule admits (2, 3).
    assert_eq!(level(&cells, 0, p(1, 9), false), p(2, 3));
    // With a larger β the formula alone gets there: N_exp = 90 + 10 = 100.
    let mut idx: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
    idx.sort_unstable();
    let w = Window {
        cells: &idx,
        upstream_drops: 0,
        overloaded: false,
        least_seen: p(2, 3).index(),
    };
    assert_eq!(
        w.next_level(p(1, 9).index(), 0.05, 0.1).0,
        Priority::LOWEST.index()
    );
}

#[test]
fn recovery_admits_all_when_every_level_fits() {
    // Level (1, 0), 100 arrivals, 99 admitted: N_exp = 99 + 1 = 100.
    let cells = [(p(0, 0), 99), (p(3, 0), 1)];
    assert_eq!(level(&cells, 0, p(1, 0), false), Priority::LOWEST);
}

#[test]
fn the_most_important_cell_is_a_floor() {
    let cells = [(p(0, 0), 100)];
    assert_eq!(level(&cells, 0, Priority::LOWEST, true), p(0, 0));
    assert_eq!(
        level(&[], 0, p(0, 0), true),
        Priority::LOWEST,
        "nothing arrived: all fit"
    );
}

#[test]
fn progress_rule_admits_the_next_busy_cell() {
    // Level (0, 127): 10 admitted, 990 refused in one cell. N_exp = 10 +
    // 9.9 does not reach (5, 5); the progress rule admits it anyway.
    let cells = [(p(0, 1), 10), (p(5, 5), 990)];
    assert_eq!(level(&cells, 0, p(0, 127), false), p(5, 5));
    // Overloaded: no progress.
    assert_eq!(level(&cells, 0, p(0, 127), true), p(0, 0));
}

#[test]
fn upstream_drops_hold_the_level_back() {
    // Clients filtered everything below (1, 127); the server saw 1000
    // admitted arrivals up to it and 1000 dropped upstream, spread over
    // (1, 127)..=(3, 127) (least seen earlier): 256 cells, 3.906 each.
    // N_exp = 1000 + 20 = 1020: 5 more cells fit (19.5), the 6th not.
    let cells = [(p(0, 0), 500), (p(1, 127), 500)];
    let mut cells_idx: Vec<(u16, u32)> = cells.iter().map(|&(p, n)| (p.index(), n)).collect();
    cells_idx.sort_unstable();
    let w = Window {
        cells: &cells_idx,
        upstream_drops: 1000,
        overloaded: false,
        least_seen: p(3, 127).index(),
    };
    let (lvl, stats) = w.next_level(p(1, 127).index(), 0.05, 0.01);
    assert_eq!(stats.arrivals, 2000);
    assert_eq!(Priority::from_index(lvl), p(2, 4));
    // Without the drops the same window would admit everything.
    assert_eq!(level(&cells, 0, p(1, 127), false), Priority::LOWEST);
}

#[test]
fn threshold_boundary_is_not_overloaded() {
    let t0 = Instant::now();
    let config = AdmissionConfig {
        window_requests: 4,
        ..Default::default()
    };
    let c = AdmissionController::new(&config, t0).unwrap();
    for q in [10, 20, 30, 20] {
        c.record_queuing(t0, Duration::from_millis(q));
    }
    for b in 0..4 {
        c.admit(t0, p(b, 0)).unwrap();
    }
    let report = c.last_window().unwrap();
    assert_eq!(report.average_queuing, Duration::from_millis(20));
    assert!(!report.overloaded, "exactly the threshold is not above it");
    assert_eq!(report.level, Priority::LOWEST);
}

/// The spec read literally, over every cell (no skipping): the
/// reference the sparse walk must match.
fn reference(cells: &[(u16, u32)], old: u16, overloaded: bool, alpha: f64, beta: f64) -> u16 {
    let mut dense = vec![0u64; CELLS];
    for &(c, n) in cells {
        dense[usize::from(c)] += u64::from(n);
    }
    let n: u64 = dense.iter().sum();
    let n_adm: u64 = dense[..=usize::from(old)].iter().sum();
    let expected = if overloaded {
        (1.0 - alpha) * n_adm as f64
    } else {
        n_adm as f64 + beta * n as f64
    };
    let mut cumulative = 0.0;
    let mut level = ADMIT_ALL;
    for (cell, &count) in dense.iter().enumerate() {
        cumulative += count as f64;
        if cumulative > expected {
            level = (cell as u16).saturating_sub(1);
            break;
        }
    }
    if !overloaded
        && old < ADMIT_ALL
        && let Some(next) = (usize::from(old) + 1..CELLS).find(|&c| dense[c] > 0)
    {
        level = level.max(next as u16);
    }
    level
}

proptest::proptest! {
    #[test]
    fn sparse_walk_matches_the_reference(
        raw in proptest::collection::btree_map(0u16..600, 1u32..500, 0..40),
        old in 0u16..700,
        overloaded: bool,
    ) {
        let cells: Vec<(u16, u32)> = raw.into_iter().collect();
        let w = Window { cells: &cells, upstream_drops: 0, overloaded, least_seen: 600 };
        let (got, stats) = w.next_level(old, 0.05, 0.01);
        proptest::prop_assert_eq!(got, reference(&cells, old, overloaded, 0.05, 0.01));
        proptest::prop_assert_eq!(stats.arrivals, cells.iter().map(|c| u64::from(c.1)).sum::<u64>());
    }
}

#[test]
fn window_closes_by_count() {
    let t0 = Instant::now();
    let config = AdmissionConfig {
        window_requests: 10,
        ..Default::default()
    };
    let c = AdmissionController::new(&config, t0).unwrap();
    for _ in 0..9 {
        c.admit(t0, p(1, 1)).unwrap();
    }
    assert!(c.last_window().is_none(), "9 of 10 arrivals: still open");
    c.admit(t0, p(1, 1)).unwrap();
    let report = c.last_window().expect("the 10th arrival closes it");
    assert_eq!(report.arrivals, 10);
    assert_eq!(report.admitted, 10);
    assert!(c.take_report().is_some());
    assert!(c.take_report().is_none(), "a report is taken once");
}

#[test]
fn window_closes_by_time() {
    let t0 = Instant::now();
    let c = AdmissionController::new(&AdmissionConfig::default(), t0).unwrap();
    let s = Duration::from_secs;
    c.admit(t0, p(3, 3)).unwrap();
    c.record_queuing(t0, Duration::from_millis(25));
    assert!(c.poll_window(t0 + Duration::from_millis(999)).is_none());
    // The next arrival after 1 s closes the window first, then is
    // decided by the new level: overloaded, N_adm = 1, N_exp = 0.95, so
    // the level stops just above the one busy cell.
    assert_eq!(c.admit(t0 + s(1), p(3, 3)), Err(p(3, 2)));
    let report = c.last_window().unwrap();
    assert!(report.overloaded);
    assert_eq!(
        (report.arrivals, report.samples),
        (1, 1),
        "the late arrival is in the next window"
    );
    assert_eq!(report.average_queuing, Duration::from_millis(25));
    // The new window runs 1 s from its start: not overloaded (no
    // samples), the refused cell is admitted again by the progress rule.
    assert!(
        c.poll_window(t0 + s(1) + Duration::from_millis(999))
            .is_none()
    );
    let report = c.poll_window(t0 + s(2)).unwrap();
    assert!(!report.overloaded);
    assert_eq!((report.arrivals, report.admitted), (1, 0));
    assert_eq!(c.level(), p(3, 3));
}

#[test]
fn concurrent_arrivals_are_all_counted() {
    let t0 = Instant::now();
    let config = AdmissionConfig {
        window: Duration::from_secs(3600),
        window_requests: AdmissionConfig::MAX_WINDOW_REQUESTS,
        ..Default::default()
    };
    let c = std::sync::Arc::new(AdmissionController::new(&config, t0).unwrap());
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..50_000u32 {
                    let user = ((i * 7 + u32::from(t)) % 128) as u8;
                    c.admit(t0, p(t, user)).unwrap();
                    c.record_queuing(t0, Duration::from_micros(u64::from(i % 3)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let report = c.poll_window(t0 + Duration::from_secs(3600)).unwrap();
    assert_eq!(report.arrivals, 200_000);
    assert_eq!(report.samples, 200_000);
    assert_eq!(report.admitted, 200_000);
}
