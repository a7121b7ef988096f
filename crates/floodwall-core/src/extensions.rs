use std::time::Duration;

use crate::Priority;
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
        *extensions
            .get_or_insert_default::<Stamp>()
            .arrival
            .get_or_insert(Self(now))
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
/// it arrived ([`Arrival`]), by when it must be answered ([`Deadline`]) and
/// its [`Priority`].
///
/// Read and write it through [`Arrival::of`], [`Arrival::stamp`],
/// [`Deadline::of`], [`Deadline::set`], [`Priority::of`] and
/// [`Priority::stamp`]; a `Deadline`, `Arrival` or `Priority` inserted into
/// the extensions on its own is still read when the stamp has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    arrival: Option<Arrival>,
    deadline: Option<Deadline>,
    priority: Option<Priority>,
}

impl Stamp {
    /// A field of the request's stamp when it is set there, else a `T`
    /// inserted into the extensions on its own.
    #[inline]
    fn field_or_own<T: Copy + Clone + Send + Sync + 'static>(
        extensions: &http::Extensions,
        field: impl Fn(&Stamp) -> Option<T>,
    ) -> Option<T> {
        extensions
            .get::<Stamp>()
            .and_then(field)
            .or_else(|| extensions.get::<T>().copied())
    }

    /// Writes into the request's stamp, stamping it first if it has none
    /// (the only allocation: an existing stamp is written in place).
    #[inline]
    fn write_field(extensions: &mut http::Extensions, write: impl FnOnce(&mut Stamp)) {
        // One lookup, whether the stamp is there or not.
        write(extensions.get_or_insert_default::<Stamp>());
    }

    /// What is stamped on a request: its [`Stamp`], with an `Arrival` or
    /// `Deadline` inserted on their own filling what the stamp lacks.
    #[inline]
    pub fn of(extensions: &http::Extensions) -> Stamp {
        let (arrival, deadline) = Stamp::times(extensions);
        Stamp {
            arrival,
            deadline,
            priority: Priority::of(extensions),
        }
    }

    /// A stamp of `arrival` and `deadline` (and no priority), to
    /// [`insert`](Self::insert).
    pub const fn new(arrival: Option<Arrival>, deadline: Option<Deadline>) -> Stamp {
        Stamp {
            arrival,
            deadline,
            priority: None,
        }
    }

    /// This stamp with `priority`.
    pub const fn with_priority(self, priority: Option<Priority>) -> Stamp {
        Stamp { priority, ..self }
    }

    /// The arrival and deadline stamped on a request (the stamp's, else an
    /// `Arrival` or `Deadline` inserted on its own): what a layer that
    /// restamps both ([`Stamp::restamp`]) reads first. Unlike [`Stamp::of`]
    /// it does not look for the priority, which a restamp keeps in place.
    #[inline]
    pub fn times(extensions: &http::Extensions) -> (Option<Arrival>, Option<Deadline>) {
        if extensions.is_empty() {
            return (None, None);
        }
        let (arrival, deadline) = extensions
            .get::<Stamp>()
            .map_or((None, None), |s| (s.arrival, s.deadline));
        (
            arrival.or_else(|| extensions.get::<Arrival>().copied()),
            deadline.or_else(|| extensions.get::<Deadline>().copied()),
        )
    }

    /// Writes `arrival` and `deadline` into the request's stamp, keeping
    /// the priority stamped there: one lookup, and one allocation only when
    /// the request has no stamp yet.
    ///
    /// ```
    /// use floodwall_core::{Arrival, Deadline, Priority, Stamp};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut req = http::Request::new(());
    /// let p = Priority::new(2, 7).unwrap();
    /// Priority::stamp(req.extensions_mut(), p);
    /// let now = Instant::now();
    /// let d = Deadline::after(now, Duration::from_secs(1));
    /// Stamp::restamp(req.extensions_mut(), Some(Arrival::new(now)), Some(d));
    /// assert_eq!(Stamp::times(req.extensions()), (Some(Arrival::new(now)), Some(d)));
    /// assert_eq!(Priority::of(req.extensions()), Some(p));
    /// assert_eq!(req.extensions().len(), 1);
    /// ```
    #[inline]
    pub fn restamp(
        extensions: &mut http::Extensions,
        arrival: Option<Arrival>,
        deadline: Option<Deadline>,
    ) {
        let stamp = extensions.get_or_insert_default::<Stamp>();
        stamp.arrival = arrival;
        stamp.deadline = deadline;
    }

    /// Puts this stamp on a request in place of any stamped before: one
    /// allocation, none when it replaces a stamp (written over in place).
    pub fn insert(self, extensions: &mut http::Extensions) {
        *extensions.get_or_insert_default::<Stamp>() = self;
    }

    /// The arrival stamped, if any.
    pub const fn arrival(&self) -> Option<Arrival> {
        self.arrival
    }

    /// The deadline stamped, if any.
    pub const fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The priority stamped, if any.
    pub const fn priority(&self) -> Option<Priority> {
        self.priority
    }
}

impl Priority {
    /// The priority of a request: the one in its [`Stamp`], else a
    /// `Priority` inserted into the extensions on its own.
    ///
    /// ```
    /// use floodwall_core::Priority;
    ///
    /// let mut req = http::Request::new(());
    /// assert_eq!(Priority::of(req.extensions()), None);
    /// let p = Priority::new(2, 7).unwrap();
    /// Priority::stamp(req.extensions_mut(), p);
    /// assert_eq!(Priority::of(req.extensions()), Some(p));
    /// ```
    #[inline]
    pub fn of(extensions: &http::Extensions) -> Option<Priority> {
        Stamp::field_or_own(extensions, |s| s.priority)
    }

    /// Stamps `priority` on a request, in its [`Stamp`] next to its arrival
    /// and deadline (no allocation when the request is stamped already); it
    /// replaces any priority stamped before, and hides one inserted on its
    /// own.
    #[inline]
    pub fn stamp(extensions: &mut http::Extensions, priority: Priority) {
        Stamp::write_field(extensions, |s| s.priority = Some(priority));
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
        Stamp::field_or_own(extensions, |s| s.deadline)
    }

    /// The deadline a layer should honour for a request: the earlier of the
    /// request's own ([`of`](Self::of)) and the one in the running task's
    /// scope ([`current_scoped`](crate::deadline::current_scoped)). The
    /// deadline layers put the deadline in scope for the layers below them
    /// (the client layer only there: the request it sends carries it on
    /// the wire, not in its extensions), so a layer under either reads it
    /// here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_core::Deadline;
    /// use floodwall_core::deadline::{Scoped, enter_scope};
    /// use tokio::time::Instant;
    ///
    /// let now = Instant::now();
    /// let (soon, later) = (
    ///     Deadline::after(now, Duration::from_millis(100)),
    ///     Deadline::after(now, Duration::from_millis(200)),
    /// );
    /// let mut req = http::Request::new(());
    /// assert_eq!(Deadline::effective(req.extensions()), None);
    /// Deadline::set(req.extensions_mut(), later);
    /// let _scope = enter_scope(Some(Scoped::new(soon, true)));
    /// assert_eq!(Deadline::effective(req.extensions()), Some(soon));
    /// ```
    #[inline]
    pub fn effective(extensions: &http::Extensions) -> Option<Self> {
        let scoped = crate::deadline::current_scoped().map(crate::deadline::Scoped::deadline);
        match (Deadline::of(extensions), scoped) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stamps `deadline` on a request, in the request's [`Stamp`] next to
    /// its arrival; it replaces any deadline stamped before (and hides one
    /// inserted on its own from [`Deadline::of`]).
    pub fn set(extensions: &mut http::Extensions, deadline: Deadline) {
        Stamp::write_field(extensions, |s| s.deadline = Some(deadline));
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
    async fn the_priority_shares_the_stamp_and_survives_a_restamp() {
        let now = Instant::now();
        let mut ext = http::Extensions::new();
        let p = Priority::new(1, 9).unwrap();
        Arrival::stamp(&mut ext, now);
        Priority::stamp(&mut ext, p);
        let d = Deadline::after(now, Duration::from_secs(1));
        Deadline::set(&mut ext, d);
        assert_eq!(ext.len(), 1, "one extension for the three");
        assert_eq!(Priority::of(&ext), Some(p));
        // A layer restamping the times keeps the priority it was given.
        let stamped = Stamp::of(&ext);
        Stamp::new(Some(Arrival::new(now)), Some(d))
            .with_priority(stamped.priority())
            .insert(&mut ext);
        assert_eq!(Priority::of(&ext), Some(p));
        // A stamp without one falls back to a standalone extension.
        let mut own = http::Extensions::new();
        own.insert(p);
        Arrival::stamp(&mut own, now);
        assert_eq!(Priority::of(&own), Some(p));
        assert_eq!(Stamp::of(&own).priority(), Some(p));
        // A stamped priority wins over a standalone one.
        let q = Priority::new(3, 0).unwrap();
        Priority::stamp(&mut own, q);
        assert_eq!(Priority::of(&own), Some(q));
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
        // A whole stamp put over it replaces both.
        Stamp::new(None, Some(d)).insert(&mut ext);
        assert_eq!((Arrival::of(&ext), Deadline::of(&ext)), (None, Some(d)));
        assert_eq!(ext.len(), 1);
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
        assert_eq!(Stamp::times(&ext), (Some(Arrival::new(t0)), Some(d)));
        // A restamp of nothing leaves the ones on their own in force; one
        // with values overrides them.
        let mut restamped = ext.clone();
        Stamp::restamp(&mut restamped, None, None);
        assert_eq!(Stamp::times(&restamped), (Some(Arrival::new(t0)), Some(d)));
        let sooner = Deadline::after(t0, Duration::from_millis(5));
        Stamp::restamp(&mut restamped, Some(Arrival::new(t0)), Some(sooner));
        assert_eq!(
            Stamp::times(&restamped),
            (Some(Arrival::new(t0)), Some(sooner))
        );
        // A deadline set through the stamp hides the one on its own.
        let later = Deadline::after(t0, Duration::from_millis(90));
        Deadline::set(&mut ext, later);
        assert_eq!(Deadline::of(&ext), Some(later));
    }
}
