use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Denied, KeyedTokenBucket, Reservation, TokenBucket};

/// What a token-bucket service asks of its limiter: one bucket for every
/// request ([`TokenBucket`]) or one per key ([`Keyed`]).
///
/// `acquire` takes `n` tokens for `req` at `now`, allowing a start up to
/// `max_wait` later, and returns the wait and what a cancelled waiter needs
/// to [`refund`](Refund::refund) its tokens.
///
/// Implemented by [`TokenBucket`] and [`Keyed`]; the trait is public so the
/// service's bounds can name it, and so other limiters can reuse the layer.
pub trait Limiter<Req>: Refund {
    /// Takes `n` tokens for `req` now, or refuses.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform now.
    fn acquire(&self, req: &Req, now: Instant, n: u32) -> Result<(), Denied>;

    /// Takes `n` tokens for `req`, for a start at most `max_wait` away;
    /// returns the wait and what cancelling the reservation needs.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform within `max_wait`.
    fn reserve(
        &self,
        req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Self::Permit), Denied>;
}

/// Giving back the tokens of a request that waited and never ran.
pub trait Refund: Send + Sync + 'static {
    /// What identifies the bucket and the reservation to cancel.
    type Permit: Send + 'static;

    /// Cancels the reservation held under `permit`; its tokens go back if
    /// it is still the newest (see [`TokenBucket::cancel`]).
    fn refund(&self, permit: Self::Permit, now: Instant);
}

impl<Req> Limiter<Req> for TokenBucket {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        self.try_acquire(now, n)
    }

    fn reserve(
        &self,
        _req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Reservation), Denied> {
        let reservation = TokenBucket::reserve(self, now, n, max_wait)?;
        Ok((reservation.wait(), reservation))
    }
}

impl Refund for TokenBucket {
    type Permit = Reservation;

    fn refund(&self, reservation: Reservation, now: Instant) {
        self.cancel(reservation, now);
    }
}

/// A [`KeyedTokenBucket`] together with the function that extracts each
/// request's key.
///
/// A request for which the extractor returns `None` is not limited by this
/// layer (map such requests to a shared key if they should be).
pub struct Keyed<K, X> {
    buckets: KeyedTokenBucket<K>,
    extract: X,
}

impl<K, X> Keyed<K, X> {
    /// Per-key buckets keyed by `extract(&request)`.
    pub fn new(buckets: KeyedTokenBucket<K>, extract: X) -> Self {
        Self { buckets, extract }
    }

    /// The per-key buckets.
    pub fn buckets(&self) -> &KeyedTokenBucket<K> {
        &self.buckets
    }
}

impl<K, X> std::fmt::Debug for Keyed<K, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl<Req, K, X> Limiter<Req> for Keyed<K, X>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
{
    #[inline]
    fn acquire(&self, req: &Req, now: Instant, n: u32) -> Result<(), Denied> {
        match (self.extract)(req) {
            Some(key) => self.buckets.try_acquire(&key, now, n),
            None => Ok(()),
        }
    }

    fn reserve(
        &self,
        req: &Req,
        now: Instant,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Duration, Option<(K, Reservation)>), Denied> {
        let Some(key) = (self.extract)(req) else {
            return Ok((Duration::ZERO, None));
        };
        let reservation = self.buckets.reserve(&key, now, n, max_wait)?;
        let wait = reservation.wait();
        Ok((wait, (!wait.is_zero()).then_some((key, reservation))))
    }
}

impl<K, X> Refund for Keyed<K, X>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    type Permit = Option<(K, Reservation)>;

    fn refund(&self, permit: Option<(K, Reservation)>, now: Instant) {
        if let Some((key, reservation)) = permit {
            self.buckets.cancel(&key, reservation, now);
        }
    }
}

/// How many tokens a request costs. Closures `Fn(&Req) -> u32` implement it;
/// [`One`] (the default) charges one token per request.
pub trait Weigh<Req>: Send + Sync + 'static {
    /// The request's cost in tokens. A cost above the burst can never be
    /// admitted and is refused with [`ExceedsBurst`](crate::error::ExceedsBurst).
    fn weigh(&self, req: &Req) -> u32;
}

/// Every request costs one token.
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
