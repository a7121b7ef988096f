//! The limiters a [`SlidingWindowLayer`](crate::SlidingWindowLayer) holds,
//! in whichever [`WindowMode`](crate::WindowMode) it was configured.

use std::hash::Hash;

use floodwall_ratelimit::{Denied, KeyedLimit, Limiter, Refund, Remaining};
use tokio::time::Instant;

use crate::{KeyedSlidingLog, KeyedSlidingWindowCounter, SlidingLog, SlidingWindowCounter, Window};

/// A sliding-window limiter in the configured mode: what an unkeyed
/// [`SlidingWindowLayer`](crate::SlidingWindowLayer) holds.
#[derive(Debug)]
pub enum SlidingWindow {
    /// The two-window counter, or a fixed window.
    Counter(SlidingWindowCounter),
    /// The exact log.
    Log(SlidingLog),
}

impl Remaining for SlidingWindow {
    fn remaining(&self, now: Instant) -> u32 {
        SlidingWindow::remaining(self, now)
    }
}

impl SlidingWindow {
    /// How many single requests would be admitted at `now`.
    pub fn remaining(&self, now: Instant) -> u32 {
        match self {
            SlidingWindow::Counter(counter) => counter.remaining(now),
            SlidingWindow::Log(log) => log.window().limit() - log.count(now),
        }
    }

    /// The limit and window length.
    pub fn window(&self) -> Window {
        match self {
            SlidingWindow::Counter(counter) => counter.window(),
            SlidingWindow::Log(log) => log.window(),
        }
    }
}

impl<Req> Limiter<Req> for SlidingWindow {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        match self {
            SlidingWindow::Counter(counter) => counter.try_acquire(now, n),
            SlidingWindow::Log(log) => log.try_acquire(now, n),
        }
    }
}

impl Refund for SlidingWindow {
    type Permit = ();
}

/// Per-key sliding-window limiters in the configured mode: what a keyed
/// [`SlidingWindowLayer`](crate::SlidingWindowLayer) holds.
#[derive(Debug)]
pub enum KeyedSlidingWindow<K> {
    /// Two-window or fixed-window counters.
    Counter(KeyedSlidingWindowCounter<K>),
    /// Exact logs.
    Log(KeyedSlidingLog<K>),
}

impl<K: Hash + Eq + Clone> KeyedSlidingWindow<K> {
    /// How many single requests `key` may make at `now`.
    pub fn remaining(&self, key: &K, now: Instant) -> u32 {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.remaining(key, now),
            KeyedSlidingWindow::Log(logs) => logs.remaining(key, now),
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.keys().len(),
            KeyedSlidingWindow::Log(logs) => logs.keys().len(),
        }
    }

    /// Keys dropped because they were idle (lossless).
    pub fn evicted_idle(&self) -> u64 {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.keys().evicted_idle(),
            KeyedSlidingWindow::Log(logs) => logs.keys().evicted_idle(),
        }
    }

    /// Keys forgotten while still counting because their shard was full.
    pub fn evicted_in_debt(&self) -> u64 {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.keys().evicted_in_debt(),
            KeyedSlidingWindow::Log(logs) => logs.keys().evicted_in_debt(),
        }
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> KeyedLimit for KeyedSlidingWindow<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
    type Permit = ();

    #[inline]
    fn acquire_key(&self, key: &K, now: Instant, n: u32) -> Result<(), Denied> {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.try_acquire(key, now, n),
            KeyedSlidingWindow::Log(logs) => logs.try_acquire(key, now, n),
        }
    }
}

impl floodwall_ratelimit::Reconfigure for SlidingWindow {
    type Params = Window;

    /// See [`SlidingWindowCounter::reconfigure`] and
    /// [`SlidingLog::reconfigure`].
    fn reconfigure(&self, window: Window, now: Instant) {
        match self {
            SlidingWindow::Counter(counter) => counter.reconfigure(window, now),
            SlidingWindow::Log(log) => log.reconfigure(window, now),
        }
    }

    fn policy(window: &Window) -> (u64, std::time::Duration) {
        (u64::from(window.limit()), window.length())
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> floodwall_ratelimit::Reconfigure
    for KeyedSlidingWindow<K>
{
    type Params = Window;

    /// Every key at once, shard by shard, by the rule of its mode (see
    /// [`SlidingWindowCounter::reconfigure`], [`SlidingLog::reconfigure`]).
    fn reconfigure(&self, window: Window, now: Instant) {
        match self {
            KeyedSlidingWindow::Counter(counters) => counters.reconfigure(window, now),
            KeyedSlidingWindow::Log(logs) => logs.reconfigure(window, now),
        }
    }

    fn policy(window: &Window) -> (u64, std::time::Duration) {
        (u64::from(window.limit()), window.length())
    }
}
