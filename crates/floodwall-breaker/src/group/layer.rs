//! The Tower half of breaker groups: the group as an admission policy for
//! the shared adapter ([`GroupPolicy`], [`GroupPermit`]), the
//! [`BreakerGroupLayer`] and its builder, and the [`BreakerGroupHandle`]
//! on the per-key state.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use floodwall_admit::{Admit, Guarded, Policy, Read};
use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::outcome::{self, Verdict};
use floodwall_core::{BoxError, Classify, ConfigError, RejectKind, Rejected, ResultClassifier};
use metrics::Counter;
use tokio::time::Instant;
use tower_layer::Layer;

use super::{BreakerGroup, BreakerGroupConfig, GROUP_METRIC_PREFIX, GROUP_NAME};
use crate::policy::record;
use crate::{CircuitBreaker, CircuitOpen, Permit, State};

/// The group as an admission policy for the shared Tower adapter: the
/// key's breaker admits the call and records its outcome.
pub struct GroupPolicy<K, X, C> {
    group: BreakerGroup<K>,
    key: X,
    classify: C,
    requests: RequestCounters,
    success: Counter,
    failure: Counter,
    cancelled: Counter,
}

impl<K, X, C> fmt::Debug for GroupPolicy<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupPolicy")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<K, X, C> GroupPolicy<K, X, C> {
    /// The group.
    pub fn group(&self) -> &BreakerGroup<K> {
        &self.group
    }
}

/// A call's permit from its key's breaker (or none for a request without
/// a key).
#[derive(Debug)]
pub struct GroupPermit(Option<(Arc<CircuitBreaker>, Permit)>);

impl<K, X, C> Policy for GroupPolicy<K, X, C>
where
    K: Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    type Permit = GroupPermit;

    fn release(&self, permit: GroupPermit, verdict: Verdict) {
        if let Some((breaker, permit)) = permit.0 {
            record(
                &breaker,
                permit,
                verdict,
                [&self.success, &self.failure, &self.cancelled],
            );
        }
    }
}

impl<K, X, C, Req> Admit<Req> for GroupPolicy<K, X, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    fn admit(&self, req: &mut Req) -> Result<GroupPermit, BoxError> {
        let Some(key) = (self.key)(req) else {
            self.requests.admitted();
            return Ok(GroupPermit(None));
        };
        let breaker = self.group.breaker(&key, Instant::now());
        match breaker.try_acquire_with(Instant::now) {
            Ok(permit) => {
                self.requests.admitted();
                Ok(GroupPermit(Some((breaker, permit))))
            }
            Err(refused) => {
                self.requests.rejected(RejectKind::CircuitOpen);
                Err(Rejected::boxed(CircuitOpen::new(
                    refused.state,
                    refused.retry_after,
                )))
            }
        }
    }
}

impl<K, X, C, Res> Read<Res> for GroupPolicy<K, X, C>
where
    K: Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
{
    fn read(&self, result: Result<&Res, &BoxError>, caller_limited: bool) -> Verdict {
        outcome::judge(&self.classify, result, caller_limited)
    }
}

/// A Tower layer with a circuit breaker per key (host, endpoint, tenant):
/// one bad host is refused while the others serve. The group is bounded
/// ([`BreakerGroup`]); metrics are one series per group, and the per-key
/// state is in the handle.
///
/// Requests for which the key function returns `None` pass without a
/// breaker.
///
/// ```
/// use floodwall_breaker::{BreakerConfig, BreakerGroupConfig, BreakerGroupLayer, State};
/// use floodwall_core::BoxError;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let config = BreakerGroupConfig { breaker: BreakerConfig::consecutive(3), ..Default::default() };
/// // The key: the host the request goes to.
/// let layer = BreakerGroupLayer::new(config, |host: &&'static str| Some(*host))?;
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|host: &'static str| async move {
///     if host == "bad" { Err(BoxError::from("connection refused")) } else { Ok(host) }
/// }));
/// for _ in 0..3 {
///     let _ = svc.clone().oneshot("bad").await;
/// }
/// assert_eq!(handle.state(&"bad"), Some(State::Open));
/// assert!(svc.clone().oneshot("bad").await.unwrap_err().to_string().contains("circuit open"));
/// assert_eq!(svc.clone().oneshot("good").await?, "good");
/// # Ok(())
/// # }
/// ```
pub struct BreakerGroupLayer<K, X, C = ResultClassifier> {
    shared: Arc<GroupPolicy<K, X, C>>,
}

impl<K, X, C> Clone for BreakerGroupLayer<K, X, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, X, C> fmt::Debug for BreakerGroupLayer<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerGroupLayer")
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, X> BreakerGroupLayer<K, X> {
    /// A layer with a breaker per `key(&request)`, named [`GROUP_NAME`].
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn new(config: BreakerGroupConfig, key: X) -> Result<Self, ConfigError> {
        BreakerGroupLayer::builder(config, key).build()
    }
}

impl BreakerGroupLayer<(), ()> {
    /// A builder, to set the name and the classifier.
    pub fn builder<X>(config: BreakerGroupConfig, key: X) -> GroupBuilder<X> {
        GroupBuilder {
            config,
            key,
            classify: ResultClassifier,
            name: Arc::from(GROUP_NAME),
        }
    }
}

impl<K, X, C> BreakerGroupLayer<K, X, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    /// A handle on the group's per-key state.
    pub fn handle(&self) -> BreakerGroupHandle<K> {
        BreakerGroupHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`BreakerGroupLayer`]; from [`BreakerGroupLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct GroupBuilder<X, C = ResultClassifier> {
    config: BreakerGroupConfig,
    key: X,
    classify: C,
    name: Arc<str>,
}

impl<X, C> GroupBuilder<X, C> {
    /// The group's name (its metric label). Default [`GROUP_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How outcomes are read. Default [`ResultClassifier`].
    pub fn classify<C2>(self, classify: C2) -> GroupBuilder<X, C2> {
        GroupBuilder {
            config: self.config,
            key: self.key,
            classify,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn build<K: Hash + Eq + Clone>(self) -> Result<BreakerGroupLayer<K, X, C>, ConfigError> {
        let label = self.name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(metric_name(GROUP_METRIC_PREFIX, "calls_total"), LABEL_NAME => label.clone(), "outcome" => outcome);
        Ok(BreakerGroupLayer {
            shared: Arc::new(GroupPolicy {
                requests: RequestCounters::new(GROUP_METRIC_PREFIX, &self.name),
                success: calls("success"),
                failure: calls("failure"),
                cancelled: calls("cancelled"),
                group: BreakerGroup::named(self.name, self.config)?,
                key: self.key,
                classify: self.classify,
            }),
        })
    }
}

/// The service a [`BreakerGroupLayer`] builds: the shared admission
/// adapter around the group.
pub type BreakerGroupService<S, K, X, C = ResultClassifier> = Guarded<S, GroupPolicy<K, X, C>>;

impl<S, K, X, C> Layer<S> for BreakerGroupLayer<K, X, C> {
    type Service = BreakerGroupService<S, K, X, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded::new(inner, self.shared.clone())
    }
}

/// What a [`BreakerGroupHandle`] reads, whatever the key function and
/// classifier.
trait Target<K>: Send + Sync {
    fn group(&self) -> &BreakerGroup<K>;
}

impl<K, X, C> Target<K> for GroupPolicy<K, X, C>
where
    K: Send + Sync,
    X: Send + Sync,
    C: Send + Sync,
{
    fn group(&self) -> &BreakerGroup<K> {
        &self.group
    }
}

/// Reads and controls a [`BreakerGroupLayer`]'s breakers, per key.
pub struct BreakerGroupHandle<K> {
    shared: Arc<dyn Target<K>>,
}

impl<K> Clone for BreakerGroupHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for BreakerGroupHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerGroupHandle")
            .field("group", self.shared.group())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> BreakerGroupHandle<K> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.shared.group().metrics.name
    }

    /// The state of `key`'s breaker, if it has one.
    pub fn state(&self, key: &K) -> Option<State> {
        self.shared.group().state(key)
    }

    /// Keys with a breaker now.
    pub fn keys(&self) -> usize {
        self.shared.group().len()
    }

    /// Every key whose breaker is not closed, with its state.
    pub fn not_closed(&self) -> Vec<(K, State)> {
        self.shared.group().not_closed()
    }

    /// `key`'s breaker (created if it has none), to force it open, reset
    /// it or read its counts.
    pub fn breaker(&self, key: &K) -> Arc<CircuitBreaker> {
        self.shared.group().breaker(key, Instant::now())
    }

    /// Changes every key's breaker while the group serves (see
    /// [`BreakerGroup::reconfigure`]).
    ///
    /// # Errors
    /// As [`BreakerGroupConfig::validate`].
    pub fn reconfigure(&self, config: BreakerGroupConfig) -> Result<(), ConfigError> {
        self.shared.group().reconfigure(config, Instant::now())
    }

    /// How long until `key`'s breaker probes again, if it is open.
    pub fn open_remaining(&self, key: &K) -> Option<Duration> {
        self.shared.group().get(key)?.open_remaining(Instant::now())
    }
}
