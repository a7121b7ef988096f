//! The overload lab's headline properties, cheaply: a few virtual-time
//! scenarios at 5× capacity (`cargo run --release -p floodwall-benches --bin
//! lab -- sim` and `-- concurrency` run them all).

use std::time::Duration;

use floodwall_benches::lab::report::csv;
use floodwall_benches::lab::{Row, Scenario, SimConfig, Stack, run, run_all};

fn config() -> SimConfig {
    SimConfig {
        // DAGOR needs its warm-up; a shorter measured time keeps this cheap.
        measure: Duration::from_secs(3),
        ..SimConfig::default()
    }
}

fn at_5x(stack: Stack, retries: bool) -> Scenario {
    Scenario {
        stack,
        load: 5.0,
        retries,
    }
}

fn rows(retries: bool) -> Vec<Row> {
    let stacks = [Stack::Unprotected, Stack::Codel, Stack::Full];
    let scenarios: Vec<_> = stacks.iter().map(|s| at_5x(*s, retries)).collect();
    run_all(&config(), &scenarios, 2).expect("scenarios build")
}

#[test]
fn same_seed_same_numbers() {
    let sc = at_5x(Stack::Full, true);
    let a = run(&config(), sc).unwrap();
    let b = run(&config(), sc).unwrap();
    assert_eq!(csv(std::slice::from_ref(&a)), csv(&[b]));
    assert!(a.offered > 0);
    let other = SimConfig {
        seed: 7,
        ..config()
    };
    let c = run(&other, sc).unwrap();
    assert_ne!(a.offered, c.offered, "another seed, other arrivals");
}

#[test]
fn floodwall_holds_goodput_at_5x_where_an_unbounded_fifo_collapses() {
    for retries in [false, true] {
        let rows = rows(retries);
        let [unprotected, codel, full] = &rows[..] else {
            unreachable!()
        };
        assert!(unprotected.goodput() < 0.2, "{unprotected:?}");
        // The FIFO spends its workers on answers nobody waits for.
        assert!(unprotected.wasted_fraction() > 0.9, "{unprotected:?}");
        for row in [codel, full] {
            assert!(row.goodput() >= 0.9, "retries {retries}: {row:?}");
            assert!(row.wasted_fraction() < 0.05, "{row:?}");
            assert!(row.latency.quantile(0.99) < Duration::from_millis(200));
        }
        // Priority admission serves the most important class first: at 5×
        // capacity only class 0 (a quarter of the load) fits.
        assert!(full.class_success(0) > 0.6, "{full:?}");
        assert!(full.class_success(3) < 0.05, "{full:?}");
        assert!(codel.class_success(3) > 0.1, "the queue alone is blind");
        if retries {
            // Naive clients multiply attempts; throttling and the retry
            // budget (and local drops by level) keep them below one per
            // request.
            assert!(codel.amplification() > 3.0, "{codel:?}");
            assert!(full.amplification() < 1.0, "{full:?}");
        }
    }
}

#[test]
fn floodwall_adaptive_limits_hold_goodput_at_5x_with_retrying_clients() {
    let stacks = [
        Stack::FwVegas,
        Stack::FwGradient2,
        Stack::FwAimd,
        Stack::FwEnvoy,
    ];
    let scenarios: Vec<_> = stacks.iter().map(|s| at_5x(*s, true)).collect();
    let rows = run_all(&config(), &scenarios, 2).expect("scenarios build");
    for row in &rows {
        assert!(row.goodput() >= 0.9, "{row:?}");
        assert!(row.latency.quantile(0.99) < Duration::from_millis(200));
        let limit = row.limit.expect("an adaptive stack reports its limit");
        // Above the 8 workers (a queue to keep them busy), far below the
        // 160 requests that would wait longer than the deadline.
        assert!((8.0..60.0).contains(&limit.mean), "{row:?}");
    }
}
