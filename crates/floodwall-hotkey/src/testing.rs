//! Skewed streams for measuring a Top-K sketch (feature `test-util`):
//! a seeded Zipf generator and a score against exact counts.

use std::collections::HashSet;

use floodwall_core::random::{Random, SplitMix};
use tokio::time::Instant;

use crate::{HeavyKeeper, TopKConfig};

/// Zipf(s) over ranks `0..n` (rank 0 the most frequent), drawn in O(1)
/// by Walker's alias method.
#[derive(Debug, Clone)]
pub struct Zipf {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl Zipf {
    /// The distribution over `n` ranks with exponent `s`.
    ///
    /// # Panics
    /// If `n` is 0 or above `u32::MAX`.
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n > 0 && u32::try_from(n).is_ok(), "1..=u32::MAX ranks");
        let weights: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![0.0; n];
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Self { prob, alias }
    }

    /// One rank.
    pub fn draw(&self, rng: &SplitMix) -> u64 {
        let i = (rng.next_u64() % self.prob.len() as u64) as usize;
        if rng.next_f64() < self.prob[i] {
            i as u64
        } else {
            u64::from(self.alias[i])
        }
    }
}

/// How a sketch's top-k compared with the exact one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Share of the reported keys that are in the true top-k.
    pub precision: f64,
    /// Mean of `|estimate − true| / true` over the reported keys.
    pub mean_relative_error: f64,
}

/// Feeds `items` Zipf(1.0) draws over `keys` keys (seeded) to a sketch
/// made of `config` and scores its top `k` against the exact counts.
///
/// # Panics
/// If `config` is invalid or `keys` is 0.
pub fn score(config: TopKConfig, keys: usize, items: usize, seed: u64) -> Score {
    let zipf = Zipf::new(keys, 1.0);
    let rng = SplitMix::new(seed);
    let mut exact = vec![0u32; keys];
    let now = Instant::now();
    let sketch = HeavyKeeper::with_epoch(config, now, seed).expect("a valid config");
    for _ in 0..items {
        let key = zipf.draw(&rng);
        exact[key as usize] += 1;
        sketch.add(&key, now);
    }
    let mut truth: Vec<(u64, u32)> = exact
        .iter()
        .enumerate()
        .map(|(k, &c)| (k as u64, c))
        .collect();
    truth.sort_by_key(|e| std::cmp::Reverse(e.1));
    let k = config.k.min(keys);
    let true_top: HashSet<u64> = truth[..k].iter().map(|&(key, _)| key).collect();
    let reported = sketch.top();
    let hits = reported
        .iter()
        .filter(|(key, _)| true_top.contains(key))
        .count();
    let error: f64 = reported
        .iter()
        .map(|&(key, est)| {
            let t = f64::from(exact[key as usize]);
            (f64::from(est) - t).abs() / t
        })
        .sum::<f64>()
        / reported.len().max(1) as f64;
    Score {
        precision: hits as f64 / k as f64,
        mean_relative_error: error,
    }
}

/// A shifting stream: every 10 s a new set of 10 keys takes half of
/// 20,000 items a second (1,000/s each) over a Zipf(1.0) background of
/// 100,000 keys (its heaviest at about 830/s), for `periods` periods,
/// items 1 ms apart in batches of 20. Returns the slowest time, over every
/// new hot key, from its period's start until the sketch's top `k` (10)
/// reports it; `None` if one is never reported.
///
/// # Panics
/// If `config` is invalid.
pub fn slowest_detection(
    config: TopKConfig,
    periods: u64,
    seed: u64,
) -> Option<std::time::Duration> {
    use std::time::Duration;
    let t0 = Instant::now();
    let sketch =
        HeavyKeeper::with_epoch(TopKConfig { k: 10, ..config }, t0, seed).expect("a valid config");
    let zipf = Zipf::new(100_000, 1.0);
    let rng = SplitMix::new(seed ^ 0xD1CE);
    let per_ms = 20;
    let mut worst = Duration::ZERO;
    for period in 0..periods {
        let hot: Vec<u64> = (0..10).map(|i| 1_000_000 + 10 * period + i).collect();
        let start = Duration::from_secs(10 * period);
        let mut seen = [false; 10];
        let mut left = 10;
        for ms in 0..10_000u64 {
            let now = t0 + start + Duration::from_millis(ms);
            for j in 0..per_ms {
                let key = if rng.next_f64() < 0.5 {
                    hot[(ms as usize * per_ms + j) % 10]
                } else {
                    zipf.draw(&rng)
                };
                sketch.add(&key, now);
            }
            if left > 0 && ms % 10 == 9 {
                let top: Vec<u64> = sketch.top().into_iter().map(|(k, _)| k).collect();
                for (i, key) in hot.iter().enumerate() {
                    if !seen[i] && top.contains(key) {
                        seen[i] = true;
                        left -= 1;
                        worst = worst.max(Duration::from_millis(ms + 1));
                    }
                }
            }
        }
        if left > 0 {
            return None;
        }
    }
    Some(worst)
}
