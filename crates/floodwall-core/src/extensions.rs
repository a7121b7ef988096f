use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// When a request reached the outermost floodwall layer.
///
/// The outermost layer inserts it into the request's extensions (if no layer
/// has yet); queueing-time measurements (CoDel, priority admission) measure
/// from it, so time spent in outer layers counts as waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arrival(Instant);

impl Arrival {
    /// An arrival at `instant`.
    pub const fn new(instant: Instant) -> Self {
        Self(instant)
    }

    /// An arrival now (`tokio::time::Instant::now()`, so paused test time
    /// applies).
    pub fn now() -> Self {
        Self(Instant::now())
    }

    /// The arrival instant.
    pub const fn instant(self) -> Instant {
        self.0
    }

    /// Time since arrival as of `now` (zero if `now` is earlier).
    pub fn elapsed(self, now: Instant) -> Duration {
        now.saturating_duration_since(self.0)
    }

    /// Stamps `extensions` with an arrival at `now` unless one is present,
    /// and returns the arrival in force. The arrival goes in the request's
    /// [`Stamp`], with its deadline: one allocation for both.
    pub fn stamp(extensions: &mut http::Extensions, now: Instant) -> Self {
        if let Some(stamp) = extensions.get_mut::<Stamp>() {
            return *stamp.arrival.get_or_insert(Self(now));
        }
        extensions.insert(Stamp {
            arrival: Some(Self(now)),
            deadline: None,
        });
        Self(now)
    }

    /// The arrival stamped on a request, if any: the one in its [`Stamp`],
    /// else an `Arrival` inserted on its own (by code written before the
    /// stamp).
    ///
    /// ```
    /// use floodwall_core::Arrival;
    /// use tokio::time::Instant;
    ///
    /// let mut req = http::Request::new(());
    /// assert_eq!(Arrival::of(req.extensions()), None);
    /// let now = Instant::now();
    /// Arrival::stamp(req.extensions_mut(), now);
    /// assert_eq!(Arrival::of(req.extensions()).map(Arrival::instant), Some(now));
    /// ```
    #[inline]
    pub fn of(extensions: &http::Extensions) -> Option<Self> {
        match extensions.get::<Stamp>() {
            Some(Stamp {
                arrival: Some(a), ..
            }) => Some(*a),
            _ => extensions.get::<Arrival>().copied(),
        }
    }
}

/// What floodwall layers stamp on a request, kept in **one** extension so
/// that a request costs one allocation however many layers stamp it: when
/// it arrived ([`Arrival`]) and by when it must be answered ([`Deadline`]).
///
/// Read and write it through [`Arrival::of`], [`Arrival::stamp`],
/// [`Deadline::of`] and [`Deadline::set`]; a `Deadline` or `Arrival`
/// inserted into the extensions on its own is still read when the stamp has
/// none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    arrival: Option<Arrival>,
    deadline: Option<Deadline>,
}

impl Stamp {
    /// What is stamped on a request: its [`Stamp`], with an `Arrival` or
    /// `Deadline` inserted on their own filling what the stamp lacks.
    #[inline]
    pub fn of(extensions: &http::Extensions) -> Stamp {
        if extensions.is_empty() {
            return Stamp::default();
        }
        let mut stamp = extensions.get::<Stamp>().copied().unwrap_or_default();
        if stamp.arrival.is_none() {
            stamp.arrival = extensions.get::<Arrival>().copied();
        }
        if stamp.deadline.is_none() {
            stamp.deadline = extensions.get::<Deadline>().copied();
        }
        stamp
    }

    /// A stamp of `arrival` and `deadline`, to [`insert`](Self::insert).
    pub const fn new(arrival: Option<Arrival>, deadline: Option<Deadline>) -> Stamp {
        Stamp { arrival, deadline }
    }

    /// Puts this stamp on a request in place of any stamped before: one
    /// allocation (none more when it replaces a stamp).
    pub fn insert(self, extensions: &mut http::Extensions) {
        extensions.insert(self);
    }

    /// The arrival stamped, if any.
    pub const fn arrival(&self) -> Option<Arrival> {
        self.arrival
    }

    /// The deadline stamped, if any.
    pub const fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

/// The instant by which a request must be answered.
///
/// Travels in request extensions and, for outbound calls made while handling
/// a request, in a scope set around each poll (see `floodwall-deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `instant`.
    pub const fn new(instant: Instant) -> Self {
        Self(instant)
    }

    /// A deadline `timeout` after `start`. A timeout too large for the clock
    /// clamps to the furthest representable instant instead of panicking.
    pub fn after(start: Instant, timeout: Duration) -> Self {
        match start.checked_add(timeout) {
            Some(at) => Self(at),
            None => Self(far_future(start)),
        }
    }

    /// The deadline instant.
    pub const fn instant(self) -> Instant {
        self.0
    }

    /// Time left as of `now`; zero once expired.
    pub fn remaining(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed at `now` (a deadline equal to `now`
    /// has passed: no time remains).
    pub fn is_expired(self, now: Instant) -> bool {
        now >= self.0
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.0 < self.0 { other } else { self }
    }

    /// The deadline stamped on a request, if any: the one in its [`Stamp`],
    /// else a `Deadline` inserted on its own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_core::Deadline;
    /// use tokio::time::Instant;
    ///
    /// let mut req = http::Request::new(());
    /// let d = Deadline::after(Instant::now(), Duration::from_millis(200));
    /// Deadline::set(req.extensions_mut(), d);
    /// assert_eq!(Deadline::of(req.extensions()), Some(d));
    /// ```
    #[inline]
    pub fn of(extensions: &http::Extensions) -> Option<Self> {
        match extensions.get::<Stamp>() {
            Some(Stamp {
                deadline: Some(d), ..
            }) => Some(*d),
            _ => extensions.get::<Deadline>().copied(),
        }
    }

    /// Stamps `deadline` on a request, in the request's [`Stamp`] next to
    /// its arrival; it replaces any deadline stamped before (and hides one
    /// inserted on its own from [`Deadline::of`]).
    pub fn set(extensions: &mut http::Extensions, deadline: Deadline) {
        match extensions.get_mut::<Stamp>() {
            Some(stamp) => stamp.deadline = Some(deadline),
            None => {
                extensions.insert(Stamp {
                    arrival: None,
                    deadline: Some(deadline),
                });
            }
        }
    }
}

/// The furthest instant after `start` that the clock can represent, found
/// by halving the step: `Instant` has no public maximum.
fn far_future(start: Instant) -> Instant {
    let mut at = start;
    let mut step = Duration::from_secs(u64::MAX / 4);
    while step >= Duration::from_secs(1) {
        if let Some(next) = at.checked_add(step) {
            at = next;
        } else {
            step /= 2;
        }
    }
    at
}

/// A request's priority for admission control (DAGOR style).
///
/// Two parts, compared lexicographically: `business` (from a table keyed by
/// route or method; **lower is more important**) and `user` (a hash of the
/// user id in `0..=127`; lower is more important). The derived order is that
/// compound order, so `a < b` means "`a` is more important than `b`".
///
/// ```
/// use floodwall_core::Priority;
///
/// let checkout = Priority::new(1, 90)?;
/// let browse = Priority::new(5, 3)?;
/// assert!(checkout < browse, "business priority decides first");
/// assert!(Priority::new(8, 200).is_err(), "user priority is 0..=127");
/// # Ok::<(), floodwall_core::InvalidPriority>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    business: u8,
    user: u8,
}

impl Priority {
    /// The largest user priority value.
    pub const MAX_USER: u8 = 127;

    /// The most important priority: `(0, 0)`.
    pub const HIGHEST: Priority = Priority {
        business: 0,
        user: 0,
    };

    /// The least important priority: `(255, 127)`.
    pub const LOWEST: Priority = Priority {
        business: u8::MAX,
        user: Self::MAX_USER,
    };

    /// A priority; fails if `user` is above [`MAX_USER`](Self::MAX_USER).
    pub const fn new(business: u8, user: u8) -> Result<Self, InvalidPriority> {
        if user > Self::MAX_USER {
            return Err(InvalidPriority { user });
        }
        Ok(Self { business, user })
    }

    /// The business priority (lower is more important).
    pub const fn business(self) -> u8 {
        self.business
    }

    /// The user priority, `0..=127` (lower is more important).
    pub const fn user(self) -> u8 {
        self.user
    }
}

/// `business-user`, the wire form of [`PRIORITY_HEADER`](crate::wire::PRIORITY_HEADER)
/// and [`ADMISSION_LEVEL_HEADER`](crate::wire::ADMISSION_LEVEL_HEADER).
impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.business, self.user)
    }
}

/// Parses the `business-user` wire form: two decimal numbers of at most three
/// digits each, `business` in `0..=255`, `user` in `0..=127`, joined by `-`,
/// nothing else (no spaces, signs or leading `+`).
///
/// ```
/// use floodwall_core::Priority;
///
/// let p: Priority = "3-87".parse()?;
/// assert_eq!((p.business(), p.user()), (3, 87));
/// assert_eq!(p.to_string(), "3-87");
/// assert!("3-128".parse::<Priority>().is_err());
/// assert!(" 3-1".parse::<Priority>().is_err());
/// # Ok::<(), floodwall_core::ParsePriorityError>(())
/// ```
impl std::str::FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl Priority {
    /// Parses the `business-user` wire form from raw header bytes (see the
    /// [`FromStr`](std::str::FromStr) impl).
    ///
    /// # Errors
    /// [`ParsePriorityError`] for anything but the exact form.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParsePriorityError> {
        fn number(digits: &[u8], max: u8) -> Option<u8> {
            if digits.is_empty() || digits.len() > 3 {
                return None;
            }
            let mut n: u16 = 0;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + u16::from(d - b'0');
            }
            u8::try_from(n).ok().filter(|&n| n <= max)
        }
        let dash = bytes
            .iter()
            .position(|&b| b == b'-')
            .ok_or(ParsePriorityError(()))?;
        let business = number(&bytes[..dash], u8::MAX).ok_or(ParsePriorityError(()))?;
        let user = number(&bytes[dash + 1..], Self::MAX_USER).ok_or(ParsePriorityError(()))?;
        Ok(Self { business, user })
    }

    /// The wire form (`business-user`) as a header value, built without
    /// formatting machinery (one allocation, for the value itself).
    ///
    /// ```
    /// use floodwall_core::Priority;
    ///
    /// assert_eq!(Priority::new(3, 87)?.header_value(), "3-87");
    /// assert_eq!(Priority::LOWEST.header_value(), "255-127");
    /// # Ok::<(), floodwall_core::InvalidPriority>(())
    /// ```
    pub fn header_value(self) -> http::HeaderValue {
        fn push(buf: &mut [u8; 7], len: &mut usize, n: u8) {
            let digits = [n / 100, n / 10 % 10, n % 10];
            let skip = if n >= 100 {
                0
            } else if n >= 10 {
                1
            } else {
                2
            };
            for &d in &digits[skip..] {
                buf[*len] = b'0' + d;
                *len += 1;
            }
        }
        let mut buf = [0u8; 7];
        let mut len = 0;
        push(&mut buf, &mut len, self.business);
        buf[len] = b'-';
        len += 1;
        push(&mut buf, &mut len, self.user);
        http::HeaderValue::from_bytes(&buf[..len])
            .expect("digits and a dash are a valid header value")
    }

    /// The priority's position in the compound order, `business * 128 +
    /// user`: 0 for [`HIGHEST`](Self::HIGHEST), 32767 for
    /// [`LOWEST`](Self::LOWEST).
    pub const fn index(self) -> u16 {
        (self.business as u16) * 128 + self.user as u16
    }

    /// The priority at `index` in the compound order (indices above 32767
    /// saturate to [`LOWEST`](Self::LOWEST)).
    pub const fn from_index(index: u16) -> Self {
        if index > Self::LOWEST.index() {
            return Self::LOWEST;
        }
        Self {
            business: (index / 128) as u8,
            user: (index % 128) as u8,
        }
    }
}

/// Returned when a priority's wire form (`business-user`) does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsePriorityError(());

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid priority: expected `business-user`, business 0..=255, user 0..=127")
    }
}

impl std::error::Error for ParsePriorityError {}

/// The four request criticality classes of Google's SRE practice, most
/// important first: adaptive throttling keeps separate statistics per class,
/// and criticality-based shedding drops every lower class before a higher
/// one.
///
/// The derived order is by importance: `CriticalPlus < Critical <
/// SheddablePlus < Sheddable` ("less" is more important), like [`Priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Criticality {
    /// The most critical: user-visible and must not fail.
    CriticalPlus,
    /// The default for user-visible requests.
    #[default]
    Critical,
    /// Batch or background work that tolerates some unavailability.
    SheddablePlus,
    /// Work that may be dropped freely under load.
    Sheddable,
}

impl Criticality {
    /// All classes, most important first.
    pub const ALL: [Criticality; 4] = [
        Criticality::CriticalPlus,
        Criticality::Critical,
        Criticality::SheddablePlus,
        Criticality::Sheddable,
    ];

    /// The class's position in [`ALL`](Self::ALL) (0 = most important).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short, stable, lower-case name, used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::CriticalPlus => "critical_plus",
            Criticality::Critical => "critical",
            Criticality::SheddablePlus => "sheddable_plus",
            Criticality::Sheddable => "sheddable",
        }
    }
}

/// Returned by [`Priority::new`] for a user priority above 127.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPriority {
    user: u8,
}

impl fmt::Display for InvalidPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user priority {} is out of range 0..={}",
            self.user,
            Priority::MAX_USER
        )
    }
}

impl std::error::Error for InvalidPriority {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_arithmetic() {
        let now = Instant::now();
        let d = Deadline::after(now, Duration::from_millis(100));
        assert_eq!(d.remaining(now), Duration::from_millis(100));
        assert!(!d.is_expired(now));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(d.is_expired(Instant::now()), "equal to now is expired");
        assert_eq!(d.remaining(Instant::now()), Duration::ZERO);
        let earlier = Deadline::after(now, Duration::from_millis(5));
        assert_eq!(d.min(earlier), earlier);
        assert_eq!(earlier.min(d), earlier);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeouts_clamp() {
        let now = Instant::now();
        let d = Deadline::after(now, Duration::MAX);
        assert!(d.instant() > now + Duration::from_secs(86_400 * 365 * 100));
    }

    #[tokio::test(start_paused = true)]
    async fn arrival_stamp_keeps_the_first() {
        let mut ext = http::Extensions::new();
        let t0 = Instant::now();
        assert_eq!(Arrival::stamp(&mut ext, t0).instant(), t0);
        tokio::time::advance(Duration::from_millis(3)).await;
        let later = Instant::now();
        assert_eq!(Arrival::stamp(&mut ext, later).instant(), t0);
        assert_eq!(Arrival::new(t0).elapsed(later), Duration::from_millis(3));
    }

    #[tokio::test(start_paused = true)]
    async fn arrival_and_deadline_share_one_stamp() {
        let mut ext = http::Extensions::new();
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::from_millis(50));
        Deadline::set(&mut ext, d);
        assert_eq!(
            Arrival::of(&ext),
            None,
            "a deadline alone stamps no arrival"
        );
        assert_eq!(Arrival::stamp(&mut ext, t0).instant(), t0);
        assert_eq!(ext.len(), 1, "one extension holds both");
        assert_eq!(Deadline::of(&ext), Some(d));
        let sooner = Deadline::after(t0, Duration::from_millis(10));
        Deadline::set(&mut ext, sooner);
        assert_eq!(Deadline::of(&ext), Some(sooner), "set replaces");
        assert_eq!(Arrival::of(&ext).map(Arrival::instant), Some(t0));
        let stamp = *ext.get::<Stamp>().unwrap();
        assert_eq!(
            (stamp.arrival(), stamp.deadline()),
            (Some(Arrival::new(t0)), Some(sooner))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn extensions_inserted_on_their_own_are_still_read() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, Duration::from_millis(50));
        let mut ext = http::Extensions::new();
        ext.insert(d);
        ext.insert(Arrival::new(t0));
        assert_eq!(Deadline::of(&ext), Some(d));
        assert_eq!(Arrival::of(&ext), Some(Arrival::new(t0)));
        // A deadline set through the stamp hides the one on its own.
        let later = Deadline::after(t0, Duration::from_millis(90));
        Deadline::set(&mut ext, later);
        assert_eq!(Deadline::of(&ext), Some(later));
    }

    #[test]
    fn priority_order_is_lexicographic() {
        let p = |b, u| Priority::new(b, u).unwrap();
        assert!(p(0, 127) < p(1, 0));
        assert!(p(3, 4) < p(3, 5));
        assert_eq!(Priority::HIGHEST, p(0, 0));
        assert!(Priority::LOWEST > p(254, 127));
        for (text, b, u) in [("0-0", 0, 0), ("255-127", 255, 127), ("007-12", 7, 12)] {
            let parsed: Priority = text.parse().unwrap();
            assert_eq!((parsed.business(), parsed.user()), (b, u));
            assert_eq!(Priority::from_index(parsed.index()), parsed);
        }
        for bad in [
            "", "-", "1-", "-1", "256-0", "1-128", "1-2-3", "+1-2", "1 -2", "1-2 ", "1234-1", "a-1",
        ] {
            assert!(bad.parse::<Priority>().is_err(), "{bad:?} must not parse");
        }
        assert_eq!(Priority::LOWEST.index(), 32767);
        assert_eq!(Priority::from_index(u16::MAX), Priority::LOWEST);
        assert_eq!(Priority::LOWEST.to_string(), "255-127");
        for index in [0u16, 9, 10, 99, 100, 127, 128, 1290, 12_800, 32_767] {
            let p = Priority::from_index(index);
            assert_eq!(p.header_value(), p.to_string().as_str());
        }
        let err = Priority::new(0, 128).unwrap_err();
        assert_eq!(err.to_string(), "user priority 128 is out of range 0..=127");
    }
}
