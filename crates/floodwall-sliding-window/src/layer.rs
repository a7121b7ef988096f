use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_ratelimit::{Algorithm, LimitKey, One, RateLimitLayer};

use crate::{
    CounterParams, KeyedSlidingLog, KeyedSlidingWindow, KeyedSlidingWindowCounter, SlidingLog,
    SlidingWindow, SlidingWindowConfig, SlidingWindowCounter, WindowMode,
};

/// A Tower layer that allows `limit` requests per window, counted by the
/// two-window estimate, a fixed window or the exact log, and never makes a
/// request wait. It is the shared [`RateLimitLayer`] run by the
/// [`SlidingWindows`] algorithm; see there for cloning, shedding and the
/// builder, and the crate documentation for examples.
pub type SlidingWindowLayer<L = SlidingWindow, W = One> = RateLimitLayer<SlidingWindows, L, W>;

/// The sliding window as a [`RateLimitLayer`]'s [`Algorithm`].
#[derive(Debug, Clone, Copy)]
pub enum SlidingWindows {}

impl Algorithm for SlidingWindows {
    type Config = SlidingWindowConfig;
    type Limiter = SlidingWindow;
    type PerKey<K: LimitKey> = KeyedSlidingWindow<K>;

    const METRIC_PREFIX: &'static str = crate::METRIC_PREFIX;

    fn name_and_capacity(config: &mut SlidingWindowConfig) -> (&mut String, &mut usize) {
        (&mut config.name, &mut config.capacity)
    }

    fn policy(config: &SlidingWindowConfig) -> (u64, Duration) {
        (u64::from(config.limit), config.window)
    }

    fn limiter(config: &SlidingWindowConfig) -> Result<SlidingWindow, ConfigError> {
        let window = config.window()?;
        Ok(match config.mode {
            WindowMode::Sliding => SlidingWindow::Counter(SlidingWindowCounter::new(window)),
            WindowMode::Fixed => SlidingWindow::Counter(SlidingWindowCounter::fixed(window)),
            WindowMode::Log => SlidingWindow::Log(SlidingLog::new(window)),
        })
    }

    fn per_key<K: LimitKey>(
        config: &SlidingWindowConfig,
        capacity: usize,
    ) -> Result<KeyedSlidingWindow<K>, ConfigError> {
        let window = config.window()?;
        let (prefix, name) = (crate::METRIC_PREFIX, config.name.as_str());
        Ok(match config.mode {
            WindowMode::Sliding => KeyedSlidingWindow::Counter(
                KeyedSlidingWindowCounter::new(window, capacity).with_metrics(prefix, name),
            ),
            WindowMode::Fixed => KeyedSlidingWindow::Counter(
                KeyedSlidingWindowCounter::new(CounterParams::fixed(window), capacity)
                    .with_metrics(prefix, name),
            ),
            WindowMode::Log => {
                crate::log::check_log_memory(window.limit(), capacity)?;
                KeyedSlidingWindow::Log(
                    KeyedSlidingLog::new(window, capacity).with_metrics(prefix, name),
                )
            }
        })
    }
}
