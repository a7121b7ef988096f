//! Which priority class a request belongs to, for a partitioned limit.

use floodwall_core::Criticality;

/// Picks a request's priority class for a partitioned limit.
///
/// Closures `Fn(&Req) -> usize` implement it.
pub trait Partition<Req> {
    /// The class of `req` (0 = most important).
    fn class(&self, req: &Req) -> usize;
}

impl<Req, F: Fn(&Req) -> usize> Partition<Req> for F {
    fn class(&self, req: &Req) -> usize {
        self(req)
    }
}

/// Every request is class 0: no partitioning.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleClass;

impl<Req> Partition<Req> for SingleClass {
    #[inline]
    fn class(&self, _req: &Req) -> usize {
        0
    }
}

/// The class of an `http::Request` is its [`Criticality`] extension's index
/// (`CriticalPlus` = 0 … `Sheddable` = 3); without one, `Critical` (1).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByCriticality;

impl<B> Partition<http::Request<B>> for ByCriticality {
    fn class(&self, req: &http::Request<B>) -> usize {
        req.extensions()
            .get::<Criticality>()
            .copied()
            .unwrap_or_default()
            .index()
    }
}
