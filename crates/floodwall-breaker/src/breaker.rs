use floodwall_core::sync::{AtomicU32, AtomicU64, Mutex, Ordering};
use std::fmt;

use parking_lot::RwLock;
use std::time::Duration;

use floodwall_core::random::{Random, SplitMix};
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
    /// Metrics only: everything passes, outcomes are counted, nothing is
    /// decided.
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
pub struct BreakerRefused {
    /// The state that refused it.
    pub state: State,
    /// When the breaker will probe again, if it is waiting out an open
    /// duration.
    pub retry_after: Option<Duration>,
}

/// What a reconfiguration replaces together.
struct Live {
    config: BreakerConfig,
    window: Window,
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
/// - **ForcedOpen** / **Disabled** (metrics only): set through
///   [`force_open`](Self::force_open) / [`disable`](Self::disable);
///   [`reset`](Self::reset) closes.
///
/// Every transition starts a new **generation**; a call's outcome counts
/// only in the generation it was permitted in, so a slow call from before a
/// trip cannot decide a half-open state. Calls the breaker refused are never
/// recorded, so its own refusals can never keep it open.
///
/// The closed path is lock-free: a load of the state word, and on the
/// outcome a `fetch_add` and a `swap` on the count window (a counter update
/// only when the record leaving the window differs). Transitions, and the
/// open and half-open states' decisions, take a lock. A call that reports
/// just as the window is reset may count on either side of the reset (never
/// corrupting a count).
pub struct CircuitBreaker {
    word: AtomicU64,
    /// The configuration and the closed state's window, changed together
    /// by a reconfiguration (under its write lock, taken after
    /// `transition`); a decision reads them under one read lock, so it sees
    /// one configuration and no record is lost to a resize.
    live: RwLock<Live>,
    epoch: Instant,
    /// When the breaker last opened (ns since the epoch).
    opened_at: AtomicU64,
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

mod record;

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
        let mut config = config;
        if let WindowKind::Count(n) = config.window {
            config.minimum_calls = config.minimum_calls.min(n);
        }
        Ok(Self {
            word: AtomicU64::new(pack(0, State::Closed)),
            live: RwLock::new(Live {
                window: match config.window {
                    WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
                    WindowKind::Time(s) => Window::Time(TimeWindow::new(s)),
                },
                config,
            }),
            epoch,
            opened_at: AtomicU64::new(0),
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
    /// that made the transition, after the breaker's lock is released, so
    /// two quick transitions on two threads may reach a listener out of
    /// order: order them by [`StateChange::generation`]. Keep them quick.
    /// (The [`subscribe`](Self::subscribe) channel is updated under the lock
    /// and always ends on the current state.)
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
        match &self.live.read().window {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(self.nanos(now) / 1_000_000_000),
        }
    }

    /// The configuration in force (with `minimum_calls` clamped to a count
    /// window's size).
    pub fn config(&self) -> BreakerConfig {
        self.live.read().config
    }

    /// Applies `config` from `now` on, validated as [`new`](Self::new)
    /// validates (a refused configuration changes nothing), atomically for
    /// concurrent callers (each decision reads one configuration). The
    /// state and its generation are kept (SPECS.md, "Reconfiguration"):
    /// - a count window of another size keeps the newest calls it holds
    ///   (as many as fit); a window of another kind, or a time window of
    ///   another length, starts empty (`minimum_calls` keeps it from
    ///   judging too early);
    /// - thresholds, minimum calls, the consecutive-failure limit, slow-call
    ///   settings, half-open probes and the ramp apply to the next decision;
    /// - a new open duration applies to the next opening, and to the
    ///   current one if it ends it sooner (from when it opened).
    ///
    /// # Errors
    /// As [`BreakerConfig::validate`].
    pub fn reconfigure(&self, config: BreakerConfig, now: Instant) -> Result<(), ConfigError> {
        config.validate()?;
        let mut config = config;
        if let WindowKind::Count(n) = config.window {
            config.minimum_calls = config.minimum_calls.min(n);
        }
        let _guard = self.transition.lock();
        let mut live = self.live.write();
        if live.config.window != config.window {
            live.window = match (&live.window, config.window) {
                (Window::Count(w), WindowKind::Count(n)) => Window::Count(w.resized(n)),
                (_, WindowKind::Count(n)) => Window::Count(CountWindow::new(n)),
                (_, WindowKind::Time(s)) => Window::Time(TimeWindow::new(s)),
            };
        }
        live.config = config;
        drop(live);
        let (_, state) = unpack(self.word.load(Ordering::Acquire));
        if state == State::Open {
            let sooner = self
                .opened_at
                .load(Ordering::Acquire)
                .saturating_add(config.open_duration.as_nanos() as u64);
            self.open_until.fetch_min(sooner, Ordering::AcqRel);
        }
        let _ = now;
        Ok(())
    }

    /// Asks to make a call at `now`.
    ///
    /// # Errors
    /// [`BreakerRefused`] when the breaker is open (with the time until it probes),
    /// forced open, out of half-open probes, or ramping and this call is not
    /// in the admitted fraction.
    #[inline]
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, BreakerRefused> {
        self.try_acquire_with(|| now)
    }

    /// As [`try_acquire`](Self::try_acquire), reading the time from `clock`
    /// only when the decision needs it: a closed breaker with no ramp under
    /// way and no slow-call timing decides without it.
    #[inline]
    pub fn try_acquire_with(&self, clock: impl Fn() -> Instant) -> Result<Permit, BreakerRefused> {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        let detect_slow_calls = self.live.read().config.detect_slow_calls;
        let started = || detect_slow_calls.then(&clock);
        match state {
            State::Closed => {
                let closed_at = self.closed_at.load(Ordering::Acquire);
                if closed_at != NO_RAMP && !self.ramp_admits(closed_at, clock()) {
                    return Err(BreakerRefused {
                        state,
                        retry_after: None,
                    });
                }
                Ok(Permit {
                    generation,
                    kind: PermitKind::Call,
                    started: started(),
                })
            }
            State::Disabled => Ok(Permit {
                generation,
                kind: PermitKind::Untracked,
                started: started(),
            }),
            State::ForcedOpen => Err(BreakerRefused {
                state,
                retry_after: None,
            }),
            State::Open | State::HalfOpen => self.acquire_slow(clock()),
        }
    }

    /// Open and half-open decisions, under the transition lock: they are
    /// rare, and the lock keeps the probe counters tied to their generation.
    #[cold]
    fn acquire_slow(&self, now: Instant) -> Result<Permit, BreakerRefused> {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        let mut change = None;
        let result = match state {
            State::Closed | State::Disabled | State::ForcedOpen => {
                // A transition happened since the caller looked: start over.
                drop(guard);
                return self.try_acquire_with(|| now);
            }
            State::Open => {
                let t = self.nanos(now);
                let until = self.open_until.load(Ordering::Acquire);
                if t < until {
                    Err(BreakerRefused {
                        state,
                        retry_after: Some(Duration::from_nanos(until - t)),
                    })
                } else {
                    self.probes_started.store(1, Ordering::Release);
                    self.probes_done.store(0, Ordering::Release);
                    self.probe_failures.store(0, Ordering::Release);
                    self.probe_slow.store(0, Ordering::Release);
                    let c = self.set(generation, state, State::HalfOpen);
                    change = Some(c);
                    Ok(Permit {
                        generation: c.generation,
                        kind: PermitKind::Probe,
                        started: self.config().detect_slow_calls.then_some(now),
                    })
                }
            }
            State::HalfOpen => {
                let started = self.probes_started.load(Ordering::Acquire);
                let config = self.config();
                if started < config.half_open_calls {
                    self.probes_started.store(started + 1, Ordering::Release);
                    Ok(Permit {
                        generation,
                        kind: PermitKind::Probe,
                        started: config.detect_slow_calls.then_some(now),
                    })
                } else {
                    Err(BreakerRefused {
                        state,
                        retry_after: None,
                    })
                }
            }
        };
        drop(guard);
        if let Some(c) = change {
            self.notify(c);
        }
        result
    }

    /// How long until an open breaker may probe, if it is open.
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        let (_, state) = unpack(self.word.load(Ordering::Acquire));
        (state == State::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_nanos(until.saturating_sub(self.nanos(now)))
        })
    }

    /// Moves an open breaker whose open duration is over to half-open
    /// without taking a probe (the automatic transition); `false` if it is
    /// not open or its time is not up.
    pub fn half_open_if_due(&self, now: Instant) -> bool {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if state != State::Open || self.nanos(now) < self.open_until.load(Ordering::Acquire) {
            return false;
        }
        self.probes_started.store(0, Ordering::Release);
        self.probes_done.store(0, Ordering::Release);
        self.probe_failures.store(0, Ordering::Release);
        self.probe_slow.store(0, Ordering::Release);
        let change = self.set(generation, state, State::HalfOpen);
        drop(guard);
        self.notify(change);
        true
    }

    /// Whether a ramp that began at `closed_at` admits a call at `now`.
    fn ramp_admits(&self, closed_at: u64, now: Instant) -> bool {
        let config = self.config();
        let Some(ramp) = config.ramp else {
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
        let start = config.ramp_start;
        let fraction = start + (1.0 - start) * elapsed as f64 / ramp as f64;
        self.rng.next_f64() < fraction
    }

    /// The fraction of calls admitted at `now`: 1 when closed outside a
    /// ramp or disabled, the ramp's fraction while it lasts, 0 otherwise.
    pub fn admitted_fraction(&self, now: Instant) -> f64 {
        let closed_at = self.closed_at.load(Ordering::Acquire);
        let config = self.config();
        match (self.state(), config.ramp) {
            (State::Closed, Some(ramp)) if closed_at != NO_RAMP => {
                let elapsed = self.nanos(now).saturating_sub(closed_at) as f64;
                let start = config.ramp_start;
                (start + (1.0 - start) * elapsed / ramp.as_nanos() as f64).min(1.0)
            }
            (State::Closed | State::Disabled, _) => 1.0,
            _ => 0.0,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        f.debug_struct("CircuitBreaker")
            .field("state", &state)
            .field("generation", &generation)
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}
