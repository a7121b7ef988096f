//! Where a request's criticality class comes from.

use floodwall_core::Criticality;

/// Requests carry no criticality: one set of statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCriticality;

/// Where a request's [`Criticality`] comes from. Closures
/// `Fn(&Req) -> Option<Criticality>` implement it; [`NoCriticality`] gives
/// none; [`CriticalityFromExtensions`] reads an `http::Request`'s extensions.
pub trait CriticalityOf<Req>: Send + Sync + 'static {
    /// The request's class, if it has one.
    fn criticality(&self, req: &Req) -> Option<Criticality>;
}

impl<Req> CriticalityOf<Req> for NoCriticality {
    #[inline]
    fn criticality(&self, _: &Req) -> Option<Criticality> {
        None
    }
}

impl<Req, F> CriticalityOf<Req> for F
where
    F: Fn(&Req) -> Option<Criticality> + Send + Sync + 'static,
{
    fn criticality(&self, req: &Req) -> Option<Criticality> {
        self(req)
    }
}

/// Reads the [`Criticality`] extension of an `http::Request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CriticalityFromExtensions;

impl<B> CriticalityOf<http::Request<B>> for CriticalityFromExtensions {
    fn criticality(&self, req: &http::Request<B>) -> Option<Criticality> {
        req.extensions().get::<Criticality>().copied()
    }
}
