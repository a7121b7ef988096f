use std::fmt;
use std::time::Duration;

use floodwall_core::ConfigError;
use floodwall_ratelimit::{Denied, KeyRule, KeyState, Limiter, PerKey, Refund};
use parking_lot::Mutex;
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::window::{Window, nanos_since};

/// The most memory the rings of a keyed exact log may take when every key
/// it remembers is full: `limit × capacity × 8` bytes, at most 1 GiB. A
/// config past it is refused at build (shorten the window's limit, lower
/// the capacity, or use the sliding counter, 16 bytes per key).
pub const MAX_LOG_BYTES: u64 = 1 << 30;

/// Checks a keyed log's worst-case ring memory against [`MAX_LOG_BYTES`].
pub(crate) fn check_log_memory(limit: u32, capacity: usize) -> Result<(), ConfigError> {
    let bytes = u64::from(limit)
        .saturating_mul(u64::try_from(capacity).unwrap_or(u64::MAX))
        .saturating_mul(8);
    if bytes > MAX_LOG_BYTES {
        return Err(ConfigError::new(
            "capacity",
            "× limit × 8 bytes of log rings must be at most 1 GiB (lower either, or use the sliding counter)",
        )
        .with_value(capacity));
    }
    Ok(())
}

/// What every log shares: the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogParams {
    window: u64,
    limit: u32,
}

/// The last `limit` admission times, oldest first from `head`.
struct Ring {
    /// Admission time + 1 (so 0 is an empty slot); non-decreasing from
    /// `head` around the ring.
    slots: Box<[u64]>,
    head: usize,
}

/// One log's state. The exact log must read its oldest entry and append in
/// one step, so it takes a short lock (no allocation, no waiting; work
/// proportional to the request's weight, and `count` scans the ring); it is
/// the one floodwall limiter whose decision is not a single CAS.
pub struct LogState(Mutex<Ring>);

impl fmt::Debug for LogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogState").finish_non_exhaustive()
    }
}

impl LogParams {
    fn new(window: Window) -> Self {
        Self {
            window: window.length_ns(),
            limit: window.limit(),
        }
    }

    fn fresh(self) -> LogState {
        LogState(Mutex::new(Ring {
            slots: vec![0; self.limit as usize].into_boxed_slice(),
            head: 0,
        }))
    }

    /// Admits `n` requests at `t` iff fewer than `limit − n + 1` were
    /// admitted in `(t − W, t]`: the `n`-th oldest of the last `limit`
    /// admissions must be at or before `t − W`.
    fn decide(self, state: &LogState, t: u64, n: u32) -> Result<(), Denied> {
        if n > self.limit {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.limit,
            });
        }
        if n == 0 {
            return Ok(());
        }
        let len = self.limit as usize;
        let mut ring = state.0.lock();
        let nth_oldest = ring.slots[(ring.head + n as usize - 1) % len];
        if nth_oldest != 0 {
            let expires = (nth_oldest - 1).saturating_add(self.window);
            if expires > t {
                return Err(Denied::RateLimited {
                    retry_after: Duration::from_nanos(expires - t),
                });
            }
        }
        // Keep the log in order even if this caller read the clock a moment
        // before one that got the lock first.
        let newest = ring.slots[(ring.head + len - 1) % len];
        let stamp = t.saturating_add(1).max(newest);
        for _ in 0..n {
            let head = ring.head;
            ring.slots[head] = stamp;
            ring.head = (head + 1) % len;
        }
        Ok(())
    }

    /// Admissions in `(t − W, t]`.
    fn count(self, state: &LogState, t: u64) -> u32 {
        let ring = state.0.lock();
        ring.slots
            .iter()
            .filter(|&&s| s != 0 && (s - 1).saturating_add(self.window) > t && s - 1 <= t)
            .count() as u32
    }
}

impl KeyState for LogState {
    type Params = LogParams;

    fn fresh(params: &LogParams) -> Self {
        params.fresh()
    }

    /// A log stops mattering one window after its newest entry.
    fn idle_at(&self, params: &LogParams, _t: u64) -> u64 {
        let ring = self.0.lock();
        let len = ring.slots.len();
        match ring.slots[(ring.head + len - 1) % len] {
            0 => 0,
            newest => (newest - 1).saturating_add(params.window),
        }
    }
}

/// The exact sliding log: a request is admitted iff fewer than `limit`
/// requests were admitted in the last window `(t − W, t]`.
///
/// It keeps the last `limit` admission times in a ring (memory O(limit), 8
/// bytes each), so it never admits more than `limit` in any window of length
/// `W`, and a refused request learns exactly when the oldest admission in
/// its way leaves the window. A request exactly `W` after an admission no
/// longer sees it (the window is open on the left). Use it where the limit is
/// small and must hold exactly (logins, password resets, an upstream's hard
/// quota); use the counter where memory per key matters.
///
/// ```
/// use std::time::Duration;
/// use floodwall_sliding_window::{SlidingLog, Window};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let log = SlidingLog::with_epoch(Window::new(2, Duration::from_secs(10))?, t0);
/// log.try_acquire(t0, 1).unwrap();
/// log.try_acquire(t0 + Duration::from_secs(4), 1).unwrap();
/// let refused = log.try_acquire(t0 + Duration::from_secs(9), 1).unwrap_err();
/// assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
/// assert!(log.try_acquire(t0 + Duration::from_secs(10), 1).is_ok());
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct SlidingLog {
    state: LogState,
    /// The parameters and the window they come from, replaced by a
    /// reconfiguration; a decision reads them under the read lock.
    params: RwLock<(LogParams, Window)>,
    epoch: Instant,
}

impl SlidingLog {
    /// An empty log for `window`, its clock starting now.
    pub fn new(window: Window) -> Self {
        Self::with_epoch(window, Instant::now())
    }

    /// As [`new`](Self::new), with the clock starting at `epoch`.
    pub fn with_epoch(window: Window, epoch: Instant) -> Self {
        let params = LogParams::new(window);
        Self {
            state: params.fresh(),
            params: RwLock::new((params, window)),
            epoch,
        }
    }

    /// Admits `n` requests at `now` if the window has room for all of them:
    /// the `n`-th oldest of the last `limit` admissions must have left the
    /// window.
    ///
    /// # Errors
    /// [`Denied::RateLimited`] with the exact wait; [`Denied::ExceedsBurst`]
    /// if `n` is above the limit.
    pub fn try_acquire(&self, now: Instant, n: u32) -> Result<(), Denied> {
        self.params
            .read()
            .0
            .decide(&self.state, nanos_since(self.epoch, now), n)
    }

    /// Logs under `window` from `now` on (SPECS.md, "Reconfiguration"):
    /// the logged admissions are kept (the newest of them, up to a smaller
    /// new limit) and judged by the new limit and length. Atomic for
    /// concurrent deciders.
    pub fn reconfigure(&self, window: Window, now: Instant) {
        use floodwall_ratelimit::Carry;
        let t = nanos_since(self.epoch, now);
        let mut params = self.params.write();
        let new = LogParams::new(window);
        self.state.carry(&params.0, &new, t);
        *params = (new, window);
    }

    /// Admissions in the window ending at `now`.
    pub fn count(&self, now: Instant) -> u32 {
        self.params
            .read()
            .0
            .count(&self.state, nanos_since(self.epoch, now))
    }

    /// The limit and window length.
    pub fn window(&self) -> Window {
        self.params.read().1
    }
}

impl fmt::Debug for SlidingLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingLog")
            .field("window", &self.window())
            .finish_non_exhaustive()
    }
}

/// A log does not schedule ahead: it decides now.
impl<Req> Limiter<Req> for SlidingLog {
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }
}

impl Refund for SlidingLog {
    type Permit = ();
}

/// One [`SlidingLog`] per key, at most `capacity` keys remembered (see
/// [`KeyedMap`](floodwall_ratelimit::KeyedMap) for the eviction rule): a
/// [`PerKey`] over [`LogState`]. Each key holds a ring of `limit`
/// timestamps (8 bytes each); a key idle for one window is dropped without
/// changing any decision. The map's `memory_bytes` excludes the rings: add
/// `limit × 8` bytes per key.
///
/// ```
/// use floodwall_sliding_window::{KeyedSlidingLog, LogState, Window};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let per_user = KeyedSlidingLog::with_epoch(Window::per_second(3)?, 1_000, t0);
/// per_user.try_acquire(&"alice", t0, 2).unwrap();
/// assert_eq!(per_user.inspect(&"alice", t0, LogState::count), Some(2));
/// assert_eq!(per_user.remaining(&"alice", t0), 1);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub type KeyedSlidingLog<K> = PerKey<K, LogState>;

impl From<Window> for LogParams {
    fn from(window: Window) -> Self {
        LogParams::new(window)
    }
}

impl LogState {
    /// Admissions in the window ending at `t`.
    pub fn count(&self, params: &LogParams, t: u64) -> u32 {
        params.count(self, t)
    }
}

impl floodwall_ratelimit::Carry for LogState {
    /// The logged admissions are kept, the newest of them up to a smaller
    /// new limit, in order; the new length judges them.
    fn carry(&self, _old: &LogParams, new: &LogParams, _t: u64) {
        let mut ring = self.0.lock();
        let len = ring.slots.len();
        let logged: Vec<u64> = (0..len)
            .map(|i| ring.slots[(ring.head + i) % len])
            .filter(|&s| s != 0)
            .collect();
        let size = new.limit as usize;
        let keep = &logged[logged.len().saturating_sub(size)..];
        let mut slots = vec![0; size];
        slots[size - keep.len()..].copy_from_slice(keep);
        ring.slots = slots.into_boxed_slice();
        ring.head = 0;
    }
}

impl KeyRule for LogState {
    type Permit = ();

    /// Refused whatever the key's state: no ring is allocated for it.
    fn admissible(params: &LogParams, n: u32) -> Result<(), Denied> {
        match n > params.limit {
            true => Err(Denied::ExceedsBurst {
                requested: n,
                burst: params.limit,
            }),
            false => Ok(()),
        }
    }

    fn acquire(&self, params: &LogParams, t: u64, n: u32) -> Result<(), Denied> {
        params.decide(self, t, n)
    }

    fn remaining(state: Option<&Self>, params: &LogParams, t: u64) -> u32 {
        params.limit - state.map_or(0, |state| params.count(state, t))
    }
}
