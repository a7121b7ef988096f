//! The limiter: admits a request while fewer than `limit` are in flight,
//! and feeds every finished request to an [`Algorithm`] that moves the limit.

use std::fmt;

use floodwall_core::ConfigError;
use floodwall_core::sync::{AtomicU32, AtomicU64, Mutex, Ordering};
use tokio::time::Instant;

use crate::{Algorithm, Estimates, Sample};

/// The most priority classes a [`ConcurrencyLimiter`] partitions its limit into.
pub const MAX_CLASSES: usize = 4;

/// The most requests one class may have in flight (and so the highest limit
/// a [`ConcurrencyLimiter`] enforces): the in-flight counts of all classes share one
/// 64-bit atomic word, 16 bits each, so that admission reads and updates
/// them all at once.
pub const MAX_IN_FLIGHT: u32 = u16::MAX as u32;

const LANE_BITS: u32 = 16;
const LANE_MASK: u64 = 0xffff;

/// How a [`ConcurrencyLimiter`]'s limit is shared between priority classes: each class
/// is guaranteed `⌈share × limit⌉` slots and may borrow any slot the others
/// leave idle.
///
/// The rule, per request of class `c` (after Netflix's partitioned limiter):
/// admitted while fewer than `limit` requests are in flight in all; once
/// the limit is reached, admitted only while class `c` has fewer than its
/// guaranteed slots in flight. A class that borrowed while the others were
/// idle keeps what it borrowed until those requests finish, so the total
/// in flight can briefly exceed the limit by the guarantees of the classes
/// that came back (at most `limit + Σ guaranteed`).
///
/// Netflix's `AbstractPartitionedLimiter` checks the total and the class
/// separately and then increments, so two requests can both pass the check
/// for the last slot; here the counts of every class live in one atomic
/// word and the check and the increment are one compare-and-swap.
///
/// ```
/// use floodwall_concurrency::Partitions;
///
/// // Critical traffic is guaranteed 70 % of the limit, batch 30 %.
/// let p = Partitions::new(&[0.7, 0.3])?;
/// assert_eq!(p.guaranteed(0, 10), 7);
/// assert_eq!(p.guaranteed(1, 10), 3);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partitions {
    shares: [f64; MAX_CLASSES],
    classes: usize,
}

impl Partitions {
    /// Classes `0..shares.len()` (0 = most important, by convention), each
    /// guaranteed its share of the limit.
    ///
    /// # Errors
    /// [`ConfigError`] for no share or more than [`MAX_CLASSES`], a share
    /// outside `[0, 1]`, or shares that add up to more than 1.
    pub fn new(shares: &[f64]) -> Result<Self, ConfigError> {
        if shares.is_empty() || shares.len() > MAX_CLASSES {
            return Err(ConfigError::new(
                "partitions",
                "must have between 1 and 4 classes",
            ));
        }
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return Err(ConfigError::new(
                "partitions",
                "every share must be in [0, 1]",
            ));
        }
        if shares.iter().sum::<f64>() > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                "partitions",
                "the shares must add up to at most 1",
            ));
        }
        let mut all = [0.0; MAX_CLASSES];
        all[..shares.len()].copy_from_slice(shares);
        Ok(Self {
            shares: all,
            classes: shares.len(),
        })
    }

    /// One class that owns the whole limit: no partitioning.
    pub const fn single() -> Self {
        Self {
            shares: [1.0, 0.0, 0.0, 0.0],
            classes: 1,
        }
    }

    /// The number of classes.
    pub const fn classes(&self) -> usize {
        self.classes
    }

    /// The share of `class` (0 for a class out of range).
    pub fn share(&self, class: usize) -> f64 {
        self.shares.get(class).copied().unwrap_or(0.0)
    }

    /// The slots `class` is guaranteed under `limit`: `max(1, ⌈share ×
    /// limit⌉)` for a share above zero (as Netflix's partitions), 0 for a
    /// share of zero.
    pub fn guaranteed(&self, class: usize, limit: u32) -> u32 {
        let share = self.share(class);
        if share > 0.0 {
            ((share * f64::from(limit)).ceil() as u32).max(1)
        } else {
            0
        }
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Self::single()
    }
}

/// A request admitted by a [`ConcurrencyLimiter`]: give it back with
/// [`ConcurrencyLimiter::success`], [`ConcurrencyLimiter::dropped`] or [`ConcurrencyLimiter::ignore`] exactly
/// once. A token that is forgotten keeps its slot taken for good (the Tower
/// layer gives tokens back on every path, cancellation included).
#[derive(Debug)]
#[must_use = "a token holds a slot until it is given back to its limiter"]
pub struct Token {
    class: u8,
    in_flight: u32,
    start: Instant,
}

impl Token {
    /// The priority class it was admitted in.
    pub fn class(&self) -> usize {
        usize::from(self.class)
    }

    /// Requests in flight (all classes) when it was admitted, itself included.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// When it was admitted.
    pub fn start(&self) -> Instant {
        self.start
    }
}

/// A [`ConcurrencyLimiter`] refused a request: the limit was reached (and, with
/// partitions, the request's class was at or above its guarantee).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRefused {
    /// The limit when the request was refused.
    pub limit: u32,
    /// Requests in flight (all classes) then.
    pub in_flight: u32,
    /// The request's class.
    pub class: usize,
}

type LimitListener = Box<dyn Fn(u32) + Send + Sync>;

/// An adaptive concurrency limiter: admits while fewer than `limit` requests
/// are in flight, and lets an [`Algorithm`] move the limit from each
/// finished request's round-trip time.
///
/// Admission is one compare-and-swap on an atomic word (no lock); a
/// finished request takes the algorithm's lock for its update.
///
/// ```
/// use floodwall_concurrency::{Aimd, AimdConfig, ConcurrencyLimiter};
/// use tokio::time::{Duration, Instant};
///
/// let limiter = ConcurrencyLimiter::new(Aimd::new(AimdConfig { initial_limit: 2, ..Default::default() })?);
/// let t0 = Instant::now();
/// let a = limiter.try_acquire(t0).expect("1 of 2");
/// let b = limiter.try_acquire(t0).expect("2 of 2");
/// assert!(limiter.try_acquire(t0).is_err(), "the limit is reached");
/// // Both finish fast while the limit is in use: AIMD adds one per sample.
/// limiter.success(a, t0 + Duration::from_millis(10));
/// assert_eq!(limiter.success(b, t0 + Duration::from_millis(10)), 4);
/// assert_eq!(limiter.in_flight(), 0);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct ConcurrencyLimiter<A> {
    /// In flight per class, 16 bits each.
    lanes: AtomicU64,
    limit: AtomicU32,
    partitions: Partitions,
    algorithm: Mutex<A>,
    listeners: Vec<LimitListener>,
}

impl<A: Algorithm> ConcurrencyLimiter<A> {
    /// A limiter with one class, starting at `algorithm`'s limit.
    pub fn new(algorithm: A) -> Self {
        Self::partitioned(algorithm, Partitions::single())
    }

    /// A limiter whose limit is shared between `partitions`' classes.
    pub fn partitioned(algorithm: A, partitions: Partitions) -> Self {
        let limit = clamp_limit(algorithm.limit());
        Self {
            lanes: AtomicU64::new(0),
            limit: AtomicU32::new(limit),
            partitions,
            algorithm: Mutex::new(algorithm),
            listeners: Vec::new(),
        }
    }

    /// Calls `listener` with the limit at once, then with every new limit
    /// (under the algorithm's lock, so in order; keep it quick and do not
    /// call back into this limiter from it). This is how a CoDel queue's
    /// worker count follows the limit (see the crate docs).
    pub fn on_limit_change(mut self, listener: impl Fn(u32) + Send + Sync + 'static) -> Self {
        listener(self.limit());
        self.listeners.push(Box::new(listener));
        self
    }

    /// Admits a request of class 0 if the limit allows it.
    ///
    /// # Errors
    /// [`LimitRefused`] when the limit is reached.
    #[inline]
    pub fn try_acquire(&self, now: Instant) -> Result<Token, LimitRefused> {
        self.try_acquire_in(0, now)
    }

    /// Admits a request of `class` (a class out of range counts as the last
    /// one) if the limit, or the class's guarantee, allows it.
    ///
    /// # Errors
    /// [`LimitRefused`] when the limit is reached and the class has its
    /// guaranteed slots (or more) in flight.
    #[inline]
    pub fn try_acquire_in(&self, class: usize, now: Instant) -> Result<Token, LimitRefused> {
        let class = class.min(self.partitions.classes - 1);
        let shift = LANE_BITS * class as u32;
        let mut lanes = self.lanes.load(Ordering::Acquire);
        loop {
            let limit = self.limit.load(Ordering::Relaxed);
            let total = total(lanes);
            let mine = ((lanes >> shift) & LANE_MASK) as u32;
            let refuse = mine >= MAX_IN_FLIGHT
                || (total >= limit
                    && (self.partitions.classes == 1
                        || mine >= self.partitions.guaranteed(class, limit)));
            if refuse {
                return Err(LimitRefused {
                    limit,
                    in_flight: total,
                    class,
                });
            }
            match self.lanes.compare_exchange_weak(
                lanes,
                lanes + (1 << shift),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Token {
                        class: class as u8,
                        in_flight: total + 1,
                        start: now,
                    });
                }
                Err(actual) => lanes = actual,
            }
        }
    }

    /// The request finished normally at `now`: its RTT goes to the
    /// algorithm. Returns the new limit.
    pub fn success(&self, token: Token, now: Instant) -> u32 {
        self.finish(token, now, false)
    }

    /// The request was dropped at `now` — it timed out, or the service
    /// refused it as overloaded: a loss signal for the algorithm. Returns
    /// the new limit.
    pub fn dropped(&self, token: Token, now: Instant) -> u32 {
        self.finish(token, now, true)
    }

    /// The request finished in a way that says nothing about load (it was
    /// cancelled, or failed for a reason of its own): its slot comes back,
    /// the algorithm hears nothing.
    pub fn ignore(&self, token: Token) {
        self.release(&token);
    }

    fn release(&self, token: &Token) {
        self.lanes
            .fetch_sub(1 << (LANE_BITS * u32::from(token.class)), Ordering::AcqRel);
    }

    fn finish(&self, token: Token, now: Instant, dropped: bool) -> u32 {
        self.release(&token);
        let sample = Sample {
            rtt: now.saturating_duration_since(token.start),
            inflight: token.in_flight,
            dropped,
        };
        let mut algorithm = self.algorithm.lock();
        let fresh = clamp_limit(algorithm.update(now, &sample));
        self.adopt(fresh);
        fresh
    }

    /// The limit now.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight now, all classes.
    pub fn in_flight(&self) -> u32 {
        total(self.lanes.load(Ordering::Acquire))
    }

    /// Requests of `class` in flight now.
    pub fn in_flight_in(&self, class: usize) -> u32 {
        if class >= self.partitions.classes {
            return 0;
        }
        ((self.lanes.load(Ordering::Acquire) >> (LANE_BITS * class as u32)) & LANE_MASK) as u32
    }

    /// The classes and their shares.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// The RTTs the algorithm steers by (takes its lock).
    pub fn estimates(&self) -> Estimates {
        self.algorithm.lock().estimates()
    }

    /// Runs `f` on the algorithm, under its lock (to read its state, or to
    /// change it: the limit `f` leaves is adopted).
    pub fn with_algorithm<R>(&self, f: impl FnOnce(&mut A) -> R) -> R {
        let mut algorithm = self.algorithm.lock();
        let out = f(&mut algorithm);
        self.adopt(clamp_limit(algorithm.limit()));
        out
    }

    /// Publishes the algorithm's limit and tells the listeners if it moved.
    /// Called under the algorithm's lock, the only writer of the limit: a
    /// plain load and a store on change spare most samples a
    /// read-modify-write.
    fn adopt(&self, fresh: u32) {
        if self.limit.load(Ordering::Relaxed) != fresh {
            self.limit.store(fresh, Ordering::Relaxed);
            for listener in &self.listeners {
                // A panicking listener must not unwind through the
                // limiter's bookkeeping (a token's drop, under the lock).
                floodwall_core::hook::contain(|| listener(fresh));
            }
        }
    }
}

impl<A> fmt::Debug for ConcurrencyLimiter<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("limit", &self.limit.load(Ordering::Relaxed))
            .field("in_flight", &total(self.lanes.load(Ordering::Relaxed)))
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// The sum of the four 16-bit lanes.
#[inline]
fn total(lanes: u64) -> u32 {
    ((lanes & LANE_MASK)
        + ((lanes >> 16) & LANE_MASK)
        + ((lanes >> 32) & LANE_MASK)
        + (lanes >> 48)) as u32
}

fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_IN_FLIGHT)
}

#[cfg(test)]
mod tests;
