use floodwall_core::sync::{AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

use floodwall_ratelimit::{Denied, KeyRule, KeyState, Limiter, PerKey, Refund};
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::window::{Window, nanos_since};

/// What a counter decides with: the window and whether the previous
/// window counts (sliding) or not (fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterParams {
    window: u64,
    limit: u32,
    fixed: bool,
    /// How many windows a word may be ahead of a caller's clock reading and
    /// still be taken as newer (clock skew between racing threads): one
    /// second's worth, at least 2 and at most 2^24 (so that at most 1/256 of
    /// the 32-bit window cycle is read as "ahead").
    skew: u32,
    /// Where windows are aligned (ns since the epoch): 0, or the instant
    /// a reconfiguration changed the window's length.
    origin: u64,
}

/// A counter's state in one word: the window index (its low 32 bits), the
/// previous window's count and the current window's count (16 bits each).
#[derive(Debug)]
pub struct CounterState(AtomicU64);

/// The counts a state word means at window `w`.
#[derive(Debug, Clone, Copy)]
struct View {
    w: u64,
    e: u64,
    prev: u32,
    cur: u32,
}

fn pack(w: u64, prev: u32, cur: u32) -> u64 {
    ((w & 0xFFFF_FFFF) << 32) | (u64::from(prev) << 16) | u64::from(cur)
}

impl CounterParams {
    fn new(window: Window, fixed: bool) -> Self {
        let one_second = 1_000_000_000u64.div_ceil(window.length_ns());
        Self {
            window: window.length_ns(),
            limit: window.limit(),
            fixed,
            skew: one_second.clamp(2, 1 << 24) as u32,
            origin: 0,
        }
    }

    /// Reads a state word at `t`: a word from the previous window shifts its
    /// count to `prev`; anything older (idle for two windows or more) is
    /// empty. Windows are aligned to the limiter's epoch.
    ///
    /// A caller whose clock reading is a little behind another's (threads
    /// read the clock before they race for the CAS) may see a word from a
    /// later window, at most [`skew`](Self::skew) windows ahead; it is then
    /// treated as arriving at the start of that window, which can only be
    /// stricter, never as an old empty window.
    ///
    /// The word keeps the window index's low 32 bits: a word left idle for
    /// almost exactly a multiple of 2^32 windows (49.7 days at 1 ms windows)
    /// aliases a recent one, and its old counts apply for at most a second.
    #[inline]
    fn view(self, word: u64, t: u64) -> View {
        let t = t.saturating_sub(self.origin);
        let mut w = t / self.window;
        let mut e = t % self.window;
        let stored = (word >> 32) as u32;
        let p = ((word >> 16) & 0xFFFF) as u32;
        let c = (word & 0xFFFF) as u32;
        let ahead = stored.wrapping_sub(w as u32);
        if ahead != 0 && ahead <= self.skew && (p != 0 || c != 0) {
            w += u64::from(ahead);
            e = 0;
        }
        let (prev, cur) = match (w as u32).wrapping_sub(stored) {
            0 => (p, c),
            1 => (c, 0),
            _ => (0, 0),
        };
        View {
            w,
            e,
            prev: if self.fixed { 0 } else { prev },
            cur,
        }
    }

    /// `prev·(W−e)/W + cur + (n − 1) < N`, in integers:
    /// `prev·(W−e) + (cur + n − 1)·W < N·W`.
    #[inline]
    fn admits(self, v: View, n: u32) -> bool {
        let w = u128::from(self.window);
        let lhs =
            u128::from(v.prev) * u128::from(self.window - v.e) + u128::from(v.cur + n - 1) * w;
        lhs < u128::from(self.limit) * w
    }

    /// The exact wait until a request of weight `n`, refused at view `v`,
    /// would be admitted if nothing else arrived.
    fn retry_after(self, v: View, n: u32) -> u64 {
        let big_w = u128::from(self.window);
        let limit = u128::from(self.limit);
        let a = u128::from(v.cur + n - 1);
        // Later in this window, as the previous window's weight fades: the
        // smallest e' with prev·(W − e') < (N − a)·W.
        if a < limit && v.prev > 0 {
            let m = ((limit - a) * big_w - 1) / u128::from(v.prev);
            if m > 0 && m < big_w {
                let e1 = (big_w - m) as u64;
                return e1 - v.e;
            }
        }
        let to_next = self.window - v.e;
        // In the next window, where this window's count becomes `prev`.
        if self.fixed || v.cur == 0 {
            return to_next;
        }
        let b = u128::from(n - 1);
        let m = ((limit - b) * big_w - 1) / u128::from(v.cur);
        if m >= big_w {
            return to_next;
        }
        if m == 0 {
            // Not within the next window either: two windows on, all is clear.
            return to_next + self.window;
        }
        to_next + (big_w - m) as u64
    }

    /// Decides a request of weight `n` at `t` against `state`.
    #[inline]
    fn decide(self, state: &CounterState, t: u64, n: u32) -> Result<(), Denied> {
        if n > self.limit {
            return Err(Denied::ExceedsBurst {
                requested: n,
                burst: self.limit,
            });
        }
        if n == 0 {
            return Ok(());
        }
        let mut word = state.0.load(Ordering::Relaxed);
        loop {
            let v = self.view(word, t);
            if !self.admits(v, n) {
                return Err(Denied::RateLimited {
                    retry_after: Duration::from_nanos(self.retry_after(v, n)),
                });
            }
            let next = pack(v.w, v.prev, v.cur + n);
            match state
                .0
                .compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => word = actual,
            }
        }
    }

    /// Requests of weight 1 that would be admitted at `t`, one after another.
    fn remaining(self, state: &CounterState, t: u64) -> u32 {
        let v = self.view(state.0.load(Ordering::Relaxed), t);
        let w = u128::from(self.window);
        let room = (u128::from(self.limit) * w)
            .saturating_sub(u128::from(v.prev) * u128::from(self.window - v.e));
        let fits = room.div_ceil(w).saturating_sub(u128::from(v.cur));
        fits.min(u128::from(self.limit)) as u32
    }

    /// The estimate `prev·(W−e)/W + cur` at `t`.
    fn estimate(self, state: &CounterState, t: u64) -> f64 {
        let v = self.view(state.0.load(Ordering::Relaxed), t);
        let fade = (self.window - v.e) as f64 / self.window as f64;
        f64::from(v.prev) * fade + f64::from(v.cur)
    }
}

impl KeyState for CounterState {
    type Params = CounterParams;

    fn fresh(_: &CounterParams) -> Self {
        CounterState(AtomicU64::new(0))
    }

    /// A count stops mattering two windows after the window it was made in
    /// (one, for a fixed window).
    fn idle_at(&self, params: &CounterParams, t: u64) -> u64 {
        let word = self.0.load(Ordering::Relaxed);
        let v = params.view(word, t);
        if v.prev == 0 && v.cur == 0 {
            return 0;
        }
        let windows_ago = u64::from((v.w as u32).wrapping_sub((word >> 32) as u32));
        let relevant = if params.fixed { 1 } else { 2 };
        (v.w - windows_ago.min(v.w) + relevant)
            .saturating_mul(params.window)
            .saturating_add(params.origin)
    }
}

impl floodwall_ratelimit::Carry for CounterState {
    /// A new window length restarts window alignment at the change instant
    /// (SPECS.md, "Reconfiguration"); a new limit alone keeps the
    /// alignment.
    fn prepare(old: &CounterParams, new: CounterParams, t: u64) -> CounterParams {
        CounterParams {
            origin: if new.window == old.window {
                old.origin
            } else {
                t
            },
            // Sliding or fixed is the limiter's mode, not a parameter.
            fixed: old.fixed,
            ..new
        }
    }

    /// Counts are kept and the new limit applies to the current estimate;
    /// after a change of window length, the estimate at the change instant
    /// becomes the previous window's count of the new alignment (rounded
    /// up), so the estimate does not jump.
    fn carry(&self, old: &CounterParams, new: &CounterParams, t: u64) {
        if old.window == new.window {
            return;
        }
        let estimate = old.estimate(self, t).ceil().min(f64::from(u16::MAX)) as u32;
        // Window −1 of the new alignment (which starts at t) holds it as its
        // current count: at t it reads as the previous window's.
        let before = (t.saturating_sub(new.origin) / new.window).wrapping_sub(1);
        self.0.store(pack(before, 0, estimate), Ordering::Relaxed);
    }
}

/// The two-window sliding counter (Cloudflare's): a count for the current
/// window and the previous one, and the estimate
/// `prev·(W − e)/W + cur` of requests in the last `W`, where `e` is the time
/// elapsed in the current window.
///
/// A request is admitted iff the estimate is below the limit before it is
/// counted (the convention of Cloudflare's description of the counter); refused requests are not counted. Windows
/// are aligned to the limiter's epoch; after two idle windows both counts are
/// zero. The whole state is one `AtomicU64` (window index, two 16-bit
/// counts), updated with one CAS, so the limit is at most 65,535 per window.
/// A refused request learns the exact time at which the estimate will let it
/// in, if nothing else arrives.
///
/// The estimate assumes the previous window's requests were spread evenly,
/// so the counter can admit up to twice the limit within one window-length
/// span that straddles two windows (all of one window's requests at its
/// end, all of the next's at its start); on realistic traffic it tracks the
/// exact log closely ([`SlidingLog`](crate::SlidingLog) is exact).
/// [`fixed`](Self::fixed)
/// ignores the previous window: a plain fixed window.
///
/// ```
/// use std::time::Duration;
/// use floodwall_sliding_window::{SlidingWindowCounter, Window};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let counter = SlidingWindowCounter::with_epoch(Window::per_second(10)?, t0);
/// for _ in 0..10 {
///     counter.try_acquire(t0, 1).unwrap();
/// }
/// // Half-way through the next window, the previous one weighs half: 5.
/// let mid = t0 + Duration::from_millis(1500);
/// assert_eq!(counter.estimate(mid), 5.0);
/// assert_eq!(counter.remaining(mid), 5);
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct SlidingWindowCounter {
    state: CounterState,
    /// The parameters and the window they come from, replaced by a
    /// reconfiguration (under the write lock, converting the state); a
    /// decision reads them under the read lock.
    params: RwLock<(CounterParams, Window)>,
    epoch: Instant,
}

impl SlidingWindowCounter {
    /// A sliding counter for `window`, its windows aligned to now.
    pub fn new(window: Window) -> Self {
        Self::with_epoch(window, Instant::now())
    }

    /// As [`new`](Self::new), aligned to `epoch`.
    pub fn with_epoch(window: Window, epoch: Instant) -> Self {
        Self::build(window, epoch, false)
    }

    /// A fixed-window counter (the previous window does not count), aligned
    /// to now.
    pub fn fixed(window: Window) -> Self {
        Self::fixed_with_epoch(window, Instant::now())
    }

    /// As [`fixed`](Self::fixed), aligned to `epoch`.
    pub fn fixed_with_epoch(window: Window, epoch: Instant) -> Self {
        Self::build(window, epoch, true)
    }

    fn build(window: Window, epoch: Instant, fixed: bool) -> Self {
        Self {
            state: CounterState(AtomicU64::new(0)),
            params: RwLock::new((CounterParams::new(window, fixed), window)),
            epoch,
        }
    }

    /// Counts `n` requests at `now` if the estimate allows them: admitted
    /// iff `estimate + n − 1 < limit` (for one request, the estimate is below
    /// the limit before it is counted).
    ///
    /// # Errors
    /// [`Denied::RateLimited`] with the exact wait; [`Denied::ExceedsBurst`]
    /// if `n` is above the limit.
    #[inline]
    pub fn try_acquire(&self, now: Instant, n: u32) -> Result<(), Denied> {
        let t = nanos_since(self.epoch, now);
        self.params.read().0.decide(&self.state, t, n)
    }

    /// Counts under `window` from `now` on (SPECS.md, "Reconfiguration"):
    /// the counts are kept and a new limit applies to the current estimate;
    /// a new length restarts the window alignment at `now`, the estimate
    /// then carried as the previous window's count. Atomic for concurrent
    /// deciders (they wait for the change under a read lock).
    pub fn reconfigure(&self, window: Window, now: Instant) {
        use floodwall_ratelimit::Carry;
        let t = nanos_since(self.epoch, now);
        let mut params = self.params.write();
        let old = params.0;
        let new = CounterState::prepare(&old, CounterParams::new(window, old.fixed), t);
        self.state.carry(&old, &new, t);
        *params = (new, window);
    }

    /// The estimate of requests in the last window at `now`.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.params
            .read()
            .0
            .estimate(&self.state, nanos_since(self.epoch, now))
    }

    /// How many single requests would be admitted at `now`.
    pub fn remaining(&self, now: Instant) -> u32 {
        self.params
            .read()
            .0
            .remaining(&self.state, nanos_since(self.epoch, now))
    }

    /// The limit and window length.
    pub fn window(&self) -> Window {
        self.params.read().1
    }

    /// Whether this is a fixed window.
    pub fn is_fixed(&self) -> bool {
        self.params.read().0.fixed
    }
}

impl fmt::Debug for SlidingWindowCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingWindowCounter")
            .field("window", &self.window())
            .field("fixed", &self.is_fixed())
            .finish_non_exhaustive()
    }
}

/// A counter does not schedule ahead: it decides now.
impl<Req> Limiter<Req> for SlidingWindowCounter {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }
}

impl Refund for SlidingWindowCounter {
    type Permit = ();
}

/// One [`SlidingWindowCounter`] per key, at most `capacity` keys remembered
/// (see [`KeyedMap`](floodwall_ratelimit::KeyedMap) for the eviction rule):
/// a [`PerKey`] over [`CounterState`]. A key's state is one `AtomicU64`; a
/// key idle for two windows is dropped without changing any decision.
///
/// ```
/// use floodwall_sliding_window::{CounterParams, KeyedSlidingWindowCounter, Window};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let per_ip = KeyedSlidingWindowCounter::with_epoch(Window::per_second(2)?, 1_000, t0);
/// assert!(per_ip.try_acquire(&"10.0.0.1", t0, 2).is_ok());
/// assert!(per_ip.try_acquire(&"10.0.0.1", t0, 1).is_err());
/// assert_eq!(per_ip.remaining(&"10.0.0.2", t0), 2);
/// // Fixed windows per key:
/// let fixed = KeyedSlidingWindowCounter::<&str>::new(CounterParams::fixed(Window::per_second(2)?), 1_000);
/// assert!(fixed.params().is_fixed());
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub type KeyedSlidingWindowCounter<K> = PerKey<K, CounterState>;

impl From<Window> for CounterParams {
    /// A sliding (two-window) counter's parameters.
    fn from(window: Window) -> Self {
        CounterParams::new(window, false)
    }
}

impl CounterParams {
    /// A fixed-window counter's parameters.
    pub fn fixed(window: Window) -> Self {
        CounterParams::new(window, true)
    }

    /// Whether the previous window is ignored.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }
}

impl KeyRule for CounterState {
    type Permit = ();

    #[inline]
    fn acquire(&self, params: &CounterParams, t: u64, n: u32) -> Result<(), Denied> {
        params.decide(self, t, n)
    }

    fn remaining(state: Option<&Self>, params: &CounterParams, t: u64) -> u32 {
        state.map_or(params.limit, |state| params.remaining(state, t))
    }
}
