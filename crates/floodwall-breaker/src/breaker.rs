use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::random::{Random, SplitMix};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{BreakerConfig, ConfigError, WindowKind};
use crate::window::{CountWindow, TimeWindow, WindowCounts, code};

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes fill the window.
    Closed,
    /// Calls are refused until the open duration has passed.
    Open,
    /// A limited number of probe calls decide between closing and opening.
    HalfOpen,
    /// Refused until a handle says otherwise.
    ForcedOpen,
    /// Everything passes and nothing is recorded.
    Disabled,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::Disabled,
        }
    }

    /// A short, stable, lower-case name, used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

/// A state transition, as listeners and subscribers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// The new state generation (it grows with every transition).
    pub generation: u64,
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`]. Report
/// how it went with [`CircuitBreaker::on_success`] /
/// [`on_failure`](CircuitBreaker::on_failure), or give it back with
/// [`on_cancel`](CircuitBreaker::on_cancel) if the call was abandoned.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "report the call's outcome or cancel the permit"]
pub struct Permit {
    generation: u64,
    kind: PermitKind,
    started: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    Call,
    Probe,
    Untracked,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind == PermitKind::Probe
    }
}

/// Why the breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The state that refused it.
    pub state: State,
    /// When the breaker will probe again, if it is waiting out an open
    /// duration.
    pub retry_after: Option<Duration>,
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

type Listener = Box<dyn Fn(&StateChange) + Send + Sync>;

/// The circuit breaker's sans-IO core: it never reads a clock, sleeps or
/// spawns; every method takes the current instant.
///
/// - **Closed**: calls flow and their outcomes fill a sliding window (the
///   last N calls exactly, or the last N seconds). Once it holds at least
///   `minimum_calls`, the breaker opens when failures are at least
///   `failure_rate_threshold` % of its calls, or slow calls at least
///   `slow_call_rate_threshold` % (a call is slow when it took at least
///   `slow_call_duration`); optionally also after `consecutive_failures` in
///   a row.
/// - **Open**: calls are refused (with the time left) for `open_duration`,
///   growing on repeated opens when [`Growth`](crate::Growth) is set.
/// - **HalfOpen**: the first caller after the open duration moves the
///   breaker here; at most `half_open_calls` probes are let through, and
///   once that many have finished their failure and slow-call rates, with
///   the same thresholds, decide: open again or close. A probe that is
///   cancelled frees its slot and decides nothing.
/// - **Closed again**, optionally ramping: a fraction of calls growing
///   linearly from `ramp_start` to all over `ramp`; the rest are refused.
/// - **ForcedOpen** / **Disabled**: set through [`force_open`](Self::force_open)
///   / [`disable`](Self::disable); [`reset`](Self::reset) closes.
///
/// Every transition starts a new **generation**; a call's outcome counts
/// only in the generation it was permitted in, so a slow call from before a
/// trip cannot decide a half-open state. Calls the breaker refused are never
/// recorded, so its own refusals can never keep it open.
///
/// The closed path is lock-free: a load of the state word, and on the
/// outcome a `fetch_add` and a `swap` on the count window (a counter update
/// only when the record leaving the window differs). Transitions take a lock.
pub struct CircuitBreaker {
    word: AtomicU64,
    config: BreakerConfig,
    epoch: Instant,
    window: Window,
    consecutive: AtomicU32,
    open_until: AtomicU64,
    opens: AtomicU32,
    closed_at: AtomicU64,
    probes_started: AtomicU32,
    probes_done: AtomicU32,
    probe_failures: AtomicU32,
    probe_slow: AtomicU32,
    transition: Mutex<()>,
    rng: Box<dyn Random>,
    listeners: Vec<Listener>,
    watch: watch::Sender<State>,
}

const NO_RAMP: u64 = u64::MAX;

fn pack(generation: u64, state: State) -> u64 {
    (generation << 8) | state as u64
}

fn unpack(word: u64) -> (u64, State) {
    (word >> 8, State::from_u8(word as u8))
}

impl CircuitBreaker {
    /// A closed breaker with `config`, its clock starting now.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::with_epoch(config, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn with_epoch(config: BreakerConfig, epoch: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            word: AtomicU64::new(pack(0, State::Closed)),
            window: match config.window {
                WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
                WindowKind::Time(s) => Window::Time(TimeWindow::new(s)),
            },
            config,
            epoch,
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            opens: AtomicU32::new(0),
            closed_at: AtomicU64::new(NO_RAMP),
            probes_started: AtomicU32::new(0),
            probes_done: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            probe_slow: AtomicU32::new(0),
            transition: Mutex::new(()),
            rng: Box::new(SplitMix::from_entropy()),
            listeners: Vec::new(),
            watch: watch::Sender::new(State::Closed),
        })
    }

    /// Draws jitter and ramp admissions from `rng` (seed it for tests).
    pub fn with_rng(mut self, rng: impl Random) -> Self {
        self.rng = Box::new(rng);
        self
    }

    /// Calls `listener` after every transition. Listeners run on the thread
    /// that made the transition, after the breaker's lock is released; keep
    /// them quick.
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    #[inline]
    fn nanos(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.epoch);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    /// The instant the breaker's clock starts at.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The current state.
    pub fn state(&self) -> State {
        unpack(self.word.load(Ordering::Acquire)).1
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        unpack(self.word.load(Ordering::Acquire)).0
    }

    /// A receiver that sees every state the breaker enters.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.watch.subscribe()
    }

    /// The closed state's window at `now`.
    pub fn counts(&self, now: Instant) -> WindowCounts {
        match &self.window {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(self.nanos(now) / 1_000_000_000),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Whether reporting an outcome needs the current time (slow-call
    /// timing or a time window); if not, any instant will do.
    pub fn needs_clock_to_record(&self) -> bool {
        self.config.detect_slow_calls || matches!(self.window, Window::Time(_))
    }

    /// Asks to make a call at `now`.
    ///
    /// # Errors
    /// [`Refused`] when the breaker is open (with the time until it probes),
    /// forced open, out of half-open probes, or ramping and this call is not
    /// in the admitted fraction.
    #[inline]
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Refused> {
        self.try_acquire_with(|| now)
    }

    /// As [`try_acquire`](Self::try_acquire), reading the time from `clock`
    /// only when the decision needs it: a closed breaker with a count
    /// window, no ramp under way and no slow-call timing decides without it.
    #[inline]
    pub fn try_acquire_with(&self, clock: impl Fn() -> Instant) -> Result<Permit, Refused> {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        let started = self.config.detect_slow_calls.then(&clock);
        match state {
            State::Closed => {
                let closed_at = self.closed_at.load(Ordering::Acquire);
                if closed_at != NO_RAMP && !self.ramp_admits(closed_at, clock()) {
                    return Err(Refused {
                        state,
                        retry_after: None,
                    });
                }
                Ok(Permit {
                    generation,
                    kind: PermitKind::Call,
                    started,
                })
            }
            State::Disabled => Ok(Permit {
                generation,
                kind: PermitKind::Untracked,
                started: None,
            }),
            State::ForcedOpen => Err(Refused {
                state,
                retry_after: None,
            }),
            State::Open => {
                let now = clock();
                let t = self.nanos(now);
                let until = self.open_until.load(Ordering::Acquire);
                if t < until {
                    return Err(Refused {
                        state,
                        retry_after: Some(Duration::from_nanos(until - t)),
                    });
                }
                self.to_half_open(generation);
                self.try_acquire(now)
            }
            State::HalfOpen => {
                let limit = self.config.half_open_calls;
                let taken =
                    self.probes_started
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                            (s < limit).then_some(s + 1)
                        });
                if taken.is_err() {
                    return Err(Refused {
                        state,
                        retry_after: None,
                    });
                }
                if self.generation() != generation {
                    // The half-open state ended while the slot was taken.
                    self.probes_started.fetch_sub(1, Ordering::AcqRel);
                    return self.try_acquire_with(clock);
                }
                Ok(Permit {
                    generation,
                    kind: PermitKind::Probe,
                    started,
                })
            }
        }
    }

    /// Whether a ramp that began at `closed_at` admits a call at `now`.
    fn ramp_admits(&self, closed_at: u64, now: Instant) -> bool {
        let Some(ramp) = self.config.ramp else {
            return true;
        };
        let elapsed = self.nanos(now).saturating_sub(closed_at);
        let ramp = ramp.as_nanos() as u64;
        if elapsed >= ramp {
            // The ramp is over: stop checking.
            let _ = self.closed_at.compare_exchange(
                closed_at,
                NO_RAMP,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return true;
        }
        let start = self.config.ramp_start;
        let fraction = start + (1.0 - start) * elapsed as f64 / ramp as f64;
        self.rng.next_f64() < fraction
    }

    /// The fraction of calls admitted at `now` (1 outside a ramp).
    pub fn admitted_fraction(&self, now: Instant) -> f64 {
        let closed_at = self.closed_at.load(Ordering::Acquire);
        match (self.state(), self.config.ramp) {
            (State::Closed, Some(ramp)) if closed_at != NO_RAMP => {
                let elapsed = self.nanos(now).saturating_sub(closed_at) as f64;
                let start = self.config.ramp_start;
                (start + (1.0 - start) * elapsed / ramp.as_nanos() as f64).min(1.0)
            }
            (State::Closed | State::Disabled, _) => 1.0,
            _ => 0.0,
        }
    }

    /// Reports that the call permitted by `permit` succeeded, at `now`.
    pub fn on_success(&self, permit: Permit, now: Instant) {
        self.record(permit, now, false);
    }

    /// Reports that the call permitted by `permit` failed, at `now`.
    pub fn on_failure(&self, permit: Permit, now: Instant) {
        self.record(permit, now, true);
    }

    /// Gives back the permit of a call that was abandoned: a half-open probe
    /// frees its slot; nothing is recorded either way.
    pub fn on_cancel(&self, permit: Permit) {
        if permit.kind == PermitKind::Probe && self.generation() == permit.generation {
            let _ = self
                .probes_started
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1));
        }
    }

    fn record(&self, permit: Permit, now: Instant, failed: bool) {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if permit.generation != generation || permit.kind == PermitKind::Untracked {
            // From an earlier generation: it must not decide this one.
            return;
        }
        let slow = permit
            .started
            .is_some_and(|s| now.saturating_duration_since(s) >= self.config.slow_call_duration);
        match (state, permit.kind) {
            (State::Closed, PermitKind::Call) => self.record_closed(generation, now, failed, slow),
            (State::HalfOpen, PermitKind::Probe) => {
                self.record_probe(generation, now, failed, slow)
            }
            _ => {}
        }
    }

    #[inline]
    fn record_closed(&self, generation: u64, now: Instant, failed: bool, slow: bool) {
        let counts = match &self.window {
            Window::Count(w) => w.record(code(failed, slow)),
            Window::Time(w) => w.record(self.nanos(now) / 1_000_000_000, code(failed, slow)),
        };
        let consecutive_trip = match self.config.consecutive_failures {
            Some(limit) if failed => self.consecutive.fetch_add(1, Ordering::AcqRel) + 1 >= limit,
            Some(_) => {
                self.consecutive.store(0, Ordering::Release);
                false
            }
            None => false,
        };
        if consecutive_trip || self.over_threshold(counts) {
            self.trip(generation, now);
        }
    }

    /// Whether the window's rates reach a threshold (with at least
    /// `minimum_calls` calls in it).
    #[inline]
    fn over_threshold(&self, c: WindowCounts) -> bool {
        if (c.failures == 0 && c.slow == 0) || c.calls < self.config.minimum_calls {
            return false;
        }
        self.rates_trip(c.calls, c.failures, c.slow)
    }

    fn rates_trip(&self, calls: u32, failures: u32, slow: u32) -> bool {
        let calls = f64::from(calls);
        f64::from(failures) * 100.0 >= self.config.failure_rate_threshold * calls
            || (self.config.detect_slow_calls
                && f64::from(slow) * 100.0 >= self.config.slow_call_rate_threshold * calls)
    }

    fn record_probe(&self, generation: u64, now: Instant, failed: bool, slow: bool) {
        if failed {
            self.probe_failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            self.probe_slow.fetch_add(1, Ordering::AcqRel);
        }
        let done = self.probes_done.fetch_add(1, Ordering::AcqRel) + 1;
        let n = self.config.half_open_calls;
        if done < n {
            return;
        }
        let failures = self.probe_failures.load(Ordering::Acquire);
        let slow = self.probe_slow.load(Ordering::Acquire);
        if self.rates_trip(n, failures, slow) {
            self.trip(generation, now);
        } else {
            self.close(generation, now);
        }
    }

    /// The open duration for the `k`-th consecutive open.
    fn open_duration(&self, k: u32) -> Duration {
        let base = self.config.open_duration;
        let Some(g) = self.config.growth else {
            return base;
        };
        let grown = base.as_secs_f64() * g.multiplier.powi(i32::try_from(k).unwrap_or(i32::MAX));
        let capped = grown.min(g.max.as_secs_f64()).max(0.0);
        let spread = 1.0 + g.jitter * (2.0 * self.rng.next_f64() - 1.0);
        Duration::try_from_secs_f64(capped * spread).unwrap_or(g.max)
    }

    /// Moves from `from_generation` (Closed or HalfOpen) to Open.
    fn trip(&self, from_generation: u64, now: Instant) {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if generation != from_generation || !matches!(state, State::Closed | State::HalfOpen) {
            return;
        }
        let k = self.opens.fetch_add(1, Ordering::AcqRel);
        let until = self
            .nanos(now)
            .saturating_add(self.open_duration(k).as_nanos() as u64);
        self.open_until.store(until, Ordering::Release);
        let change = self.set(generation, state, State::Open);
        drop(guard);
        self.notify(change);
    }

    /// Moves from Open to HalfOpen once the open duration has passed.
    fn to_half_open(&self, from_generation: u64) {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if generation != from_generation || state != State::Open {
            return;
        }
        self.probes_started.store(0, Ordering::Release);
        self.probes_done.store(0, Ordering::Release);
        self.probe_failures.store(0, Ordering::Release);
        self.probe_slow.store(0, Ordering::Release);
        let change = self.set(generation, state, State::HalfOpen);
        drop(guard);
        self.notify(change);
    }

    /// Moves from HalfOpen to Closed, starting the ramp if configured.
    fn close(&self, from_generation: u64, now: Instant) {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if generation != from_generation || state != State::HalfOpen {
            return;
        }
        self.clear_closed_state();
        if self.config.ramp.is_some() {
            self.closed_at.store(self.nanos(now), Ordering::Release);
        }
        let change = self.set(generation, state, State::Closed);
        drop(guard);
        self.notify(change);
    }

    fn clear_closed_state(&self) {
        match &self.window {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
        self.consecutive.store(0, Ordering::Release);
        self.opens.store(0, Ordering::Release);
        self.closed_at.store(NO_RAMP, Ordering::Release);
    }

    /// Publishes the new state with the next generation (under the lock).
    fn set(&self, generation: u64, from: State, to: State) -> StateChange {
        let next = generation + 1;
        self.word.store(pack(next, to), Ordering::Release);
        StateChange {
            from,
            to,
            generation: next,
        }
    }

    fn notify(&self, change: StateChange) {
        self.watch.send_replace(change.to);
        tracing::info!(
            from = change.from.as_str(),
            to = change.to.as_str(),
            "circuit breaker state change"
        );
        for listener in &self.listeners {
            listener(&change);
        }
    }

    fn force(&self, to: State) {
        let guard = self.transition.lock();
        let (generation, from) = unpack(self.word.load(Ordering::Acquire));
        if to == State::Closed {
            self.clear_closed_state();
        }
        let change = self.set(generation, from, to);
        drop(guard);
        self.notify(change);
    }

    /// Refuses every call until [`reset`](Self::reset) or
    /// [`disable`](Self::disable).
    pub fn force_open(&self) {
        self.force(State::ForcedOpen);
    }

    /// Lets every call through and records nothing, until
    /// [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn disable(&self) {
        self.force(State::Disabled);
    }

    /// Closes the breaker with an empty window (no ramp).
    pub fn reset(&self) {
        self.force(State::Closed);
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        f.debug_struct("CircuitBreaker")
            .field("state", &state)
            .field("generation", &generation)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
