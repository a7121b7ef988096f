//! Recording outcomes, the transitions they cause, and manual control.

use super::*;

impl CircuitBreaker {
    /// Reports that the call permitted by `permit` succeeded, at `now`.
    pub fn on_success(&self, permit: Permit, now: Instant) {
        self.record(permit, &|| now, false);
    }

    /// Reports that the call permitted by `permit` failed, at `now`.
    pub fn on_failure(&self, permit: Permit, now: Instant) {
        self.record(permit, &|| now, true);
    }

    /// As [`on_success`](Self::on_success) / [`on_failure`](Self::on_failure),
    /// reading the time from `clock` only when needed: to time a slow call,
    /// to find a time window's bucket, or for a transition the outcome
    /// causes.
    pub fn on_outcome_with(&self, permit: Permit, failed: bool, clock: impl Fn() -> Instant) {
        self.record(permit, &clock, failed);
    }

    /// Gives back the permit of a call that was abandoned: a half-open probe
    /// frees its slot; nothing is recorded either way.
    pub fn on_cancel(&self, permit: Permit) {
        if permit.kind != PermitKind::Probe {
            return;
        }
        let _guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if generation == permit.generation && state == State::HalfOpen {
            let started = self.probes_started.load(Ordering::Acquire);
            self.probes_started
                .store(started.saturating_sub(1), Ordering::Release);
        }
    }

    pub(super) fn record(&self, permit: Permit, clock: &dyn Fn() -> Instant, failed: bool) {
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if permit.generation != generation {
            // From an earlier generation: it must not decide this one.
            return;
        }
        match (state, permit.kind) {
            (State::Closed, PermitKind::Call) => {
                let trips = {
                    let live = self.live.read();
                    let slow = self.slow(&live.config, &permit, clock);
                    let counts = self.record_window(&live.window, clock, failed, slow);
                    let run = self.count_run(&live.config, failed);
                    run || self.over_threshold(&live.config, counts)
                };
                if trips {
                    self.trip(generation, clock());
                }
            }
            (State::Disabled, PermitKind::Untracked) => {
                // Metrics only: counted, never acted on.
                let live = self.live.read();
                let slow = self.slow(&live.config, &permit, clock);
                self.record_window(&live.window, clock, failed, slow);
            }
            (State::HalfOpen, PermitKind::Probe) => {
                let slow = self.slow(&self.config(), &permit, clock);
                self.record_probe(generation, clock, failed, slow)
            }
            _ => {}
        }
    }

    /// Whether the permitted call was slow: strictly longer than the
    /// threshold.
    #[inline]
    fn slow(&self, config: &BreakerConfig, permit: &Permit, clock: &dyn Fn() -> Instant) -> bool {
        permit
            .started
            .is_some_and(|s| clock().saturating_duration_since(s) > config.slow_call_duration)
    }

    #[inline]
    pub(super) fn record_window(
        &self,
        window: &Window,
        clock: &dyn Fn() -> Instant,
        failed: bool,
        slow: bool,
    ) -> WindowCounts {
        match window {
            Window::Count(w) => w.record(code(failed, slow)),
            Window::Time(w) => w.record(self.nanos(clock()) / 1_000_000_000, code(failed, slow)),
        }
    }

    /// Updates the run of consecutive failures; whether it reached the limit.
    #[inline]
    pub(super) fn count_run(&self, config: &BreakerConfig, failed: bool) -> bool {
        match config.consecutive_failures {
            Some(limit) if failed => self.consecutive.fetch_add(1, Ordering::AcqRel) + 1 >= limit,
            Some(_) => {
                self.consecutive.store(0, Ordering::Release);
                false
            }
            None => false,
        }
    }

    /// Whether the window's rates reach a threshold (with at least
    /// `minimum_calls` calls in it).
    #[inline]
    pub(super) fn over_threshold(&self, config: &BreakerConfig, c: WindowCounts) -> bool {
        if !config.rates
            || (c.failures == 0 && c.slow == 0)
            || c.calls < u64::from(config.minimum_calls)
        {
            return false;
        }
        rates_trip(config, c.calls, c.failures, c.slow)
    }

    pub(super) fn record_probe(
        &self,
        generation: u64,
        clock: &dyn Fn() -> Instant,
        failed: bool,
        slow: bool,
    ) {
        let guard = self.transition.lock();
        let (current, state) = unpack(self.word.load(Ordering::Acquire));
        if current != generation || state != State::HalfOpen {
            return;
        }
        if failed {
            self.probe_failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            self.probe_slow.fetch_add(1, Ordering::AcqRel);
        }
        let done = self.probes_done.fetch_add(1, Ordering::AcqRel) + 1;
        let config = self.config();
        let n = config.half_open_calls;
        if done < n {
            return;
        }
        let failures = self.probe_failures.load(Ordering::Acquire);
        let slows = self.probe_slow.load(Ordering::Acquire);
        let now = clock();
        let change = if rates_trip(&config, u64::from(n), u64::from(failures), u64::from(slows)) {
            self.open_locked(generation, state, now)
        } else {
            self.clear_closed_state();
            if config.ramp.is_some() {
                self.closed_at.store(self.nanos(now), Ordering::Release);
            }
            self.set(generation, state, State::Closed)
        };
        drop(guard);
        self.notify(change);
    }

    /// The open duration for the `k`-th consecutive open: grown, spread by
    /// the jitter, and capped.
    pub(super) fn open_duration(&self, k: u32) -> Duration {
        let config = self.config();
        let base = config.open_duration;
        let Some(g) = config.growth else {
            return base;
        };
        let grown = base.as_secs_f64() * g.multiplier.powi(i32::try_from(k).unwrap_or(i32::MAX));
        let spread = 1.0 + g.jitter * (2.0 * self.rng.next_f64() - 1.0);
        let max = g.max.as_secs_f64();
        let secs = if (grown * spread).is_nan() {
            max
        } else {
            (grown * spread).clamp(0.0, max)
        };
        Duration::try_from_secs_f64(secs).unwrap_or(g.max)
    }

    /// Moves from Closed (generation `from_generation`) to Open.
    pub(super) fn trip(&self, from_generation: u64, now: Instant) {
        let guard = self.transition.lock();
        let (generation, state) = unpack(self.word.load(Ordering::Acquire));
        if generation != from_generation || state != State::Closed {
            return;
        }
        let change = self.open_locked(generation, state, now);
        drop(guard);
        self.notify(change);
    }

    /// Opens (the lock held).
    pub(super) fn open_locked(&self, generation: u64, from: State, now: Instant) -> StateChange {
        let k = self.opens.fetch_add(1, Ordering::AcqRel);
        let opened = self.nanos(now);
        self.opened_at.store(opened, Ordering::Release);
        let until = opened.saturating_add(self.open_duration(k).as_nanos() as u64);
        self.open_until.store(until, Ordering::Release);
        self.set(generation, from, State::Open)
    }

    pub(super) fn clear_closed_state(&self) {
        match &self.live.read().window {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
        self.consecutive.store(0, Ordering::Release);
        self.opens.store(0, Ordering::Release);
        self.closed_at.store(NO_RAMP, Ordering::Release);
    }

    /// Publishes the new state with the next generation (the lock held),
    /// and updates the subscription channel.
    pub(super) fn set(&self, generation: u64, from: State, to: State) -> StateChange {
        let next = generation + 1;
        self.word.store(pack(next, to), Ordering::Release);
        self.watch.send_replace(to);
        StateChange {
            from,
            to,
            generation: next,
        }
    }

    /// Tells the listeners (after the lock is released).
    pub(super) fn notify(&self, change: StateChange) {
        tracing::info!(
            from = change.from.as_str(),
            to = change.to.as_str(),
            generation = change.generation,
            "circuit breaker state change"
        );
        for listener in &self.listeners {
            listener(&change);
        }
    }

    pub(super) fn force(&self, to: State) {
        let guard = self.transition.lock();
        let (generation, from) = unpack(self.word.load(Ordering::Acquire));
        if from == to && to != State::Closed {
            return;
        }
        if to == State::Closed || to == State::Disabled {
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

    /// Metrics only: lets every call through and keeps counting outcomes in
    /// the window, but never opens, until [`reset`](Self::reset) or
    /// [`force_open`](Self::force_open).
    pub fn disable(&self) {
        self.force(State::Disabled);
    }

    /// Closes the breaker with an empty window (no ramp).
    pub fn reset(&self) {
        self.force(State::Closed);
    }
}

/// Whether `failures` or `slow` of `calls` reach `config`'s rate thresholds.
pub(super) fn rates_trip(config: &BreakerConfig, calls: u64, failures: u64, slow: u64) -> bool {
    let calls = calls as f64;
    failures as f64 * 100.0 >= config.failure_rate_threshold * calls
        || (config.detect_slow_calls
            && slow as f64 * 100.0 >= config.slow_call_rate_threshold * calls)
}
