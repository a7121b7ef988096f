use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodwall_core::wire::{PRIORITY_HEADER, UPSTREAM_DROPS_HEADER, remove_header, set_header};
use floodwall_core::{ConfigError, Priority};
use http::header::{HeaderMap, HeaderName};
use http::{Extensions, Request};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

static PRIORITY: HeaderName = HeaderName::from_static(PRIORITY_HEADER);
static DROPS: HeaderName = HeaderName::from_static(UPSTREAM_DROPS_HEADER);

/// Business priorities by route or gRPC method: lower is more important.
///
/// A path is looked up exactly first (`/room.Room/Send`), then by the
/// longest matching prefix (`/room.Room/`), then falls back to the default.
///
/// ```
/// use floodwall_priority::BusinessTable;
///
/// let table = BusinessTable::new(10)
///     .route("/room.Room/Pay", 0)
///     .prefix("/room.Room/", 3)
///     .prefix("/static/", 50);
/// assert_eq!(table.lookup("/room.Room/Pay"), 0);
/// assert_eq!(table.lookup("/room.Room/Join"), 3);
/// assert_eq!(table.lookup("/other"), 10);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BusinessTable {
    /// The business priority of paths that match nothing.
    pub default: u8,
    /// Exact paths.
    pub routes: HashMap<String, u8>,
    /// Path prefixes; the longest match wins.
    pub prefixes: Vec<(String, u8)>,
}

impl BusinessTable {
    /// A table giving every path `default`.
    pub fn new(default: u8) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// `path` (exactly) has business priority `business`.
    pub fn route(mut self, path: impl Into<String>, business: u8) -> Self {
        self.routes.insert(path.into(), business);
        self
    }

    /// Paths starting with `prefix` have business priority `business`.
    pub fn prefix(mut self, prefix: impl Into<String>, business: u8) -> Self {
        self.prefixes.push((prefix.into(), business));
        self
    }

    /// The business priority of `path`.
    pub fn lookup(&self, path: &str) -> u8 {
        if let Some(&b) = self.routes.get(path) {
            return b;
        }
        self.prefixes
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |&(_, b)| b)
    }
}

/// How the edge assigns priorities (see [`AssignPriorityLayer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AssignConfig {
    /// Business priority by route.
    pub business: BusinessTable,
    /// The request header holding the user id (e.g. `x-user-id`), if any.
    /// [`AssignPriorityLayer::with_user_id`] takes a function instead.
    pub user_header: Option<String>,
    /// The user priority of requests without a user id. Default 127 (least
    /// important).
    pub anonymous_user: u8,
    /// The secret the hourly hash keys derive from. Give every entry
    /// service the same seed so one user gets one priority everywhere;
    /// `None` (the default) draws a random seed per process.
    pub key_seed: Option<u64>,
    /// How often the user-priority hash key changes, on boundaries of the
    /// wall clock (default 1 h): who is favoured rotates, so no user is
    /// always last.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub rotation: Duration,
}

impl Default for AssignConfig {
    fn default() -> Self {
        Self {
            business: BusinessTable::default(),
            user_header: None,
            anonymous_user: Priority::MAX_USER,
            key_seed: None,
            rotation: Duration::from_secs(3600),
        }
    }
}

type UserIdFn = dyn Fn(&HeaderMap, &Extensions) -> Option<u64> + Send + Sync;

enum UserSource {
    None,
    Header(HeaderName),
    Custom(Arc<UserIdFn>),
}

struct Assigner {
    business: BusinessTable,
    user: UserSource,
    anonymous_user: u8,
    seed: u64,
    rotation_ns: u128,
    /// Wall-clock time at `started`, in nanoseconds since the Unix epoch:
    /// read once, so rotation follows the tokio clock afterwards.
    wall_at_start: u128,
    started: Instant,
}

/// SplitMix64's finalizer: a fast, well-mixing bijection on `u64`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Assigner {
    /// The hash key in force at `now`.
    fn key(&self, now: Instant) -> u64 {
        let wall = self.wall_at_start + now.saturating_duration_since(self.started).as_nanos();
        let epoch = (wall / self.rotation_ns) as u64;
        mix(self.seed ^ mix(epoch))
    }

    /// A user's priority under the key in force at `now`.
    fn user_priority_of_bytes(&self, id: &[u8], now: Instant) -> u8 {
        // FNV-1a, seeded with the key, then mixed.
        let mut h = 0xCBF2_9CE4_8422_2325 ^ self.key(now);
        for &b in id {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        (mix(h) >> 57) as u8
    }

    fn user_priority_of_number(&self, id: u64, now: Instant) -> u8 {
        (mix(self.key(now) ^ mix(id)) >> 57) as u8
    }

    fn assign<B>(&self, req: &Request<B>) -> Priority {
        let business = self.business.lookup(req.uri().path());
        let user = match &self.user {
            UserSource::None => None,
            UserSource::Header(name) => floodwall_core::wire::find_header(req.headers(), name)
                .map(|v| self.user_priority_of_bytes(v.as_bytes(), Instant::now())),
            UserSource::Custom(f) => f(req.headers(), req.extensions())
                .map(|id| self.user_priority_of_number(id, Instant::now())),
        };
        let user = user.unwrap_or(self.anonymous_user);
        Priority::new(business, user).unwrap_or(Priority::LOWEST)
    }
}

/// Assigns priorities at the entry service (DAGOR): business priority from
/// a [`BusinessTable`] keyed by the request path (the gRPC method for tonic),
/// user priority from a keyed hash of the user id whose key rotates every
/// [`rotation`](AssignConfig::rotation).
///
/// The priority goes into the request's extensions, replaces any
/// [`PRIORITY_HEADER`] the caller sent (callers of an entry service are
/// untrusted), and becomes the task's [`current`](crate::current)
/// priority while the inner service runs, so every downstream call made
/// through [`PriorityClientLayer`](crate::PriorityClientLayer) carries it.
/// An inbound [`UPSTREAM_DROPS_HEADER`] is removed too.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use floodwall_core::Priority;
/// use floodwall_priority::{AssignConfig, AssignPriorityLayer, BusinessTable};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let config = AssignConfig {
///     business: BusinessTable::new(5).route("/pay", 0),
///     user_header: Some("x-user-id".into()),
///     key_seed: Some(7),
///     ..Default::default()
/// };
/// let service = ServiceBuilder::new()
///     .layer(AssignPriorityLayer::new(config)?)
///     .service(service_fn(|req: http::Request<()>| async move {
///         let p = Priority::of(req.extensions()).unwrap();
///         assert_eq!(Some(p), floodwall_priority::current());
///         Ok::<_, std::convert::Infallible>(p)
///     }));
/// let req = http::Request::builder()
///     .uri("/pay")
///     .header("x-user-id", "alice")
///     .header("x-floodwall-priority", "0-0") // forged by the caller: replaced
///     .body(())?;
/// let p = service.oneshot(req).await?;
/// assert_eq!(p.business(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AssignPriorityLayer {
    assigner: Arc<Assigner>,
}

impl AssignPriorityLayer {
    /// A layer for `config`.
    ///
    /// # Errors
    /// A zero rotation, an anonymous user priority above 127, or a user
    /// header that is not a valid header name.
    pub fn new(config: AssignConfig) -> Result<Self, ConfigError> {
        floodwall_core::config::check_duration("rotation", config.rotation)?;
        if config.rotation.is_zero() {
            return Err(ConfigError::new("rotation", "must be above zero"));
        }
        if config.anonymous_user > Priority::MAX_USER {
            return Err(ConfigError::new("anonymous_user", "must be at most 127"));
        }
        let user = match &config.user_header {
            None => UserSource::None,
            Some(name) => UserSource::Header(
                HeaderName::try_from(name.as_str())
                    .map_err(|_| ConfigError::new("user_header", "is not a valid header name"))?,
            ),
        };
        let seed = config
            .key_seed
            .unwrap_or_else(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));
        let wall_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            assigner: Arc::new(Assigner {
                business: config.business,
                user,
                anonymous_user: config.anonymous_user,
                seed,
                rotation_ns: config.rotation.as_nanos(),
                wall_at_start,
                started: Instant::now(),
            }),
        })
    }

    /// Takes user ids from `f` (say, a numeric id from an authenticated
    /// session in the extensions) instead of a header.
    pub fn with_user_id(
        mut self,
        f: impl Fn(&HeaderMap, &Extensions) -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        let a = &*self.assigner;
        self.assigner = Arc::new(Assigner {
            business: a.business.clone(),
            user: UserSource::Custom(Arc::new(f)),
            anonymous_user: a.anonymous_user,
            seed: a.seed,
            rotation_ns: a.rotation_ns,
            wall_at_start: a.wall_at_start,
            started: a.started,
        });
        self
    }

    /// The user priority `user_id` gets now.
    pub fn user_priority(&self, user_id: &[u8]) -> u8 {
        self.assigner
            .user_priority_of_bytes(user_id, Instant::now())
    }
}

impl fmt::Debug for AssignPriorityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignPriorityLayer")
            .field("business", &self.assigner.business)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AssignPriorityLayer {
    type Service = AssignPriority<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AssignPriority {
            inner,
            assigner: self.assigner.clone(),
        }
    }
}

/// The service an [`AssignPriorityLayer`] builds.
#[derive(Clone)]
pub struct AssignPriority<S> {
    inner: S,
    assigner: Arc<Assigner>,
}

impl<S> AssignPriority<S> {
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

impl<S: fmt::Debug> fmt::Debug for AssignPriority<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignPriority")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AssignPriority<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = crate::scope::Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let priority = self.assigner.assign(&req);
        Priority::stamp(req.extensions_mut(), priority);
        set_header(req.headers_mut(), &PRIORITY, priority.header_value());
        remove_header(req.headers_mut(), &DROPS);
        crate::scope::scope(priority, self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(seed: u64, rotation: Duration) -> AssignPriorityLayer {
        AssignPriorityLayer::new(AssignConfig {
            key_seed: Some(seed),
            rotation,
            user_header: Some("x-user".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn user_priorities_are_stable_within_a_period_and_rotate() {
        let hour = Duration::from_secs(3600);
        let l = layer(42, hour);
        let users: Vec<String> = (0..256).map(|i| format!("user-{i}")).collect();
        let now: Vec<u8> = users
            .iter()
            .map(|u| l.user_priority(u.as_bytes()))
            .collect();
        assert!(now.iter().all(|&u| u <= 127));
        // Same seed, another layer: same priorities (same period).
        let again = layer(42, hour);
        let same: Vec<u8> = users
            .iter()
            .map(|u| again.user_priority(u.as_bytes()))
            .collect();
        assert_eq!(now, same);
        // Spread over the range.
        let distinct: std::collections::HashSet<u8> = now.iter().copied().collect();
        assert!(
            distinct.len() > 80,
            "256 users hit {} of 128 values",
            distinct.len()
        );
        // An hour later, the key has changed: most users moved.
        tokio::time::advance(hour).await;
        let later: Vec<u8> = users
            .iter()
            .map(|u| l.user_priority(u.as_bytes()))
            .collect();
        let moved = now.iter().zip(&later).filter(|(a, b)| a != b).count();
        assert!(moved > 200, "only {moved} of 256 users changed priority");
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |c: AssignConfig| AssignPriorityLayer::new(c).unwrap_err().field();
        assert_eq!(
            bad(AssignConfig {
                rotation: Duration::ZERO,
                ..Default::default()
            }),
            "rotation"
        );
        assert_eq!(
            bad(AssignConfig {
                anonymous_user: 128,
                ..Default::default()
            }),
            "anonymous_user"
        );
        assert_eq!(
            bad(AssignConfig {
                user_header: Some("bad header".into()),
                ..Default::default()
            }),
            "user_header"
        );
    }
}
