//! Request coalescing (singleflight): many callers of one key, one call.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{BoxError, ConfigError, Deadline, RejectKind, Rejected, Rejection};
use metrics::Counter;
use tower_layer::Layer;
use tower_service::Service;

use crate::singleflight::{Entry, Singleflight};

/// What the followers of a failed call get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum OnError {
    /// The leader's error, shared ([`CoalescedError`]). Default.
    #[default]
    Share,
    /// Each follower calls the inner service itself.
    Retry,
}

/// What a request does when `max_keys` keys are already in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum WhenFull {
    /// Call the inner service on its own, uncoalesced. Default.
    #[default]
    PassThrough,
    /// Refuse it with [`CoalesceFull`] (an `Overloaded` rejection).
    Refuse,
}

/// The configuration of a [`CoalesceLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct CoalesceConfig {
    /// How many keys may be in flight at once. Default 10,000.
    pub max_keys: usize,
    /// What followers of a failed call get. Default [`OnError::Share`].
    pub on_error: OnError,
    /// What a request does over `max_keys`. Default
    /// [`WhenFull::PassThrough`].
    pub when_full: WhenFull,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            on_error: OnError::Share,
            when_full: WhenFull::PassThrough,
        }
    }
}

/// The default name (metric label).
pub const DEFAULT_NAME: &str = "coalesce";

/// The prefix of the layer's metric names:
/// `floodwall_coalesce_requests_total{name, outcome, reason}` (rejected:
/// over `max_keys` with [`WhenFull::Refuse`]) and
/// `floodwall_coalesce_calls_total{name, role}` (`role`: `leader` for a call
/// made, `follower` for a request answered by another's call, `bypass` for
/// a request not coalesced).
pub const METRIC_PREFIX: &str = "coalesce";

struct Shared<K, R> {
    name: Arc<str>,
    config: CoalesceConfig,
    flights: Arc<Singleflight<K, R>>,
    requests: RequestCounters,
    leaders: Counter,
    followers: Counter,
    bypassed: Counter,
}

/// A Tower layer that coalesces requests with the same key: while a call
/// for a key is in flight, later requests with that key wait for its
/// response instead of calling (SPECS.md, "Request coalescing").
///
/// - The leader's future drives the call; if the leader's caller goes away
///   while followers wait, the call moves to a task of its own: **the call
///   goes on for them**, and no follower fails. Once
///   nobody waits for it any more (every caller gone or timed out), the
///   call is cancelled: its future is dropped, so no work runs for nobody.
/// - Every waiter gets a clone of the same response (`Response: Clone`;
///   wrap it in an `Arc` to share a large one).
/// - A failed call's error is shared ([`CoalescedError`]) or each follower
///   calls again itself ([`OnError::Retry`]).
/// - A waiter's own deadline (a [`Deadline`] in its request's extensions)
///   bounds its wait: it fails with
///   [`DeadlineExceeded`](floodwall_core::DeadlineExceeded) then, and the
///   call goes on for the others.
/// - At most `max_keys` keys are in flight; over that a request passes
///   through or is refused ([`WhenFull`]).
///
/// Requests for which `key` returns `None` are not coalesced. Coalesce only
/// what is safe to answer twice with one call: reads.
///
/// ```
/// use floodwall_tail::{CoalesceConfig, CoalesceLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), floodwall_core::BoxError> {
/// // One database read per room id, however many viewers ask at once.
/// let svc = ServiceBuilder::new()
///     .layer(CoalesceLayer::new(CoalesceConfig::default(), |req: &http::Request<u64>| Some(*req.body()))?)
///     .service(service_fn(|req: http::Request<u64>| async move {
///         Ok::<_, floodwall_core::BoxError>(format!("room {}", req.body()))
///     }));
/// assert_eq!(svc.oneshot(http::Request::new(42)).await?, "room 42");
/// # Ok(())
/// # }
/// ```
pub struct CoalesceLayer<X, K, R> {
    key: Arc<X>,
    shared: Arc<Shared<K, R>>,
}

impl<X, K, R> Clone for CoalesceLayer<X, K, R> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<X, K, R> fmt::Debug for CoalesceLayer<X, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<X, K, R> CoalesceLayer<X, K, R>
where
    K: Hash + Eq + Clone + Send + 'static,
{
    /// A layer coalescing requests by `key(&request)`, named
    /// [`DEFAULT_NAME`].
    ///
    /// # Errors
    /// [`ConfigError`] for a `max_keys` of 0.
    pub fn new(config: CoalesceConfig, key: X) -> Result<Self, ConfigError> {
        Self::named(DEFAULT_NAME, config, key)
    }

    /// As [`new`](Self::new), with a name (the metric label).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn named(
        name: impl Into<Arc<str>>,
        config: CoalesceConfig,
        key: X,
    ) -> Result<Self, ConfigError> {
        if config.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        let name: Arc<str> = name.into();
        let role = |role: &'static str| metrics::counter!(metric_name(METRIC_PREFIX, "calls_total"), LABEL_NAME => name.to_string(), "role" => role);
        Ok(Self {
            key: Arc::new(key),
            shared: Arc::new(Shared {
                config,
                flights: Arc::new(Singleflight::default()),
                requests: RequestCounters::new(METRIC_PREFIX, &name),
                leaders: role("leader"),
                followers: role("follower"),
                bypassed: role("bypass"),
                name,
            }),
        })
    }

    /// Keys with a call in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.flights.len()
    }

    /// A cheap handle on the layer's live state.
    pub fn handle(&self) -> CoalesceHandle
    where
        R: Send + Sync + 'static,
        K: Sync,
    {
        CoalesceHandle {
            shared: self.shared.clone(),
        }
    }
}

impl CoalesceLayer<(), (), ()> {
    /// A builder, to set the name: `CoalesceLayer::builder(config, key)`.
    pub fn builder<X>(config: CoalesceConfig, key: X) -> Builder<X> {
        Builder {
            config,
            key,
            name: Arc::from(DEFAULT_NAME),
        }
    }
}

/// Builds a [`CoalesceLayer`]; from [`CoalesceLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct Builder<X> {
    config: CoalesceConfig,
    key: X,
    name: Arc<str>,
}

impl<X> Builder<X> {
    /// The layer's name (its metric label). Default [`DEFAULT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The layer.
    ///
    /// # Errors
    /// As [`CoalesceLayer::new`].
    pub fn build<K, R>(self) -> Result<CoalesceLayer<X, K, R>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + 'static,
    {
        CoalesceLayer::named(self.name, self.config, self.key)
    }
}

/// What a [`CoalesceHandle`] reads, whatever the key and response types.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn in_flight(&self) -> usize;
}

impl<K: Send + Sync, R: Send + Sync> Target for Shared<K, R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn in_flight(&self) -> usize {
        self.flights.len()
    }
}

/// A cheap, cloneable view of a [`CoalesceLayer`]'s live state.
#[derive(Clone)]
pub struct CoalesceHandle {
    shared: Arc<dyn Target>,
}

impl CoalesceHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// Keys with a call in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }
}

impl fmt::Debug for CoalesceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<S, X, K, R> Layer<S> for CoalesceLayer<X, K, R> {
    type Service = Coalesce<S, X, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            key: self.key.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`CoalesceLayer`] builds.
pub struct Coalesce<S, X, K, R> {
    inner: S,
    key: Arc<X>,
    shared: Arc<Shared<K, R>>,
}

impl<S: Clone, X, K, R> Clone for Coalesce<S, X, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, X, K, R> fmt::Debug for Coalesce<S, X, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The response future of [`Coalesce`].
pub type ResponseFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B, X, K> Service<http::Request<B>> for Coalesce<S, X, K, S::Response>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    X: Fn(&http::Request<B>) -> Option<K> + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The instance polled ready makes this call; a clone stays.
        let mut inner = floodwall_core::service::take_ready(&mut self.inner);
        let shared = self.shared.clone();
        let Some(key) = (self.key)(&req) else {
            shared.bypassed.increment(1);
            shared.requests.admitted();
            return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
        };
        let deadline = Deadline::effective(req.extensions());
        match shared.flights.enter(key, shared.config.max_keys) {
            Entry::Follower(follower) => {
                shared.followers.increment(1);
                shared.requests.admitted();
                let on_error = shared.config.on_error;
                Box::pin(async move {
                    match follower.wait(deadline).await? {
                        Ok(response) => Ok(response),
                        Err(_) if on_error == OnError::Retry => {
                            std::future::poll_fn(|cx| inner.poll_ready(cx))
                                .await
                                .map_err(Into::into)?;
                            inner.call(req).await.map_err(Into::into)
                        }
                        Err(shared_error) => Err(BoxError::from(shared_error)),
                    }
                })
            }
            Entry::Full => match shared.config.when_full {
                WhenFull::PassThrough => {
                    shared.bypassed.increment(1);
                    shared.requests.admitted();
                    Box::pin(async move { inner.call(req).await.map_err(Into::into) })
                }
                WhenFull::Refuse => {
                    shared.requests.rejected(RejectKind::Overloaded);
                    let max = shared.config.max_keys;
                    Box::pin(async move { Err(Rejected::boxed(CoalesceFull { max_keys: max })) })
                }
            },
            Entry::Leader(leader) => {
                shared.leaders.increment(1);
                shared.requests.admitted();
                // The leader drives the call itself; if its caller goes away
                // while followers wait, the call goes on for them.
                let call = inner.call(req);
                let lead = leader.run(Box::pin(async move { call.await.map_err(Into::into) }));
                Box::pin(async move {
                    let outcome = match deadline {
                        None => lead.await,
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline.instant(), lead).await {
                                Ok(outcome) => outcome,
                                Err(_) => return Err(in_flight_deadline()),
                            }
                        }
                    };
                    outcome.map_err(BoxError::from)
                })
            }
        }
    }
}

/// The rejection of a caller whose own deadline ran out while it waited.
pub(crate) fn in_flight_deadline() -> BoxError {
    Rejected::boxed(floodwall_core::DeadlineExceeded::new(
        floodwall_core::Phase::InFlight,
        true,
    ))
}

/// A coalesced call's error, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct CoalescedError(pub(crate) Arc<dyn std::error::Error + Send + Sync>);

impl CoalescedError {
    /// The call's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coalesced call failed: {}", self.0)
    }
}

impl std::error::Error for CoalescedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Refused: `max_keys` keys were already in flight and the layer refuses
/// over that ([`WhenFull::Refuse`]). An `Overloaded` rejection (HTTP 503 /
/// gRPC `UNAVAILABLE`).
#[derive(Debug, Clone, Copy)]
pub struct CoalesceFull {
    max_keys: usize,
}

impl fmt::Display for CoalesceFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coalescing is full ({} keys in flight)", self.max_keys)
    }
}

impl std::error::Error for CoalesceFull {}

impl Rejection for CoalesceFull {
    fn kind(&self) -> RejectKind {
        RejectKind::Overloaded
    }
}
