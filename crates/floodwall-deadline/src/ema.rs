//! EMA dynamic timeouts (the ema-timeout algorithm, SPECS.md): a timeout
//! that gives a healthy dependency room and a sick one less.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use floodwall_core::{BoxError, ConfigError, Deadline, Phase, clock, outcome};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::exceeded;

/// The ema-timeout parameters (jiamao/ema-timeout; SPECS.md, "EMA dynamic
/// timeout"): the timeout is `max` while the EMA of latencies is at or
/// under `avg`, `hwm` at or over `hwm`, and linear in between.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct EmaTimeoutConfig {
    /// `Tavg`: the latency EMA under which the timeout is the longest.
    /// Default 60 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub avg: Duration,
    /// `Thwm`: the latency EMA from which the timeout is the shortest, and
    /// that shortest timeout. Default 250 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub hwm: Duration,
    /// `Tmax`: the longest timeout, and the least a failed call counts as.
    /// Default 500 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max: Duration,
    /// `N`, the EMA's smoothing: `r = 2 / (N + 1)`. Default 80.
    pub n: u32,
}

impl Default for EmaTimeoutConfig {
    fn default() -> Self {
        Self {
            avg: Duration::from_millis(60),
            hwm: Duration::from_millis(250),
            max: Duration::from_millis(500),
            n: 80,
        }
    }
}

impl EmaTimeoutConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`ConfigError`] unless `0 < avg < hwm ≤ max ≤`
    /// [`MAX_DURATION`](floodwall_core::config::MAX_DURATION) and `n ≥ 1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        floodwall_core::config::check_duration("max", self.max)?;
        if self.avg.is_zero() {
            return Err(ConfigError::new("avg", "must be above zero"));
        }
        if self.avg >= self.hwm {
            return Err(ConfigError::new("hwm", "must be above avg"));
        }
        if self.hwm > self.max {
            return Err(ConfigError::new("max", "must be at least hwm"));
        }
        if self.n == 0 {
            return Err(ConfigError::new("n", "must be at least 1"));
        }
        Ok(())
    }
}

/// The sans-IO core: the EMA of call latencies and the timeout it gives.
/// One atomic (the EMA's bits), updated by CAS: cheap to share between
/// every call of a route, a host or a key.
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::{EmaTimeout, EmaTimeoutConfig};
///
/// let ms = Duration::from_millis;
/// let ema = EmaTimeout::new(EmaTimeoutConfig { avg: ms(55), hwm: ms(300), max: ms(500), n: 90 })?;
/// assert_eq!(ema.timeout(), ms(500), "no history: the longest timeout");
/// for _ in 0..1000 {
///     ema.record(ms(400), false); // a sick dependency
/// }
/// assert_eq!(ema.timeout(), ms(300), "at or over the high-water mark");
/// # Ok::<(), floodwall_core::ConfigError>(())
/// ```
pub struct EmaTimeout {
    config: EmaTimeoutConfig,
    r: f64,
    /// The EMA in seconds, as `f64` bits; 0 at first.
    ema: AtomicU64,
}

impl EmaTimeout {
    /// A core with no history (EMA 0: the longest timeout).
    ///
    /// # Errors
    /// As [`EmaTimeoutConfig::validate`].
    pub fn new(config: EmaTimeoutConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            r: 2.0 / (f64::from(config.n) + 1.0),
            config,
            ema: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// Records one call: its latency, or for a failed call
    /// `max(latency, Tmax)`: `ema ← r·x + (1 − r)·ema`.
    pub fn record(&self, latency: Duration, failed: bool) {
        let mut x = latency.as_secs_f64();
        if failed {
            x = x.max(self.config.max.as_secs_f64());
        }
        let r = self.r;
        let _ = self
            .ema
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some((r * x + (1.0 - r) * f64::from_bits(bits)).to_bits())
            });
    }

    /// The EMA of latencies now.
    pub fn ema(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.ema.load(Ordering::Acquire)).max(0.0))
    }

    /// The timeout now: `Tmax` while `ema ≤ Tavg`, `Thwm` once
    /// `ema ≥ Thwm`, otherwise `Thwm + p·(Tmax − Thwm)` with
    /// `p = (Thwm − ema)/(Thwm − Tavg)`.
    pub fn timeout(&self) -> Duration {
        let c = &self.config;
        let ema = f64::from_bits(self.ema.load(Ordering::Acquire));
        let (avg, hwm, max) = (
            c.avg.as_secs_f64(),
            c.hwm.as_secs_f64(),
            c.max.as_secs_f64(),
        );
        if ema <= avg {
            return c.max;
        }
        if ema >= hwm {
            return c.hwm;
        }
        let p = (hwm - ema) / (hwm - avg);
        Duration::from_secs_f64(hwm + p * (max - hwm))
    }

    /// The parameters.
    pub fn config(&self) -> EmaTimeoutConfig {
        self.config
    }
}

impl fmt::Debug for EmaTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmaTimeout")
            .field("config", &self.config)
            .field("ema", &self.ema())
            .field("timeout", &self.timeout())
            .finish()
    }
}

/// A Tower layer giving each call the EMA timeout of the calls before it
/// ([`EmaTimeout`]); a deadline already in force (in the request's
/// extensions or the task scope) wins when it is sooner. A call that times
/// out fails with [`DeadlineExceeded`](crate::DeadlineExceeded) and counts
/// as a failure of `Tmax`; other errors count as failures too, successes as
/// their latency. A timeout of a deadline the caller imposed (sooner than
/// the EMA's) says nothing about the dependency (the outcome rule) and is
/// not recorded. One layer shares one EMA between all its calls: build one
/// per route, host or key.
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::{EmaTimeoutConfig, EmaTimeoutLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// # fn main() -> Result<(), floodwall_core::ConfigError> {
/// let layer = EmaTimeoutLayer::new(EmaTimeoutConfig::default())?;
/// let handle = layer.core().clone();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: ()| async { Ok::<_, floodwall_core::BoxError>(()) }));
/// assert_eq!(handle.timeout(), Duration::from_millis(500));
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EmaTimeoutLayer {
    core: Arc<EmaTimeout>,
}

impl EmaTimeoutLayer {
    /// A layer with a fresh core.
    ///
    /// # Errors
    /// As [`EmaTimeoutConfig::validate`].
    pub fn new(config: EmaTimeoutConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            core: Arc::new(EmaTimeout::new(config)?),
        })
    }

    /// A layer over a core shared with others (one EMA for several stacks).
    pub fn with_core(core: Arc<EmaTimeout>) -> Self {
        Self { core }
    }

    /// The core: its EMA and the timeout it gives now.
    pub fn core(&self) -> &Arc<EmaTimeout> {
        &self.core
    }
}

impl<S> Layer<S> for EmaTimeoutLayer {
    type Service = EmaTimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EmaTimeoutService {
            inner,
            core: self.core.clone(),
        }
    }
}

/// The service an [`EmaTimeoutLayer`] builds.
#[derive(Debug, Clone)]
pub struct EmaTimeoutService<S> {
    inner: S,
    core: Arc<EmaTimeout>,
}

impl<S, B> Service<http::Request<B>> for EmaTimeoutService<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = EmaFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let now = clock::now();
        let own = Deadline::after(now, self.core.timeout());
        // A deadline already in force wins when it is sooner; it is then
        // the caller's, and its expiry says nothing about the dependency.
        let outer = Deadline::effective(req.extensions());
        let (deadline, caller_limited) = match outer {
            Some(outer) if outer < own => (outer, true),
            _ => (own, false),
        };
        Deadline::set(req.extensions_mut(), deadline);
        let fut = {
            let _limit = outcome::limit(caller_limited);
            self.inner.call(req)
        };
        EmaFuture {
            fut,
            sleep: None,
            at: deadline.instant(),
            started: now,
            caller_limited,
            core: self.core.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`EmaTimeoutService`]: the call raced
    /// against its timeout, recorded in the EMA when it ends.
    pub struct EmaFuture<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<Sleep>,
        at: Instant,
        started: Instant,
        caller_limited: bool,
        core: Arc<EmaTimeout>,
    }
}

impl<F> fmt::Debug for EmaFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmaFuture")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl<F, R, E> Future for EmaFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            let latency = Instant::now().saturating_duration_since(*this.started);
            this.core.record(latency, out.is_err());
            return Poll::Ready(out.map_err(Into::into));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(*this.at)));
        }
        ready!(this.sleep.as_pin_mut().expect("made above").poll(cx));
        if !*this.caller_limited {
            let latency = Instant::now().saturating_duration_since(*this.started);
            this.core.record(latency, true);
        }
        Poll::Ready(Err(exceeded(Phase::InFlight, *this.caller_limited)))
    }
}
