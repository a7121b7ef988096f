//! The server side: a deadline for every inbound request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use floodwall_core::{Arrival, BoxError, ConfigError, Deadline, Phase, Stamp, clock, outcome};
use http::header::HeaderName;
use parking_lot::RwLock;
use tower_layer::Layer;
use tower_service::Service;

use crate::builder::{Builder, DeadlineHandle};
use crate::future::{Metrics, ResponseFuture, ServerFuture};
use crate::scope::{self, ScopedFuture};
use crate::wire::Wire;

/// A server's deadline policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ServerDeadlineConfig {
    /// Where the inbound timeout is read. Default [`Wire::Grpc`].
    pub wire: Wire,
    /// Whether the inbound timeout header is believed. Edge services facing
    /// untrusted clients set this to false (and rely on `max`). Default true.
    pub trust_inbound: bool,
    /// The longest any request may take here, header or not. Default none.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max: Option<Duration>,
}

impl Default for ServerDeadlineConfig {
    fn default() -> Self {
        Self {
            wire: Wire::Grpc,
            trust_inbound: true,
            max: None,
        }
    }
}

/// `trust_inbound` and `max` in one word: bit 0 the trust, the bits above
/// `max` in nanoseconds plus one (0 for none). `max` is at most
/// [`MAX_DURATION`](floodwall_core::config::MAX_DURATION) (about 2^55 ns),
/// so it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed(pub(crate) u64);

impl Packed {
    pub(crate) fn of(config: &ServerDeadlineConfig) -> Packed {
        let max = config.max.map_or(0, |m| {
            u64::try_from(m.as_nanos()).map_or(u64::MAX >> 2, |n| n.min(u64::MAX >> 2)) + 1
        });
        Packed((max << 1) | u64::from(config.trust_inbound))
    }

    fn unpack(self) -> (bool, Option<Duration>) {
        let max = self.0 >> 1;
        (
            self.0 & 1 == 1,
            (max != 0).then(|| Duration::from_nanos(max - 1)),
        )
    }
}

pub(crate) struct ServerShared {
    pub(crate) name: Arc<str>,
    /// Replaced by a reconfiguration (for the handle and `Debug`).
    pub(crate) config: RwLock<ServerDeadlineConfig>,
    /// What a request reads of it, in one word ([`Packed`]): one plain
    /// load per request instead of a lock, and a reconfiguration is seen
    /// whole or not at all.
    pub(crate) packed: AtomicU64,
    /// The wire format (fixed: it names the header).
    pub(crate) wire: Wire,
    header: HeaderName,
    metrics: Metrics,
}

/// The server side: reads the inbound timeout, fixes the request's
/// [`Deadline`] as `arrival + min(header, max)`, refuses a request that
/// arrives with no time left, and drops the handler at the deadline. The
/// handler sees the deadline in its request extensions and, for the
/// outbound calls it makes, in the task scope ([`current`](crate::current)).
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::{ServerDeadlineConfig, ServerDeadlineLayer, current};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap())
///     .service(service_fn(|_req: http::Request<()>| async {
///         // What an outbound call made here would send on:
///         Ok::<_, floodwall_core::BoxError>(current().map(|d| d.remaining(tokio::time::Instant::now())))
///     }));
/// let req = http::Request::builder().header("grpc-timeout", "2S").body(()).unwrap();
/// assert_eq!(svc.oneshot(req).await.unwrap(), Some(Duration::from_secs(2)));
/// # }
/// ```
#[derive(Clone)]
pub struct ServerDeadlineLayer {
    shared: Arc<ServerShared>,
}

impl ServerDeadlineLayer {
    /// A layer for `config`, named [`DEFAULT_NAME`](crate::DEFAULT_NAME).
    ///
    /// # Errors
    /// As [`Builder::build`](crate::Builder).
    pub fn new(config: ServerDeadlineConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name.
    pub fn builder(config: ServerDeadlineConfig) -> Builder<ServerDeadlineConfig> {
        Builder::new(config)
    }

    /// The layer's handle.
    pub fn handle(&self) -> DeadlineHandle {
        DeadlineHandle::server(self.shared.clone())
    }

    pub(crate) fn from_parts(config: ServerDeadlineConfig, name: Arc<str>) -> Self {
        Self {
            shared: Arc::new(ServerShared {
                header: config.wire.header(),
                wire: config.wire.clone(),
                packed: AtomicU64::new(Packed::of(&config).0),
                config: RwLock::new(config),
                metrics: Metrics::new(&name),
                name,
            }),
        }
    }
}

impl fmt::Debug for ServerDeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerDeadlineLayer")
            .field("config", &*self.shared.config.read())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`ServerDeadlineLayer`] builds.
#[derive(Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    shared: Arc<ServerShared>,
}

impl<S: fmt::Debug> fmt::Debug for ServerDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerDeadline")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for ServerDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        // The one clock read of the request's call chain (an outer floodwall
        // layer's, if there is one).
        let now = clock::now();
        let (stamped_arrival, stamped_deadline) = Stamp::times(req.extensions());
        let arrival = stamped_arrival.unwrap_or(Arrival::new(now));
        let (trust_inbound, max) = Packed(shared.packed.load(Ordering::Acquire)).unpack();
        let inbound = if trust_inbound {
            floodwall_core::wire::find_header(req.headers(), &shared.header)
                .and_then(|v| shared.wire.parse(v))
        } else {
            None
        };
        let timeout = match (inbound, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(timeout) = timeout else {
            Stamp::restamp(req.extensions_mut(), Some(arrival), stamped_deadline);
            shared.metrics.requests.admitted();
            return ResponseFuture::open(self.inner.call(req));
        };
        // The caller limited this request if its timeout is shorter than
        // the server's own budget (`max`), or if there is no such budget.
        let mut caller_limited = inbound.is_some_and(|i| max.is_none_or(|m| i < m));
        // An outer layer's deadline (in the extensions or the task scope)
        // is never extended; the earliest one's origin counts.
        let own = Deadline::after(arrival.instant(), timeout);
        let mut deadline = own;
        if let Some(outer) = stamped_deadline
            && outer < deadline
        {
            (deadline, caller_limited) = (outer, true);
        }
        if let Some(outer) = scope::current_scoped()
            && outer.deadline() < deadline
        {
            (deadline, caller_limited) = (outer.deadline(), outer.from_caller());
        }
        // Time left on arrival; no clock arithmetic in the usual case, a
        // request stamped now whose own timeout decides.
        let left = if arrival.instant() == now && deadline == own {
            timeout
        } else {
            deadline.remaining(now)
        };
        shared.metrics.inbound.record(left.as_secs_f64());
        if deadline.is_expired(now) {
            return ResponseFuture::expired(&shared.metrics, Phase::OnArrival);
        }
        Stamp::restamp(req.extensions_mut(), Some(arrival), Some(deadline));
        // In scope for the inner `call` as well as for its future; the
        // layers below decide at `now`.
        let fut = {
            let (scoped, _scope) = scope::enter(deadline, caller_limited);
            let _chain = clock::enter(now);
            let _limit = outcome::limit(caller_limited);
            ScopedFuture::entered(scoped, self.inner.call(req))
        };
        shared.metrics.requests.admitted();
        ResponseFuture::timed(
            fut,
            deadline,
            now,
            &shared.metrics,
            Phase::InFlight,
            caller_limited,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_config_round_trips() {
        for (trust_inbound, max) in [
            (true, None),
            (false, None),
            (true, Some(Duration::ZERO)),
            (false, Some(Duration::from_millis(2_500))),
            (true, Some(floodwall_core::config::MAX_DURATION)),
        ] {
            let config = ServerDeadlineConfig {
                trust_inbound,
                max,
                ..ServerDeadlineConfig::default()
            };
            assert_eq!(Packed::of(&config).unpack(), (trust_inbound, max));
        }
    }
}
