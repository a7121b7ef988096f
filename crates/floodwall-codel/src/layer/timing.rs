//! Where a request's arrival and deadline come from.

use super::*;

/// Where a request's [`Arrival`] and [`Deadline`] come from.
/// [`NoTiming`] gives neither; [`TimingFromExtensions`] reads an
/// `http::Request`'s extensions.
pub trait TimingOf<Req>: Send + Sync + 'static {
    /// When the request reached the outermost layer, if known: queueing
    /// time counts from there.
    fn arrival(&self, req: &Req) -> Option<Instant>;
    /// When the request's caller stops waiting, if known.
    fn deadline(&self, req: &Req) -> Option<Instant>;
}

/// Requests carry no arrival time or deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTiming;

impl<Req> TimingOf<Req> for NoTiming {
    #[inline]
    fn arrival(&self, _: &Req) -> Option<Instant> {
        None
    }

    #[inline]
    fn deadline(&self, _: &Req) -> Option<Instant> {
        None
    }
}

/// Reads the [`Arrival`] and [`Deadline`] of an `http::Request`: its
/// extensions, and for the deadline the one in the task scope when that is
/// earlier ([`Deadline::effective`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimingFromExtensions;

impl<B> TimingOf<http::Request<B>> for TimingFromExtensions {
    fn arrival(&self, req: &http::Request<B>) -> Option<Instant> {
        Arrival::of(req.extensions()).map(Arrival::instant)
    }

    fn deadline(&self, req: &http::Request<B>) -> Option<Instant> {
        Deadline::effective(req.extensions()).map(Deadline::instant)
    }
}
