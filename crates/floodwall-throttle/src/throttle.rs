use std::fmt;
use std::time::Duration;

use floodwall_core::{ConfigError, Criticality};
use parking_lot::RwLock;
use tokio::time::Instant;

use floodwall_core::random::{Random, SplitMix};
use floodwall_core::window::TrailingCounts;

/// The counters of a class's window: attempts, and attempts the backend
/// accepted.
const REQUESTS: usize = 0;
const ACCEPTS: usize = 1;

/// The knobs of adaptive throttling, with the SRE book's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ThrottleConfig {
    /// The trailing window the counts cover. Default 120 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// How many buckets the window is kept in. Default 120 (one a second).
    pub buckets: u32,
    /// The multiplier `K`: the client sends until requests reach `K` times
    /// accepts. Default 2.0 (lower is more aggressive).
    pub k: f64,
    /// Below this many requests per second over the window nothing is
    /// rejected (Envoy's `rps_threshold`). Default 0: off.
    pub min_rps: f64,
    /// The most the rejection probability may be (Envoy's
    /// `max_rejection_probability`). Default 1.0: off.
    pub max_probability: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            buckets: 120,
            k: 2.0,
            min_rps: 0.0,
            max_probability: 1.0,
        }
    }
}

impl ThrottleConfig {
    /// The longest window: one day.
    pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

    /// The most buckets a window may be kept in.
    pub const MAX_BUCKETS: u32 = 65_536;

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError`] for a zero window or bucket count, more buckets than
    /// nanoseconds in the window, `K < 1`, or a negative or non-finite value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be > 0").with_value("0s"));
        }
        if self.buckets == 0 {
            return Err(ConfigError::new("buckets", "must be > 0").with_value(0));
        }
        if self.window.as_nanos() < u128::from(self.buckets) {
            return Err(ConfigError::new(
                "buckets",
                "must leave each bucket at least 1 ns of the window",
            )
            .with_value(self.buckets));
        }
        if self.window > Self::MAX_WINDOW {
            return Err(ConfigError::new("window", "must be at most a day")
                .with_value(format_args!("{:?}", self.window)));
        }
        if self.buckets > Self::MAX_BUCKETS {
            return Err(
                ConfigError::new("buckets", "must be at most 65,536").with_value(self.buckets)
            );
        }
        if !(self.k.is_finite() && self.k >= 1.0) {
            return Err(ConfigError::new("k", "must be finite and at least 1").with_value(self.k));
        }
        if !(self.min_rps.is_finite() && self.min_rps >= 0.0) {
            return Err(
                ConfigError::new("min_rps", "must be finite and not negative")
                    .with_value(self.min_rps),
            );
        }
        if !(0.0..=1.0).contains(&self.max_probability) {
            return Err(
                ConfigError::new("max_probability", "must be between 0 and 1")
                    .with_value(self.max_probability),
            );
        }
        Ok(())
    }
}

/// An admitted attempt, to [`accept`](AdaptiveThrottle::accept) (once) when
/// the backend accepts it.
#[derive(Debug, PartialEq)]
pub struct Ticket {
    bucket: u64,
    /// The window layout it was counted in: a ticket from before a change
    /// of window is not counted in the new one.
    layout: u64,
    class: Option<Criticality>,
    probability: f64,
}

impl Ticket {
    /// The rejection probability the attempt was admitted under.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

/// The statistics a decision was made from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleStats {
    /// Attempts in the window, including those rejected locally.
    pub requests: u64,
    /// Attempts the backend accepted.
    pub accepts: u64,
    /// The rejection probability they give.
    pub probability: f64,
}

/// Google SRE adaptive client throttling: the sans-IO core.
///
/// Over a trailing window (default 120 s, kept in buckets) the client counts
/// `requests` (every attempt, including those it rejected itself) and
/// `accepts` (attempts the backend accepted: anything that is not an
/// overload signal). Each new request is rejected locally with probability
///
/// ```text
/// p = max(0, (requests − K·accepts) / (requests + 1))
/// ```
///
/// so that once the backend starts refusing, the client sends it only about
/// `K` times what it accepts. Statistics are kept separately per
/// [`Criticality`] (and for requests without one). The optional guards are
/// off by default: below `min_rps` nothing is rejected; `p` is capped at
/// `max_probability`. The random source is injectable ([`Random`]).
///
/// Recording is lock-free (two `fetch_add`s); crossing into a new bucket
/// expires old buckets under a lock, once per bucket.
///
/// ```
/// use std::time::Duration;
/// use floodwall_throttle::{AdaptiveThrottle, SplitMix, ThrottleConfig};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let throttle = AdaptiveThrottle::with_rng(ThrottleConfig::default(), SplitMix::new(7), t0)?;
/// // 100 attempts, 10 accepted: p = (100 − 2·10) / 101.
/// for i in 0..100 {
///     throttle.record_request(t0, None);
///     if i < 10 {
///         throttle.record_accept(t0, None);
///     }
/// }
/// let p = throttle.stats(t0, None).probability;
/// assert!((p - 80.0 / 101.0).abs() < 1e-12);
/// # Ok::<(), floodwall_throttle::ConfigError>(())
/// ```
pub struct AdaptiveThrottle<R = SplitMix> {
    /// The counts and the configuration, replaced (the counts only when the
    /// window changes) by a reconfiguration; a decision reads them under
    /// one read lock.
    live: RwLock<Live>,
    epoch: Instant,
    rng: R,
}

/// What a reconfiguration may replace.
struct Live {
    classes: [TrailingCounts<2>; 5],
    config: ThrottleConfig,
    bucket_ns: u64,
    /// Bumped when the window's layout (length, buckets) changes.
    layout: u64,
}

impl Live {
    #[inline]
    fn bucket(&self, epoch: Instant, now: Instant) -> u64 {
        let d = now.saturating_duration_since(epoch);
        let ns = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        ns / self.bucket_ns
    }

    #[inline]
    fn counts(&self, class: Option<Criticality>) -> &TrailingCounts<2> {
        &self.classes[class.map_or(4, Criticality::index)]
    }

    fn probability(&self, requests: u64, accepts: u64) -> f64 {
        let c = &self.config;
        if c.min_rps > 0.0 && (requests as f64) < c.min_rps * c.window.as_secs_f64() {
            return 0.0;
        }
        let p = (requests as f64 - c.k * accepts as f64) / (requests as f64 + 1.0);
        p.clamp(0.0, c.max_probability)
    }
}

impl AdaptiveThrottle<SplitMix> {
    /// A throttle with `config`, randomness from the clock, clock starting
    /// now.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn new(config: ThrottleConfig) -> Result<Self, ConfigError> {
        Self::with_rng(config, SplitMix::from_entropy(), Instant::now())
    }
}

impl<R: Random> AdaptiveThrottle<R> {
    /// A throttle with `config`, random draws from `rng`, clock starting at
    /// `epoch`.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn with_rng(config: ThrottleConfig, rng: R, epoch: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let buckets = config.buckets as usize;
        let bucket_ns = (config.window.as_nanos() / u128::from(config.buckets)) as u64;
        Ok(Self {
            live: RwLock::new(Live {
                classes: std::array::from_fn(|_| TrailingCounts::new(buckets)),
                config,
                bucket_ns,
                layout: 0,
            }),
            epoch,
            rng,
        })
    }

    /// Requests, accepts and the rejection probability now for `class`.
    pub fn stats(&self, now: Instant, class: Option<Criticality>) -> ThrottleStats {
        let live = self.live.read();
        let [requests, accepts] = live.counts(class).totals(live.bucket(self.epoch, now));
        ThrottleStats {
            requests,
            accepts,
            probability: live.probability(requests, accepts),
        }
    }

    /// Counts a request of `class` at `now` and decides it: refused with
    /// the rejection probability `p` (drawn), or admitted.
    ///
    /// # Errors
    /// The probability it was refused with.
    #[inline]
    pub fn admit(&self, now: Instant, class: Option<Criticality>) -> Result<(), f64> {
        self.admit_ticket(now, class).map(|_| ())
    }

    /// As [`admit`](Self::admit), returning the ticket to report the
    /// outcome with ([`accept`](Self::accept) or [`forget`](Self::forget)).
    ///
    /// # Errors
    /// The probability it was refused with.
    #[inline]
    pub fn admit_ticket(&self, now: Instant, class: Option<Criticality>) -> Result<Ticket, f64> {
        let live = self.live.read();
        let bucket = live.bucket(self.epoch, now);
        let counts = live.counts(class);
        let [requests, accepts] = counts.totals(bucket);
        counts.add(bucket, REQUESTS);
        let p = live.probability(requests, accepts);
        if p > 0.0 && self.rng.next_f64() < p {
            Err(p)
        } else {
            Ok(Ticket {
                bucket,
                layout: live.layout,
                class,
                probability: p,
            })
        }
    }

    /// The backend accepted the request `ticket` was issued for.
    #[inline]
    pub fn accept(&self, ticket: Ticket) {
        let live = self.live.read();
        if ticket.layout == live.layout {
            live.counts(ticket.class).add(ticket.bucket, ACCEPTS);
        }
    }

    /// The request `ticket` was issued for says nothing about the backend
    /// (cancelled, refused by a layer below): it is taken out of the counts.
    pub fn forget(&self, ticket: Ticket) {
        let live = self.live.read();
        if ticket.layout == live.layout {
            live.counts(ticket.class).remove(ticket.bucket, REQUESTS);
        }
    }

    /// Counts a request of `class` at `now` without deciding it.
    pub fn record_request(&self, now: Instant, class: Option<Criticality>) {
        let live = self.live.read();
        live.counts(class)
            .add(live.bucket(self.epoch, now), REQUESTS);
    }

    /// Counts an accept of `class` at `now`.
    #[inline]
    pub fn record_accept(&self, now: Instant, class: Option<Criticality>) {
        let live = self.live.read();
        live.counts(class)
            .add(live.bucket(self.epoch, now), ACCEPTS);
    }

    /// The configuration in force.
    pub fn config(&self) -> ThrottleConfig {
        self.live.read().config
    }

    /// Applies `config` from now on, validated as [`with_rng`](Self::with_rng)
    /// validates (a refused configuration changes nothing). `k`, `min_rps`
    /// and `max_probability` apply to the next decision, with the counts
    /// kept; a window of another length or bucket count starts its counts
    /// afresh (the probability builds up again as it fills), and outcomes
    /// of requests admitted before the change are not counted in it.
    ///
    /// # Errors
    /// As [`ThrottleConfig::validate`].
    pub fn reconfigure(&self, config: ThrottleConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut live = self.live.write();
        if live.config.window != config.window || live.config.buckets != config.buckets {
            let buckets = config.buckets as usize;
            live.classes = std::array::from_fn(|_| TrailingCounts::new(buckets));
            live.bucket_ns = (config.window.as_nanos() / u128::from(config.buckets)) as u64;
            live.layout += 1;
        }
        live.config = config;
        Ok(())
    }
}

impl<R> fmt::Debug for AdaptiveThrottle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("config", &self.live.read().config)
            .finish_non_exhaustive()
    }
}
