use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Denied, KeyedTokenBucket, TokenBucket};

/// What a token-bucket service asks of its limiter: one bucket for every
/// request ([`TokenBucket`]) or one per key ([`Keyed`]).
///
/// `acquire` takes one token for `req` at `now`, allowing a start up to
/// `max_wait` later, and returns the wait and what a cancelled waiter needs
/// to [`refund`](Refund::refund) its token.
pub trait Limiter<Req>: Refund {
    /// Takes a token for `req`.
    ///
    /// # Errors
    /// [`Denied`] when the request does not conform within `max_wait`.
    fn acquire(
        &self,
        req: &Req,
        now: Instant,
        max_wait: Duration,
    ) -> Result<(Duration, Self::Permit), Denied>;
}

/// Giving back the token of a request that waited and never ran.
pub trait Refund: Send + Sync + 'static {
    /// What identifies the bucket to refund.
    type Permit: Send + 'static;

    /// Returns the token taken under `permit`.
    fn refund(&self, permit: Self::Permit, now: Instant);
}

impl<Req> Limiter<Req> for TokenBucket {
    #[inline]
    fn acquire(&self, _req: &Req, now: Instant, max_wait: Duration) -> Result<(Duration, ()), Denied> {
        if max_wait.is_zero() {
            self.try_acquire(now, 1).map(|()| (Duration::ZERO, ()))
        } else {
            self.reserve(now, 1, max_wait).map(|w| (w, ()))
        }
    }
}

impl Refund for TokenBucket {
    type Permit = ();

    fn refund(&self, (): (), now: Instant) {
        TokenBucket::refund(self, now, 1);
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
    fn acquire(
        &self,
        req: &Req,
        now: Instant,
        max_wait: Duration,
    ) -> Result<(Duration, Option<K>), Denied> {
        let Some(key) = (self.extract)(req) else {
            return Ok((Duration::ZERO, None));
        };
        if max_wait.is_zero() {
            return self
                .buckets
                .try_acquire(&key, now, 1)
                .map(|()| (Duration::ZERO, None));
        }
        let wait = self.buckets.reserve(&key, now, 1, max_wait)?;
        Ok((wait, (!wait.is_zero()).then_some(key)))
    }
}

impl<K, X> Refund for Keyed<K, X>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
{
    type Permit = Option<K>;

    fn refund(&self, permit: Option<K>, now: Instant) {
        if let Some(key) = permit {
            self.buckets.refund(&key, now, 1);
        }
    }
}
