use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::metrics::{LABEL_NAME, metric_name};
use floodwall_core::wire::{
    ADMISSION_LEVEL_HEADER, PRIORITY_HEADER, UPSTREAM_DROPS_HEADER, find_header, remove_header,
    set_header,
};
use floodwall_core::{BoxError, ConfigError, Priority, Rejected};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Prioritized;

/// The default name of a priority client layer (metric label).
pub const DEFAULT_CLIENT_NAME: &str = "priority_client";

static LEVEL_HEADER: HeaderName = HeaderName::from_static(ADMISSION_LEVEL_HEADER);
static PRIORITY: HeaderName = HeaderName::from_static(PRIORITY_HEADER);
static DROPS: HeaderName = HeaderName::from_static(UPSTREAM_DROPS_HEADER);

const ADMIT_ALL: u16 = Priority::LOWEST.index();

/// How a [`PriorityClientLayer`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PriorityClientConfig {
    /// Drop locally what the downstream's last advertised admission level
    /// would refuse (DAGOR collaborative admission). Default `true`.
    pub collaborative: bool,
    /// How long an advertised level (other than "admit all") is believed
    /// without being confirmed by a newer response; after that, requests go
    /// out again and the next response tells the current level. Default 1 s
    /// (one DAGOR window).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub level_ttl: Duration,
}

impl Default for PriorityClientConfig {
    fn default() -> Self {
        Self {
            collaborative: true,
            level_ttl: Duration::from_secs(1),
        }
    }
}

struct ClientShared {
    config: PriorityClientConfig,
    base: Instant,
    level: AtomicU16,
    /// When `level` was last confirmed, in nanoseconds since `base`.
    learned: AtomicU64,
    /// Local drops not yet reported to the downstream.
    unreported: AtomicU64,
    local_drops: AtomicU64,
    unprioritized: Priority,
    name: Arc<str>,
    dropped: Counter,
}

impl ClientShared {
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn learn(&self, level: Priority) {
        let level = level.index();
        if level != ADMIT_ALL {
            self.learned.store(self.nanos(Instant::now()), Relaxed);
        }
        self.level.store(level, Relaxed);
    }
}

/// The client half of priority admission, for calls to one downstream
/// service (one layer per downstream: a tonic `Channel`, a hyper client to
/// one host).
///
/// - **Propagation.** Every outbound request carries its priority in
///   [`PRIORITY_HEADER`]: the request's [`Priority`] extension if it has one,
///   else the task's [`current`](crate::current) priority (set by the
///   server layers while handling the inbound request).
/// - **Collaborative admission.** The layer remembers the admission level
///   the downstream advertised on its latest response
///   ([`ADMISSION_LEVEL_HEADER`]) and fails at once, with a local
///   [`Prioritized`] rejection, requests that level would refuse: they are
///   never sent. The count of such drops rides on the next request that is
///   sent ([`UPSTREAM_DROPS_HEADER`]), so the downstream's controller still
///   counts them as arrivals. A level is believed for
///   [`level_ttl`](PriorityClientConfig::level_ttl) after the last response
///   confirmed it.
///
/// # Clone
/// The layer and every service it builds share the remembered level.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use floodwall_core::{Priority, Rejected, RejectKind};
/// use floodwall_priority::{PriorityClientConfig, PriorityClientLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let layer = PriorityClientLayer::new(PriorityClientConfig::default())?;
/// let downstream = service_fn(|req: http::Request<()>| async move {
///     assert_eq!(req.headers()["x-floodwall-priority"], "1-20");
///     let mut res = http::Response::new(());
///     res.headers_mut().insert("x-floodwall-admission-level", "1-50".parse().unwrap());
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// let client = ServiceBuilder::new().layer(layer.clone()).service(downstream);
///
/// let call = |b, u| {
///     let mut req = http::Request::new(());
///     req.extensions_mut().insert(Priority::new(b, u).unwrap());
///     client.clone().oneshot(req)
/// };
/// call(1, 20).await?; // the response says: level (1, 50)
/// let err = call(1, 80).await.unwrap_err(); // below it: never sent
/// assert_eq!(Rejected::find(&*err).unwrap().kind(), RejectKind::Prioritized);
/// assert_eq!(layer.handle().local_drops(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PriorityClientLayer {
    shared: Arc<ClientShared>,
}

impl PriorityClientLayer {
    /// A layer named [`DEFAULT_CLIENT_NAME`]; unprioritized requests are
    /// treated as [`Priority::LOWEST`], as the server layer does by default.
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub fn new(config: PriorityClientConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    /// A builder, to set the name and the priority assumed for requests
    /// without one.
    pub fn builder(config: PriorityClientConfig) -> ClientBuilder {
        ClientBuilder {
            config,
            name: Arc::from(DEFAULT_CLIENT_NAME),
            unprioritized: Priority::LOWEST,
        }
    }

    /// A handle on the remembered level and the local drops.
    pub fn handle(&self) -> PriorityClientHandle {
        PriorityClientHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`PriorityClientLayer`]; made by
/// [`PriorityClientLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    config: PriorityClientConfig,
    name: Arc<str>,
    unprioritized: Priority,
}

impl ClientBuilder {
    /// The metric label and handle name. Default [`DEFAULT_CLIENT_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The priority assumed for requests without one (match the
    /// downstream's [`unprioritized`](crate::Builder::unprioritized)).
    /// Default [`Priority::LOWEST`].
    pub fn unprioritized(mut self, priority: Priority) -> Self {
        self.unprioritized = priority;
        self
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero `level_ttl` (turn `collaborative` off
    /// instead to never drop locally).
    pub fn build(self) -> Result<PriorityClientLayer, ConfigError> {
        floodwall_core::config::check_duration("level_ttl", self.config.level_ttl)?;
        if self.config.level_ttl.is_zero() {
            return Err(ConfigError::new(
                "level_ttl",
                "must be > 0 (set collaborative = false to never drop locally)",
            )
            .with_value("0s"));
        }
        let dropped = metrics::counter!(
            metric_name(crate::METRIC_PREFIX, "local_dropped_total"),
            LABEL_NAME => self.name.to_string()
        );
        Ok(PriorityClientLayer {
            shared: Arc::new(ClientShared {
                config: self.config,
                base: Instant::now(),
                level: AtomicU16::new(ADMIT_ALL),
                learned: AtomicU64::new(0),
                unreported: AtomicU64::new(0),
                local_drops: AtomicU64::new(0),
                unprioritized: self.unprioritized,
                name: self.name,
                dropped,
            }),
        })
    }
}

/// Reads a [`PriorityClientLayer`]'s state; cheap to clone, shared with
/// the layer and its services.
#[derive(Clone)]
pub struct PriorityClientHandle {
    shared: Arc<ClientShared>,
}

impl PriorityClientHandle {
    /// The layer's name (its metric label).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The downstream's last advertised admission level
    /// ([`Priority::LOWEST`] until it says otherwise).
    pub fn level(&self) -> Priority {
        Priority::from_index(self.shared.level.load(Relaxed))
    }

    /// Requests dropped locally so far.
    pub fn local_drops(&self) -> u64 {
        self.shared.local_drops.load(Relaxed)
    }
}

impl fmt::Debug for PriorityClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityClientHandle")
            .field("name", &self.shared.name)
            .field("level", &self.level())
            .finish()
    }
}

impl fmt::Debug for PriorityClientLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityClientLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .field("level", &self.handle().level())
            .finish()
    }
}

impl<S> Layer<S> for PriorityClientLayer {
    type Service = PriorityClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityClient {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`PriorityClientLayer`] builds.
#[derive(Clone)]
pub struct PriorityClient<S> {
    inner: S,
    shared: Arc<ClientShared>,
}

impl<S> PriorityClient<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the layer, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for PriorityClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityClient")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, B, RB> Service<Request<B>> for PriorityClient<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let priority = Priority::of(req.extensions()).or_else(crate::scope::current);
        if let Some(p) = priority {
            set_header(req.headers_mut(), &PRIORITY, p.header_value());
        }
        if shared.config.collaborative {
            let level = shared.level.load(Relaxed);
            let effective = priority.unwrap_or(shared.unprioritized);
            if effective.index() > level {
                let age = shared
                    .nanos(Instant::now())
                    .saturating_sub(shared.learned.load(Relaxed));
                if u128::from(age) < shared.config.level_ttl.as_nanos() {
                    shared.unreported.fetch_add(1, Relaxed);
                    shared.local_drops.fetch_add(1, Relaxed);
                    shared.dropped.increment(1);
                    let level = Priority::from_index(level);
                    return ClientFuture {
                        state: ClientState::Dropped {
                            rejection: Some(Prioritized::new(effective, level, true)),
                        },
                    };
                }
            }
            // Only this client's own count may go downstream.
            remove_header(req.headers_mut(), &DROPS);
            if shared.unreported.load(Relaxed) > 0 {
                let n = shared.unreported.swap(0, Relaxed);
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                req.headers_mut()
                    .insert(DROPS.clone(), HeaderValue::from(n));
            }
        }
        ClientFuture {
            state: ClientState::Sent {
                fut: self.inner.call(req),
                shared: self.shared.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`PriorityClient`].
    pub struct ClientFuture<F> {
        #[pin]
        state: ClientState<F>,
    }
}

pin_project! {
    #[project = ClientStateProj]
    enum ClientState<F> {
        Sent { #[pin] fut: F, shared: Arc<ClientShared> },
        Dropped { rejection: Option<Prioritized> },
    }
}

impl<F, RB, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ClientStateProj::Sent { fut, shared } => {
                let out = ready!(fut.poll(cx)).map_err(Into::into);
                if shared.config.collaborative {
                    let level = match &out {
                        Ok(res) => find_header(res.headers(), &LEVEL_HEADER)
                            .and_then(|v| Priority::parse(v.as_bytes()).ok()),
                        // A rejection straight from an in-process server stack.
                        Err(e) => Rejected::find(&**e).and_then(Rejected::admission_level),
                    };
                    if let Some(level) = level {
                        shared.learn(level);
                    }
                }
                Poll::Ready(out)
            }
            ClientStateProj::Dropped { rejection } => {
                let rejection = rejection.take().expect("polled after completion");
                Poll::Ready(Err(Rejected::boxed(rejection)))
            }
        }
    }
}

impl<F> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}
