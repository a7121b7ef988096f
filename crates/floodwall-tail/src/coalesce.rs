//! Request coalescing (singleflight): many callers of one key, one call.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{BoxError, ConfigError, Deadline, RejectKind, Rejected, Rejection};
use hashbrown::HashMap;
use metrics::Counter;
use parking_lot::Mutex;
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

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

type Outcome<R> = Option<Result<R, CoalescedError>>;

/// One call in flight: where its outcome is published (the map and the
/// call's leader each hold a sender; followers subscribe).
type Flight<R> = watch::Sender<Outcome<R>>;

struct Shared<K, R> {
    name: Arc<str>,
    config: CoalesceConfig,
    flights: Mutex<HashMap<K, Flight<R>>>,
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
                flights: Mutex::new(HashMap::new()),
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
        self.shared.flights.lock().len()
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
        self.flights.lock().len()
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
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        let Some(key) = (self.key)(&req) else {
            shared.bypassed.increment(1);
            shared.requests.admitted();
            return Box::pin(async move { inner.call(req).await.map_err(Into::into) });
        };
        let deadline = req.extensions().get::<Deadline>().copied();
        let mut flights = shared.flights.lock();
        if let Some(flight) = flights.get(&key) {
            let rx = flight.subscribe();
            drop(flights);
            shared.followers.increment(1);
            shared.requests.admitted();
            let on_error = shared.config.on_error;
            return Box::pin(async move {
                match wait(rx, deadline).await? {
                    Ok(response) => Ok(response),
                    Err(_) if on_error == OnError::Retry => {
                        std::future::poll_fn(|cx| inner.poll_ready(cx))
                            .await
                            .map_err(Into::into)?;
                        inner.call(req).await.map_err(Into::into)
                    }
                    Err(shared_error) => Err(BoxError::from(shared_error)),
                }
            });
        }
        if flights.len() >= shared.config.max_keys {
            drop(flights);
            return match shared.config.when_full {
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
            };
        }
        let (flight, _) = watch::channel(None);
        flights.insert(key.clone(), flight.clone());
        drop(flights);
        shared.leaders.increment(1);
        shared.requests.admitted();
        // The leader drives the call itself; if its caller goes away while
        // followers wait, the call moves to a task of its own and goes on
        // for them (`Lead`'s drop).
        let call = inner.call(req);
        let lead = Lead {
            fut: Some(Box::pin(async move { call.await.map_err(Into::into) })),
            flight,
            shared,
            key: Some(key),
        };
        Box::pin(async move {
            let outcome = match deadline {
                None => lead.await,
                Some(deadline) => match tokio::time::timeout_at(deadline.instant(), lead).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        return Err(Rejected::boxed(floodwall_core::DeadlineExceeded::new(
                            floodwall_core::Phase::InFlight,
                            true,
                        )));
                    }
                },
            };
            outcome.map_err(BoxError::from)
        })
    }
}

/// The leader's side of a call: drives the inner future and publishes its
/// outcome to the followers. Dropped before the end, it hands the call to
/// a task while followers wait, or cancels it when none does.
struct Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fut: Option<Call<R>>,
    flight: Flight<R>,
    shared: Arc<Shared<K, R>>,
    key: Option<K>,
}

// Nothing in a `Lead` is pinned in place: its call is boxed.
impl<K, R> Unpin for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
}

/// A call in flight, its error boxed.
type Call<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<K, R> Future for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    type Output = Result<R, CoalescedError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let fut = this.fut.as_mut().expect("polled after its end");
        let outcome =
            std::task::ready!(fut.as_mut().poll(cx)).map_err(|e| CoalescedError(Arc::from(e)));
        this.fut = None;
        let key = this.key.take().expect("published once");
        publish(&this.shared, &key, &this.flight, &outcome);
        Poll::Ready(outcome)
    }
}

/// Frees `key` and hands `outcome` to the followers waiting, if any.
fn publish<K: Hash + Eq, R: Clone>(
    shared: &Shared<K, R>,
    key: &K,
    flight: &Flight<R>,
    outcome: &Result<R, CoalescedError>,
) {
    remove_if_same(&mut shared.flights.lock(), key, flight);
    // Followers subscribe under the map's lock: none comes after this.
    if flight.receiver_count() > 0 {
        flight.send_replace(Some(outcome.clone()));
    }
}

impl<K, R> Drop for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let (Some(fut), Some(key)) = (self.fut.take(), self.key.take()) else {
            return; // finished and published
        };
        let mut flights = self.shared.flights.lock();
        if self.flight.receiver_count() == 0 {
            // Nobody waits: the call is cancelled (its future dropped here).
            remove_if_same(&mut flights, &key, &self.flight);
            return;
        }
        drop(flights);
        // Followers wait: the call goes on for them in a task of its own.
        // (Without a runtime, shutting down, the followers see the call
        // abandoned.)
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(go_on(fut, self.flight.clone(), self.shared.clone(), key));
        }
    }
}

/// Finishes a call its leader left, for the followers; cancels it (drops
/// its future) once none of them waits any more.
async fn go_on<K: Hash + Eq, R: Clone>(
    mut fut: Call<R>,
    flight: Flight<R>,
    shared: Arc<Shared<K, R>>,
    key: K,
) {
    let outcome = loop {
        tokio::select! {
            outcome = &mut fut => break outcome,
            () = flight.closed() => {
                // Every waiter went away. New followers subscribe under the
                // map's lock, so under it "nobody waits" is final.
                let mut flights = shared.flights.lock();
                if flight.receiver_count() == 0 {
                    remove_if_same(&mut flights, &key, &flight);
                    return;
                }
            }
        }
    };
    let outcome = outcome.map_err(|e| CoalescedError(Arc::from(e)));
    publish(&shared, &key, &flight, &outcome);
}

/// Frees `key` if it still names `flight` (and not a later call's flight).
fn remove_if_same<K: Hash + Eq, R>(
    flights: &mut HashMap<K, Flight<R>>,
    key: &K,
    flight: &Flight<R>,
) {
    if flights.get(key).is_some_and(|f| f.same_channel(flight)) {
        flights.remove(key);
    }
}

/// Waits for a flight's outcome, at most until `deadline`.
async fn wait<R: Clone>(
    mut rx: watch::Receiver<Outcome<R>>,
    deadline: Option<Deadline>,
) -> Result<Result<R, CoalescedError>, BoxError> {
    let outcome = async {
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => Ok(outcome.clone().expect("waited for it")),
            // The call's task ended without publishing (the runtime is
            // shutting down).
            Err(_) => Err(BoxError::from("the coalesced call was abandoned")),
        }
    };
    match deadline {
        None => outcome.await,
        Some(deadline) => match tokio::time::timeout_at(deadline.instant(), outcome).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Rejected::boxed(floodwall_core::DeadlineExceeded::new(
                floodwall_core::Phase::InFlight,
                true,
            ))),
        },
    }
}

/// A coalesced call's error, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct CoalescedError(Arc<dyn std::error::Error + Send + Sync>);

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
