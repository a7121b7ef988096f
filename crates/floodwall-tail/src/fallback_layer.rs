//! Fallback: degrade to another answer instead of failing.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use floodwall_core::metrics::{LABEL_NAME, RequestCounters, metric_name};
use floodwall_core::{
    BoxError, Classify, ConfigError, Outcome, RejectKind, Rejected, ResultClassifier,
};
use metrics::Counter;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The default name (metric label) of a [`FallbackLayer`].
pub const FALLBACK_NAME: &str = "fallback";

/// The prefix of the fallback layer's metric names:
/// `floodwall_fallback_requests_total{name, outcome, reason}` and
/// `floodwall_fallback_answers_total{name, trigger, result}` (`trigger`:
/// `rejected`, `failure`, `timeout`; `result`: `ok` for a fallback answer
/// given, `failed` for a fallback that failed itself).
pub const FALLBACK_METRIC_PREFIX: &str = "fallback";

/// What a [`FallbackLayer`] answers for. All three by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct FallbackConfig {
    /// A floodwall layer below refused the request (rate limited, shed,
    /// throttled, circuit open, dropped by priority).
    pub on_rejected: bool,
    /// The call failed: an error, or an answer the classifier calls a
    /// failure or overloaded.
    pub on_failure: bool,
    /// The call ran out of time: a `DeadlineExceeded` rejection, or an
    /// answer the classifier calls timed out.
    pub on_timeout: bool,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            on_rejected: true,
            on_failure: true,
            on_timeout: true,
        }
    }
}

impl FallbackConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] when no trigger is on (the layer would do nothing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.on_rejected || self.on_failure || self.on_timeout) {
            return Err(ConfigError::new(
                "on_rejected/on_failure/on_timeout",
                "at least one trigger must be on",
            ));
        }
        Ok(())
    }
}

/// Why the fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A floodwall layer below refused the request, with this kind.
    Rejected(RejectKind),
    /// The call failed.
    Failure,
    /// The call ran out of time.
    Timeout,
}

impl Trigger {
    fn index(self) -> usize {
        match self {
            Self::Rejected(_) => 0,
            Self::Failure => 1,
            Self::Timeout => 2,
        }
    }

    fn label(self) -> &'static str {
        ["rejected", "failure", "timeout"][self.index()]
    }
}

/// What failed, handed to the fallback: the trigger and the answer the
/// call gave (a failed response, or the error).
#[derive(Debug)]
pub struct Cause<R> {
    /// Why the fallback answers.
    pub trigger: Trigger,
    /// What the call gave.
    pub answer: Result<R, BoxError>,
}

/// The trigger `result` fires under `config`, if any (sans-IO: the whole
/// decision of the layer).
///
/// ```
/// use floodwall_core::{BoxError, ResultClassifier};
/// use floodwall_tail::{FallbackConfig, Trigger, fallback_trigger};
///
/// let config = FallbackConfig { on_failure: false, ..FallbackConfig::default() };
/// let failed: Result<u32, BoxError> = Err("connection reset".into());
/// assert_eq!(fallback_trigger(&config, &ResultClassifier, failed.as_ref()), None);
/// let ok: Result<u32, BoxError> = Ok(1);
/// assert_eq!(fallback_trigger(&config, &ResultClassifier, ok.as_ref()), None);
/// ```
pub fn fallback_trigger<R, C>(
    config: &FallbackConfig,
    classify: &C,
    result: Result<&R, &BoxError>,
) -> Option<Trigger>
where
    C: Classify<R, BoxError> + ?Sized,
{
    let trigger = match result {
        Err(err) => match Rejected::find(&**err).map(|r| r.kind()) {
            Some(RejectKind::DeadlineExceeded) => Trigger::Timeout,
            Some(kind) => Trigger::Rejected(kind),
            None => match classify.classify(result) {
                Outcome::TimedOut => Trigger::Timeout,
                _ => Trigger::Failure,
            },
        },
        Ok(_) => match classify.classify(result) {
            Outcome::Success => return None,
            Outcome::TimedOut => Trigger::Timeout,
            Outcome::Failure | Outcome::Overloaded => Trigger::Failure,
        },
    };
    let on = match trigger {
        Trigger::Rejected(_) => config.on_rejected,
        Trigger::Failure => config.on_failure,
        Trigger::Timeout => config.on_timeout,
    };
    on.then_some(trigger)
}

/// The future a [`Fallback`] answers with.
pub type FallbackFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

/// Where a fallback answer comes from: [`value`], [`from_fn`] or
/// [`service`].
pub trait Fallback<Req, R>: Send + Sync + 'static {
    /// What is kept of each request until the call's end, for the fallback
    /// (nothing for a fixed answer; a clone of the request otherwise).
    type Kept: Send + 'static;

    /// Keeps what the fallback needs of `req`, before the call.
    fn keep(&self, req: &Req) -> Self::Kept;

    /// The fallback answer for a call that failed with `cause`.
    fn answer(&self, kept: Self::Kept, cause: &Cause<R>) -> FallbackFuture<R>;
}

/// A fixed answer, cloned: [`value`].
#[derive(Debug, Clone)]
pub struct Value<R>(R);

/// Falls back to a clone of `response`.
pub fn value<R: Clone + Send + Sync + 'static>(response: R) -> Value<R> {
    Value(response)
}

impl<Req, R: Clone + Send + Sync + 'static> Fallback<Req, R> for Value<R> {
    type Kept = ();

    fn keep(&self, _: &Req) {}

    fn answer(&self, (): (), _: &Cause<R>) -> FallbackFuture<R> {
        let r = self.0.clone();
        Box::pin(async move { Ok(r) })
    }
}

/// A function of the request and the cause: [`from_fn`].
#[derive(Debug, Clone)]
pub struct FromFn<F>(F);

/// Falls back to `f(request, cause)`; requests are cloned before each call
/// (they must be `Clone`).
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn(f)
}

impl<Req, R, F> Fallback<Req, R> for FromFn<F>
where
    Req: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(Req, &Cause<R>) -> Result<R, BoxError> + Send + Sync + 'static,
{
    type Kept = Req;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, req: Req, cause: &Cause<R>) -> FallbackFuture<R> {
        let answer = (self.0)(req, cause);
        Box::pin(async move { answer })
    }
}

/// Another service: [`service`].
#[derive(Debug, Clone)]
pub struct ServiceFallback<S>(S);

/// Falls back to calling `backup` with a clone of the request (requests
/// must be `Clone`).
pub fn service<S>(backup: S) -> ServiceFallback<S> {
    ServiceFallback(backup)
}

impl<Req, S> Fallback<Req, S::Response> for ServiceFallback<S>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    type Kept = Req;

    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn answer(&self, req: Req, _: &Cause<S::Response>) -> FallbackFuture<S::Response> {
        let mut backup = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| backup.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            backup.call(req).await.map_err(Into::into)
        })
    }
}

/// The fallback itself failed: its error is the source, and the call's
/// own failure is kept ([`original`](Self::original)). Never hidden: the
/// fallback's failures are counted
/// (`floodwall_fallback_answers_total{result="failed"}`) and returned.
#[derive(Debug)]
pub struct FallbackFailed {
    trigger: Trigger,
    original: Option<BoxError>,
    fallback: BoxError,
}

impl FallbackFailed {
    /// Why the fallback was asked.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// The call's error, when it failed with one (not for a failed
    /// response).
    pub fn original(&self) -> Option<&BoxError> {
        self.original.as_ref()
    }

    /// The fallback's error.
    pub fn fallback_error(&self) -> &BoxError {
        &self.fallback
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the fallback failed ({}) after ", self.fallback)?;
        match &self.original {
            Some(e) => write!(f, "the call failed: {e}"),
            None => write!(f, "a failed answer ({})", self.trigger.label()),
        }
    }
}

impl std::error::Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.fallback)
    }
}

struct Shared<F, C> {
    name: Arc<str>,
    config: parking_lot::RwLock<FallbackConfig>,
    fallback: F,
    classify: C,
    requests: RequestCounters,
    /// `[trigger][ok, failed]`.
    answers: [[Counter; 2]; 3],
    reconfigurations: Counter,
}

/// A Tower layer that answers from a fallback when a call is refused by a
/// floodwall layer below, fails, or runs out of time ([`FallbackConfig`]
/// says which), instead of failing: a fixed answer ([`value`]), a function
/// of the request and the cause ([`from_fn`]), or another service
/// ([`service`]).
///
/// - Failures are read by a [`Classify`] ([`ResultClassifier`] by default:
///   every error; `HttpClassifier` reads statuses too).
/// - The fallback's own failure is returned as [`FallbackFailed`], with the
///   call's error kept, and counted: nothing is hidden.
/// - Successful answers pass through untouched; only a fallback that keeps
///   something of the request ([`from_fn`], [`service`]) clones it.
///
/// ```
/// use floodwall_core::BoxError;
/// use floodwall_tail::{FallbackConfig, FallbackLayer, fallback};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let recommendations = service_fn(|_user: u64| async {
///     Err::<Vec<&str>, BoxError>("recommender down".into())
/// });
/// let svc = FallbackLayer::new(FallbackConfig::default(), fallback::value(vec!["top-10"]))?
///     .layer(recommendations);
/// assert_eq!(svc.oneshot(7).await?, vec!["top-10"]);
/// # Ok(())
/// # }
/// ```
pub struct FallbackLayer<F, C = ResultClassifier> {
    shared: Arc<Shared<F, C>>,
}

impl<F, C> Clone for FallbackLayer<F, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<F, C> fmt::Debug for FallbackLayer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.shared.name)
            .field("config", &*self.shared.config.read())
            .finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<F> {
    /// A layer answering from `fallback` on the triggers of `config`,
    /// reading failures with [`ResultClassifier`].
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn new(config: FallbackConfig, fallback: F) -> Result<Self, ConfigError> {
        FallbackLayer::builder(config, fallback).build()
    }
}

impl FallbackLayer<(), ()> {
    /// A builder, to set the name and the classifier.
    pub fn builder<F>(config: FallbackConfig, fallback: F) -> FallbackBuilder<F> {
        FallbackBuilder {
            config,
            fallback,
            classify: ResultClassifier,
            name: Arc::from(FALLBACK_NAME),
        }
    }
}

impl<F: Send + Sync + 'static, C: Send + Sync + 'static> FallbackLayer<F, C> {
    /// A cheap handle on the layer's configuration.
    pub fn handle(&self) -> FallbackHandle {
        FallbackHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Builds a [`FallbackLayer`]; from [`FallbackLayer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build()"]
pub struct FallbackBuilder<F, C = ResultClassifier> {
    config: FallbackConfig,
    fallback: F,
    classify: C,
    name: Arc<str>,
}

impl<F, C> FallbackBuilder<F, C> {
    /// The layer's name (its metric label). Default [`FALLBACK_NAME`].
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How answers are read (which are failures). Default
    /// [`ResultClassifier`].
    pub fn classify<C2>(self, classify: C2) -> FallbackBuilder<F, C2> {
        FallbackBuilder {
            config: self.config,
            fallback: self.fallback,
            classify,
            name: self.name,
        }
    }

    /// The layer. Metric handles are registered now.
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn build(self) -> Result<FallbackLayer<F, C>, ConfigError> {
        self.config.validate()?;
        let name = self.name;
        let answer = |trigger: &'static str, result: &'static str| metrics::counter!(metric_name(FALLBACK_METRIC_PREFIX, "answers_total"), LABEL_NAME => name.to_string(), "trigger" => trigger, "result" => result);
        let pair = |trigger| [answer(trigger, "ok"), answer(trigger, "failed")];
        Ok(FallbackLayer {
            shared: Arc::new(Shared {
                config: parking_lot::RwLock::new(self.config),
                fallback: self.fallback,
                classify: self.classify,
                requests: RequestCounters::new(FALLBACK_METRIC_PREFIX, &name),
                answers: [pair("rejected"), pair("failure"), pair("timeout")],
                reconfigurations: metrics::counter!(metric_name(FALLBACK_METRIC_PREFIX, "reconfigurations_total"), LABEL_NAME => name.to_string()),
                name,
            }),
        })
    }
}

/// What a [`FallbackHandle`] reads, whatever the fallback.
trait Target: Send + Sync {
    fn name(&self) -> &str;
    fn config(&self) -> FallbackConfig;
    fn set(&self, config: FallbackConfig);
}

impl<F: Send + Sync, C: Send + Sync> Target for Shared<F, C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> FallbackConfig {
        *self.config.read()
    }

    fn set(&self, config: FallbackConfig) {
        *self.config.write() = config;
        self.reconfigurations.increment(1);
    }
}

/// A cheap, cloneable handle on a [`FallbackLayer`].
#[derive(Clone)]
pub struct FallbackHandle {
    shared: Arc<dyn Target>,
}

impl FallbackHandle {
    /// The layer's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The triggers in force.
    pub fn config(&self) -> FallbackConfig {
        self.shared.config()
    }

    /// Changes the triggers while the layer serves, validated as
    /// [`FallbackLayer::new`] validates (a refused change changes
    /// nothing); calls under way finish under the triggers they started
    /// with.
    ///
    /// # Errors
    /// As [`FallbackConfig::validate`].
    pub fn reconfigure(&self, config: FallbackConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.shared.set(config);
        Ok(())
    }
}

impl fmt::Debug for FallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackHandle")
            .field("name", &self.name())
            .field("config", &self.config())
            .finish()
    }
}

impl<S, F, C> Layer<S> for FallbackLayer<F, C> {
    type Service = FallbackService<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service a [`FallbackLayer`] builds.
pub struct FallbackService<S, F, C = ResultClassifier> {
    inner: S,
    shared: Arc<Shared<F, C>>,
}

impl<S: Clone, F, C> Clone for FallbackService<S, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, F, C> fmt::Debug for FallbackService<S, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, F, C, Req> Service<Req> for FallbackService<S, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fallback<Req, S::Response>,
    C: Classify<S::Response, BoxError> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FallbackResponseFuture<S::Future, Req, S::Response, F, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Not ready is not a failure the fallback answers: readiness is the
        // inner service's (backpressure stays backpressure).
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let kept = self.shared.fallback.keep(&req);
        FallbackResponseFuture {
            state: FallbackState::Calling {
                fut: self.inner.call(req),
                kept: Some(kept),
            },
            config: *self.shared.config.read(),
            shared: self.shared.clone(),
            _req: PhantomData,
        }
    }
}

pin_project! {
    #[project = FallbackStateProj]
    enum FallbackState<Fut, K, R> {
        Calling { #[pin] fut: Fut, kept: Option<K> },
        Falling { fut: FallbackFuture<R>, trigger: Trigger, original: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`FallbackService`].
    pub struct FallbackResponseFuture<Fut, Req, R, F, C>
    where
        F: Fallback<Req, R>,
    {
        #[pin]
        state: FallbackState<Fut, F::Kept, R>,
        config: FallbackConfig,
        shared: Arc<Shared<F, C>>,
        _req: PhantomData<fn(Req)>,
    }
}

impl<Fut, Req, R, F, C> fmt::Debug for FallbackResponseFuture<Fut, Req, R, F, C>
where
    F: Fallback<Req, R>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackResponseFuture")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<Fut, E, R, F, C, Req> Future for FallbackResponseFuture<Fut, Req, R, F, C>
where
    Fut: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    F: Fallback<Req, R>,
    C: Classify<R, BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                FallbackStateProj::Calling { fut, kept } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let shared = &**this.shared;
                    let Some(trigger) =
                        fallback_trigger(this.config, &shared.classify, result.as_ref())
                    else {
                        shared.requests.admitted();
                        return Poll::Ready(result);
                    };
                    let kept = kept.take().expect("polled after the call's end");
                    let cause = Cause {
                        trigger,
                        answer: result,
                    };
                    let fut = shared.fallback.answer(kept, &cause);
                    // The call's error is kept for the report if the
                    // fallback fails too; a failed response is dropped.
                    let original = cause.answer.err();
                    this.state.set(FallbackState::Falling {
                        fut,
                        trigger,
                        original,
                    });
                }
                FallbackStateProj::Falling {
                    fut,
                    trigger,
                    original,
                } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let shared = &**this.shared;
                    let trigger = *trigger;
                    shared.requests.admitted();
                    return Poll::Ready(match result {
                        Ok(answer) => {
                            shared.answers[trigger.index()][0].increment(1);
                            Ok(answer)
                        }
                        Err(fallback) => {
                            shared.answers[trigger.index()][1].increment(1);
                            tracing::warn!(name = %shared.name, trigger = trigger.label(), error = %fallback, "the fallback failed");
                            Err(Box::new(FallbackFailed {
                                trigger,
                                original: original.take(),
                                fallback,
                            }))
                        }
                    });
                }
            }
        }
    }
}
