//! The breaker against a plain sequential model of the state machine on
//! random traces: the same state and generation after every step.

use std::collections::VecDeque;
use std::time::Duration;

use floodwall_breaker::{BreakerConfig, CircuitBreaker, Permit, State, WindowKind};
use proptest::prelude::*;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    generation: u64,
    kind: Kind,
    started: u64,
}

/// The state machine as SPECS.md states it, with a `VecDeque` window.
struct Model {
    config: BreakerConfig,
    state: State,
    generation: u64,
    window: VecDeque<(bool, bool)>,
    consecutive: u32,
    open_until: u64,
    probes_started: u32,
    probes: Vec<(bool, bool)>,
}

impl Model {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            generation: 0,
            window: VecDeque::new(),
            consecutive: 0,
            open_until: 0,
            probes_started: 0,
            probes: Vec::new(),
        }
    }

    fn move_to(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }

    fn acquire(&mut self, t: u64) -> Option<ModelPermit> {
        if self.state == State::Open {
            if t < self.open_until {
                return None;
            }
            self.move_to(State::HalfOpen);
            self.probes_started = 0;
            self.probes.clear();
        }
        let kind = match self.state {
            State::Closed => Kind::Call,
            State::HalfOpen if self.probes_started < self.config.half_open_calls => {
                self.probes_started += 1;
                Kind::Probe
            }
            _ => return None,
        };
        Some(ModelPermit {
            generation: self.generation,
            kind,
            started: t,
        })
    }

    fn trips(&self, calls: usize, failures: usize, slow: usize) -> bool {
        let calls = calls as f64;
        failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls
            || (self.config.detect_slow_calls
                && slow as f64 * 100.0 >= self.config.slow_call_rate_threshold * calls)
    }

    fn open(&mut self, t: u64) {
        self.open_until = t + self.config.open_duration.as_nanos() as u64;
        self.move_to(State::Open);
    }

    fn record(&mut self, p: ModelPermit, t: u64, failed: bool) {
        if p.generation != self.generation {
            return;
        }
        let slow = self.config.detect_slow_calls
            && t - p.started > self.config.slow_call_duration.as_nanos() as u64;
        match (self.state, p.kind) {
            (State::Closed, Kind::Call) => {
                let WindowKind::Count(n) = self.config.window else {
                    unreachable!()
                };
                if self.window.len() == n as usize {
                    self.window.pop_front();
                }
                self.window.push_back((failed, slow));
                let run = match self.config.consecutive_failures {
                    Some(limit) if failed => {
                        self.consecutive += 1;
                        self.consecutive >= limit
                    }
                    Some(_) => {
                        self.consecutive = 0;
                        false
                    }
                    None => false,
                };
                let calls = self.window.len();
                let failures = self.window.iter().filter(|w| w.0).count();
                let slows = self.window.iter().filter(|w| w.1).count();
                // A count window of n calls can never hold more than n, so
                // the breaker clamps the minimum to the window.
                let rates = self.config.rates
                    && calls as u32 >= self.config.minimum_calls.min(n)
                    && self.trips(calls, failures, slows);
                if run || rates {
                    self.open(t);
                }
            }
            (State::HalfOpen, Kind::Probe) => {
                self.probes.push((failed, slow));
                let n = self.config.half_open_calls as usize;
                if self.probes.len() == n {
                    let failures = self.probes.iter().filter(|p| p.0).count();
                    let slows = self.probes.iter().filter(|p| p.1).count();
                    if self.trips(n, failures, slows) {
                        self.open(t);
                    } else {
                        self.window.clear();
                        self.consecutive = 0;
                        self.move_to(State::Closed);
                    }
                }
            }
            _ => {}
        }
    }

    fn cancel(&mut self, p: ModelPermit) {
        if p.kind == Kind::Probe && p.generation == self.generation && self.state == State::HalfOpen
        {
            self.probes_started -= 1;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Acquire, run for `duration_ms`, report.
    Call { duration_ms: u64, failed: bool },
    /// Acquire and keep the permit.
    Hold,
    /// Report a held permit now.
    Finish { index: usize, failed: bool },
    /// Abandon a held permit.
    Cancel { index: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..30, any::<bool>()).prop_map(|(duration_ms, failed)| Op::Call { duration_ms, failed }),
        1 => Just(Op::Hold),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(index, failed)| Op::Finish { index, failed }),
        1 => any::<usize>().prop_map(|index| Op::Cancel { index }),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        1u32..=12,
        1u32..=15,
        1u32..=100,
        10u32..=100,
        1u32..=4,
        prop::option::of(1u32..=5),
        any::<bool>(),
    )
        .prop_map(
            |(n, minimum, failure, slow, probes, run, timed)| BreakerConfig {
                window: WindowKind::Count(n),
                minimum_calls: minimum,
                failure_rate_threshold: f64::from(failure),
                slow_call_rate_threshold: f64::from(slow),
                slow_call_duration: Duration::from_millis(20),
                open_duration: Duration::from_millis(100),
                half_open_calls: probes,
                consecutive_failures: run,
                detect_slow_calls: timed,
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn same_state_as_the_model_after_every_step(
        config in config(),
        trace in prop::collection::vec((0u64..60, op()), 1..300),
    ) {
        let epoch = Instant::now();
        let breaker = CircuitBreaker::with_epoch(config, epoch).unwrap();
        let mut model = Model::new(config);
        let mut held: Vec<(Permit, ModelPermit)> = Vec::new();
        let mut t = 0u64;
        let at = |t: u64| epoch + Duration::from_nanos(t);
        for (step, (dt_ms, op)) in trace.into_iter().enumerate() {
            t += dt_ms * 1_000_000;
            match op {
                Op::Call { duration_ms, failed } => {
                    let real = breaker.try_acquire(at(t));
                    let modeled = model.acquire(t);
                    prop_assert_eq!(real.is_ok(), modeled.is_some(), "acquire at step {}", step);
                    t += duration_ms * 1_000_000;
                    if let (Ok(p), Some(m)) = (real, modeled) {
                        if failed { breaker.on_failure(p, at(t)) } else { breaker.on_success(p, at(t)) }
                        model.record(m, t, failed);
                    }
                }
                Op::Hold => {
                    let real = breaker.try_acquire(at(t));
                    let modeled = model.acquire(t);
                    prop_assert_eq!(real.is_ok(), modeled.is_some(), "hold at step {}", step);
                    if let (Ok(p), Some(m)) = (real, modeled) {
                        held.push((p, m));
                    }
                }
                Op::Finish { index, failed } if !held.is_empty() => {
                    let (p, m) = held.swap_remove(index % held.len());
                    if failed { breaker.on_failure(p, at(t)) } else { breaker.on_success(p, at(t)) }
                    model.record(m, t, failed);
                }
                Op::Cancel { index } if !held.is_empty() => {
                    let (p, m) = held.swap_remove(index % held.len());
                    breaker.on_cancel(p);
                    model.cancel(m);
                }
                _ => {}
            }
            prop_assert_eq!(breaker.state(), model.state, "state after step {}", step);
            prop_assert_eq!(breaker.generation(), model.generation, "generation after step {}", step);
        }
    }
}
