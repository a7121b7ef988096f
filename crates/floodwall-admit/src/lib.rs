//! The Tower wiring every admission-style floodwall layer shares.
//!
//! A floodwall layer that admits or refuses requests (the breaker, the SRE
//! throttle, adaptive concurrency, …) is two things: a sans-IO core that
//! decides, and the same Tower wiring around it — a service that forwards
//! readiness and decides in `call`, a response future, a guard that gives
//! back what an admitted request held however it ends, and the reading of
//! how it ended by floodwall's outcome rule ([`floodwall_core::outcome`]).
//! This crate is that wiring, written once. A layer implements [`Policy`]
//! (what a permit is, and what to do when a request ends), [`Admit`] (decide
//! for a request) and [`Read`] (what a finished call says), and wraps its
//! inner service in [`Guarded`].
//!
//! Two modes every such layer gets for free:
//! - [`UntilBodyEnd`]: the permit is held until the response **body** ends,
//!   so an HTTP or gRPC stream counts for its whole life (as Envoy counts
//!   streams), not just until its headers arrive.
//! - [`Backpressure`]: the permit is taken in `poll_ready` (the service is
//!   not ready until one is available) instead of refusing in `call`, for
//!   use behind `tower::balance` or `Buffer`. A permit taken in `poll_ready`
//!   is given back if the service is dropped or cloned without a call.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use floodwall_admit::{Admit, Guarded, Policy, Read};
//! use floodwall_core::outcome::Verdict;
//! use floodwall_core::{BoxError, RejectKind, Rejected, Rejection};
//! use tower::{ServiceExt, service_fn};
//!
//! /// At most `max` requests at once.
//! struct AtMost { max: u32, now: AtomicU32 }
//!
//! #[derive(Debug)]
//! struct Full;
//! impl std::fmt::Display for Full {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("full") }
//! }
//! impl std::error::Error for Full {}
//! impl Rejection for Full {
//!     fn kind(&self) -> RejectKind { RejectKind::Overloaded }
//! }
//!
//! impl Policy for AtMost {
//!     type Permit = ();
//!     fn release(&self, (): (), _: Verdict) {
//!         self.now.fetch_sub(1, Ordering::AcqRel);
//!     }
//! }
//! impl<Req> Admit<Req> for AtMost {
//!     fn admit(&self, _: &mut Req) -> Result<(), BoxError> {
//!         self.now
//!             .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
//!             .map(drop)
//!             .map_err(|_| Rejected::boxed(Full))
//!     }
//! }
//! impl<Res> Read<Res> for AtMost {}
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let policy = Arc::new(AtMost { max: 1, now: AtomicU32::new(0) });
//! let svc = Guarded::new(service_fn(|x: u32| async move { Ok::<_, BoxError>(x * 2) }), policy.clone());
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(policy.now.load(Ordering::Acquire), 0, "the permit came back");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backpressure;
mod body;
pub mod future;
pub mod gate;
mod guard;
mod layer;
mod service;

use std::time::Duration;

use floodwall_core::BoxError;
use floodwall_core::outcome::{self, Verdict};

pub use backpressure::{Backpressure, NotReady, Wait};
pub use body::{GuardedBody, UntilBodyEnd};
pub use guard::Guard;
pub use layer::{BackpressureLayer, GuardedLayer, UntilBodyEndLayer};
pub use service::Guarded;

/// What an admission-style layer holds for each admitted request, and what
/// it does when the request ends.
pub trait Policy: Send + Sync + 'static {
    /// What an admitted request holds until it ends (a breaker's permit, a
    /// concurrency slot, a throttle's ticket; `()` for nothing).
    type Permit: Send + 'static;

    /// The request admitted with `permit` ended; `verdict` is what it says
    /// about the dependency, by floodwall's outcome rule: read from its
    /// result by [`Read::read`], or, when its future (or body) was dropped
    /// first, [`outcome::dropped`]. Called exactly once per permit.
    fn release(&self, permit: Self::Permit, verdict: Verdict);

    /// Whether [`Read::read`] and [`release`](Self::release) use the
    /// `caller_limited` mark ([`outcome::caller_limited`]); layers that do
    /// not learn from outcomes say `false` and skip reading it.
    const READS_OUTCOMES: bool = true;
}

/// Decides, in `call`, whether a request may go on.
pub trait Admit<Req>: Policy {
    /// Admits `req` and returns its permit, or refuses it with a boxed
    /// floodwall rejection (`Rejected::boxed`). The request may be
    /// annotated (an extension, a header) on the way through.
    fn admit(&self, req: &mut Req) -> Result<Self::Permit, BoxError>;
}

/// Reads what a finished call says about the dependency.
pub trait Read<Res>: Policy {
    /// The verdict on a finished call: by default floodwall's outcome rule
    /// ([`outcome::judge`]) with every answer a success. Layers that
    /// classify answers call [`outcome::judge`] with their `Classify`.
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        outcome::judge(
            &|_: Result<&Res, &BoxError>| floodwall_core::Outcome::Success,
            result,
            caller_limited,
        )
    }
}

/// Takes permits without a request, for the [`Backpressure`] mode.
pub trait Reserve: Policy {
    /// A permit now, or how to wait for one.
    fn reserve(&self) -> Result<Self::Permit, Wait>;
}

/// A wait of `d` from now, for [`Wait::For`].
#[inline]
pub(crate) fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}
