use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Why a limiter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not allowed now; the same request would be allowed after
    /// `retry_after` (if nothing else happens in between).
    RateLimited {
        /// Exactly how long until the request would conform.
        retry_after: Duration,
    },
    /// The request asks for more than the limiter can ever allow at once
    /// (more tokens than the burst, more than the window's limit).
    ExceedsBurst {
        /// Units asked for.
        requested: u32,
        /// The most the limiter allows at once.
        burst: u32,
    },
}

impl Denied {
    /// How long until the request would conform; `None` if it never will.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Denied::RateLimited { retry_after } => Some(*retry_after),
            Denied::ExceedsBurst { .. } => None,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::RateLimited { retry_after } => {
                write!(f, "rate limit exceeded, retry after {retry_after:?}")
            }
            Denied::ExceedsBurst { requested, burst } => write!(
                f,
                "request of {requested} exceeds the most allowed at once ({burst}) and can never conform"
            ),
        }
    }
}

impl std::error::Error for Denied {}

/// What [`Limiter::reserve`] returns: the wait before the request may
/// start and what cancelling it needs, or the refusal.
pub type Reserved<P> = Result<(Duration, P), Denied>;

/// What a rate-limit service asks of its limiter for each request.
///
/// `acquire` decides now; `reserve` may schedule the request up to
/// `max_wait` ahead (for wait and shaping modes) and returns the wait and
/// what [`Refund::refund`] needs if the waiter gives up. A limiter that
/// never schedules ahead implements only `acquire` (and an empty
/// [`Refund`] with `type Permit = ()`): `reserve` then decides now.
pub trait Limiter<Req>: Refund {
    /// Takes `n` units for `req` now, or refuses.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform now.
    fn acquire(&self, req: &Req, now: Instant, n: u32) -> Result<(), Denied>;

    /// Takes `n` units for `req`, for a start at most `max_wait` away;
    /// returns the wait and what cancelling the reservation needs. By
    /// default the limiter does not schedule ahead: it decides now.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform within `max_wait`.
    fn reserve(
        &self,
        req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Reserved<Self::Permit> {
        let _ = max_wait;
        self.acquire(req, now, n)
            .map(|()| (Duration::ZERO, Self::Permit::default()))
    }
}

/// Giving back what a request that waited and never ran had reserved.
pub trait Refund: Send + Sync + 'static {
    /// What identifies the reservation to cancel (`()` for limiters that
    /// never schedule ahead).
    type Permit: Send + Default + 'static;

    /// Cancels the reservation held under `permit`, as far as the algorithm
    /// allows (see each limiter's documentation). By default: nothing to
    /// give back.
    fn refund(&self, permit: Self::Permit, now: Instant) {
        let _ = (permit, now);
    }
}

/// A limiter with one state per key; [`Keyed`] turns it into a [`Limiter`]
/// by extracting each request's key. As with [`Limiter`], one that never
/// schedules ahead implements only `acquire_key`.
pub trait KeyedLimit: Send + Sync + 'static {
    /// The key type.
    type Key: Send + 'static;
    /// What cancelling a keyed reservation needs.
    type Permit: Send + Default + 'static;

    /// Takes `n` units from `key`'s state now, or refuses.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform now.
    fn acquire_key(&self, key: &Self::Key, now: Instant, n: u32) -> Result<(), Denied>;

    /// Takes `n` units from `key`'s state for a start at most `max_wait`
    /// away. By default: decides now.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform within `max_wait`.
    fn reserve_key(
        &self,
        key: &Self::Key,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Self::Permit), Denied> {
        let _ = max_wait;
        self.acquire_key(key, now, n)
            .map(|()| (Duration::ZERO, Self::Permit::default()))
    }

    /// Cancels `key`'s reservation held under `permit`. By default: nothing
    /// to give back.
    fn refund_key(&self, key: &Self::Key, permit: Self::Permit, now: Instant) {
        let _ = (key, permit, now);
    }
}

/// A keyed limiter together with the function that extracts each request's
/// key.
///
/// A request for which the extractor returns `None` is not limited by this
/// layer (map such requests to a shared key if they should be).
pub struct Keyed<M, X> {
    limiter: M,
    extract: X,
}

impl<M, X> Keyed<M, X> {
    /// `limiter` keyed by `extract(&request)`.
    pub fn new(limiter: M, extract: X) -> Self {
        Self { limiter, extract }
    }

    /// The per-key limiter.
    pub fn limiter(&self) -> &M {
        &self.limiter
    }
}

impl<M: fmt::Debug, X> fmt::Debug for Keyed<M, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<Req, M, X> Limiter<Req> for Keyed<M, X>
where
    M: KeyedLimit,
    X: Fn(&Req) -> Option<M::Key> + Send + Sync + 'static,
{
    #[inline]
    fn acquire(&self, req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        match (self.extract)(req) {
            Some(key) => self.limiter.acquire_key(&key, now, n),
            None => Ok(()),
        }
    }

    fn reserve(
        &self,
        req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Reserved<Self::Permit> {
        let Some(key) = (self.extract)(req) else {
            return Ok((Duration::ZERO, None));
        };
        let (wait, permit) = self.limiter.reserve_key(&key, now, n, max_wait)?;
        Ok((wait, (!wait.is_zero()).then_some((key, permit))))
    }
}

impl<M, X> Refund for Keyed<M, X>
where
    M: KeyedLimit,
    X: Send + Sync + 'static,
{
    type Permit = Option<(M::Key, M::Permit)>;

    fn refund(&self, permit: Self::Permit, now: Instant) {
        if let Some((key, permit)) = permit {
            self.limiter.refund_key(&key, permit, now);
        }
    }
}

/// How many units (tokens, window slots) a request costs. Closures
/// `Fn(&Req) -> u32` implement it; [`One`] (the default) charges one per
/// request.
pub trait Weigh<Req>: Send + Sync + 'static {
    /// The request's cost. A cost above what the limiter allows at once can
    /// never be admitted and is refused with
    /// [`ExceedsBurst`](crate::error::ExceedsBurst).
    fn weigh(&self, req: &Req) -> u32;
}

/// Every request costs one unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct One;

impl<Req> Weigh<Req> for One {
    #[inline]
    fn weigh(&self, _: &Req) -> u32 {
        1
    }
}

impl<Req, F> Weigh<Req> for F
where
    F: Fn(&Req) -> u32 + Send + Sync + 'static,
{
    #[inline]
    fn weigh(&self, req: &Req) -> u32 {
        self(req)
    }
}

/// A limiter whose parameters can change while it serves: what
/// [`RateLimitHandle::reconfigure`](crate::RateLimitHandle::reconfigure)
/// calls (SPECS.md, "Reconfiguration").
pub trait Reconfigure {
    /// What changes: a quota, a window.
    type Params;

    /// Applies `params` from `now` on, carrying the state over by the
    /// algorithm's rule, atomically for concurrent deciders.
    fn reconfigure(&self, params: Self::Params, now: Instant);

    /// What `RateLimit` header fields advertise under `params`: the quota
    /// and its window.
    fn policy(params: &Self::Params) -> (u64, Duration);
}

impl Reconfigure for crate::TokenBucket {
    type Params = crate::Quota;

    fn reconfigure(&self, quota: crate::Quota, now: Instant) {
        crate::TokenBucket::reconfigure(self, quota, now);
    }

    fn policy(quota: &crate::Quota) -> (u64, Duration) {
        (u64::from(quota.tokens()), quota.period())
    }
}

/// Parameters that say what `RateLimit` header fields advertise: the quota
/// and its window (what a keyed limiter's reconfiguration reports).
pub trait Advertise {
    /// The quota and its window.
    fn advertised(&self) -> (u64, Duration);
}

impl Advertise for crate::Quota {
    fn advertised(&self) -> (u64, Duration) {
        (u64::from(self.tokens()), self.period())
    }
}

impl<K, S> Reconfigure for crate::PerKey<K, S>
where
    K: std::hash::Hash + Eq,
    S: crate::Carry + crate::KeyRule,
    S::Params: Advertise,
{
    type Params = S::Params;

    /// Every key at once, shard by shard (see [`crate::PerKey::reconfigure`]).
    fn reconfigure(&self, params: S::Params, now: Instant) {
        crate::PerKey::reconfigure(self, params, now);
    }

    fn policy(params: &S::Params) -> (u64, Duration) {
        params.advertised()
    }
}

impl<M: Reconfigure, X> Reconfigure for Keyed<M, X> {
    type Params = M::Params;

    fn reconfigure(&self, params: M::Params, now: Instant) {
        self.limiter.reconfigure(params, now);
    }

    fn policy(params: &M::Params) -> (u64, Duration) {
        M::policy(params)
    }
}
