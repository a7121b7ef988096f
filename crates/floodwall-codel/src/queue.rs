use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{CodelConfig, ConfigError, Lifo, Policy};

/// Why a waiting request was dropped instead of served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It waited longer than its Fail-at-Scale queue timeout.
    Timeout,
    /// RFC 8289's control law dropped it.
    Codel,
    /// Its deadline would pass (or leave less than `min_remaining`) before
    /// it could run.
    Deadline,
    /// The queue was full when it arrived.
    Full,
}

impl DropReason {
    /// All reasons, in metric-label order.
    pub const ALL: [DropReason; 4] = [
        DropReason::Timeout,
        DropReason::Codel,
        DropReason::Deadline,
        DropReason::Full,
    ];

    /// A short lowercase name, for metric labels and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Timeout => "timeout",
            DropReason::Codel => "codel",
            DropReason::Deadline => "deadline",
            DropReason::Full => "full",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// A request leaving the queue to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Popped<T> {
    /// The caller's item.
    pub item: T,
    /// How long it waited (from its start instant).
    pub sojourn: Duration,
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    /// Where queueing time is measured from: the request's arrival, or
    /// when it was queued.
    start: Instant,
    /// Fail-at-Scale: dropped once `now` passes this.
    expires: Option<Instant>,
    /// Dropped once `now + min_remaining` reaches this.
    deadline: Option<Instant>,
}

/// RFC 8289's dequeue-side state, on request sojourn times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CodelState {
    /// `first_above_time`: when sojourns will have been above target for an
    /// interval (`None` for the RFC's 0).
    first_above: Option<Instant>,
    /// `drop_next`: when the next drop is due while dropping.
    drop_next: Option<Instant>,
    /// `count`: drops since entering the dropping state.
    count: u32,
    /// `lastcount`: `count` when the dropping state was last entered.
    lastcount: u32,
    /// `dropping`.
    dropping: bool,
}

/// The sans-IO admission queue: which waiting request to serve next, and
/// which to drop.
///
/// It holds items `T` (the layer keeps waiter ids) with their start
/// instants and deadlines, applies the configured [`Policy`] and [`Lifo`]
/// rule, and reports every drop to the caller's `on_drop`. It reads no
/// clock: every call takes `now`, so the exact drop schedule is testable.
///
/// ```
/// use std::time::Duration;
/// use floodwall_codel::{AdmissionQueue, CodelConfig, DropReason};
/// use tokio::time::Instant;
///
/// let t0 = Instant::now();
/// let mut q = AdmissionQueue::new(&CodelConfig::default())?;
/// q.push(t0, "a", t0, None).unwrap();
/// // The queue was empty: "a" may wait N = 100 ms.
/// let mut dropped = Vec::new();
/// let later = t0 + Duration::from_millis(101);
/// assert_eq!(q.pop(later, |item, why| dropped.push((item, why))), None);
/// assert_eq!(dropped, [("a", DropReason::Timeout)]);
/// # Ok::<(), floodwall_codel::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct AdmissionQueue<T> {
    entries: VecDeque<Entry<T>>,
    policy: Policy,
    lifo: Lifo,
    max_len: usize,
    min_remaining: Duration,
    /// When the queue last went from empty to non-empty; `None` while empty.
    nonempty_since: Option<Instant>,
    codel: CodelState,
}

impl<T> AdmissionQueue<T> {
    /// An empty queue for `config` (its `workers` field is the layer's
    /// business and ignored here).
    ///
    /// # Errors
    /// As [`CodelConfig::validate`]: the queue takes only what the layer
    /// would take.
    pub fn new(config: &CodelConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            entries: VecDeque::new(),
            policy: config.policy,
            lifo: config.lifo,
            max_len: config.max_queue,
            min_remaining: config.min_remaining,
            nonempty_since: None,
            codel: CodelState::default(),
        })
    }

    /// Applies `config` from now on, validated as [`new`](Self::new)
    /// validates (a refused configuration changes nothing). The waiting
    /// requests stay, each with the expiry it was given, and CoDel's state
    /// (dropping or not, its drop count) is kept: the new target and
    /// interval apply to the next decision. A queue longer than a new
    /// bound keeps its waiters and refuses newcomers until it is under it.
    ///
    /// # Errors
    /// As [`CodelConfig::validate`].
    pub fn reconfigure(&mut self, config: &CodelConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.policy = config.policy;
        self.lifo = config.lifo;
        self.max_len = config.max_queue;
        self.min_remaining = config.min_remaining;
        Ok(())
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the queue has been non-empty for longer than the policy's
    /// interval at `now`: it is standing, not absorbing a burst.
    pub fn is_persisted(&self, now: Instant) -> bool {
        self.nonempty_since
            .is_some_and(|t| now.saturating_duration_since(t) > self.policy.interval())
    }

    /// Whether the next pop at `now` serves the newest request first.
    pub fn is_lifo(&self, now: Instant) -> bool {
        match self.lifo {
            Lifo::Never => false,
            Lifo::Persisted => self.is_persisted(now),
            Lifo::Length(k) => self.entries.len() > k,
            Lifo::PersistedOrLength(k) => self.entries.len() > k || self.is_persisted(now),
        }
    }

    /// The queue timeout a request queued at `now` gets: Fail-at-Scale's M
    /// when the queue has not been empty in the last N, else N; `None`
    /// under the RFC 8289 policy.
    pub fn timeout_at(&self, now: Instant) -> Option<Duration> {
        match self.policy {
            Policy::FailAtScale { target, interval } => Some(if self.is_persisted(now) {
                target
            } else {
                interval
            }),
            Policy::Codel { .. } => None,
        }
    }

    /// Whether the RFC 8289 state machine is in its dropping state.
    pub fn is_dropping(&self) -> bool {
        self.codel.dropping
    }

    /// Drops since the RFC 8289 dropping state was last entered.
    pub fn drop_count(&self) -> u32 {
        self.codel.count
    }

    /// When the RFC 8289 dropping state drops next.
    pub fn drop_next(&self) -> Option<Instant> {
        self.codel.drop_next
    }

    /// Queues `item` at `now`. Queueing time counts from `start` (the
    /// request's arrival, or `now`); `deadline` is when its caller stops
    /// waiting. Returns when the item's queue timeout expires, if it has one.
    ///
    /// # Errors
    /// The item back, with the reason, when the queue is full
    /// ([`DropReason::Full`]) or its deadline cannot be met already
    /// ([`DropReason::Deadline`]).
    pub fn push(
        &mut self,
        now: Instant,
        item: T,
        start: Instant,
        deadline: Option<Instant>,
    ) -> Result<Option<Instant>, (T, DropReason)> {
        if deadline.is_some_and(|d| self.misses(d, now)) {
            return Err((item, DropReason::Deadline));
        }
        if self.entries.len() >= self.max_len {
            return Err((item, DropReason::Full));
        }
        let expires = self.timeout_at(now).map(|t| start + t);
        if self.entries.is_empty() {
            self.nonempty_since = Some(now);
        }
        self.entries.push_back(Entry {
            item,
            start: start.min(now),
            expires,
            deadline,
        });
        Ok(expires)
    }

    /// Removes the first waiting item for which `matches` holds (a waiter
    /// that gave up), returning it.
    pub fn remove(&mut self, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        let i = self.entries.iter().position(|e| matches(&e.item))?;
        let e = self.entries.remove(i)?;
        self.note_if_empty();
        Some(e.item)
    }

    /// The next request to serve at `now` (a worker is free), if any.
    ///
    /// Expired requests (past their queue timeout, or whose deadline can no
    /// longer be met) are dropped first, oldest first; under the RFC 8289
    /// policy its state machine may then drop the oldest requests; then the
    /// newest or the oldest is served by the LIFO rule. Every dropped item
    /// goes to `on_drop`.
    pub fn pop(&mut self, now: Instant, mut on_drop: impl FnMut(T, DropReason)) -> Option<T> {
        self.pop_timed(now, &mut on_drop).map(|p| p.item)
    }

    /// As [`pop`](Self::pop), with the served item's sojourn time.
    pub fn pop_timed(
        &mut self,
        now: Instant,
        on_drop: &mut impl FnMut(T, DropReason),
    ) -> Option<Popped<T>> {
        let lifo = self.is_lifo(now);
        self.purge_front(now, on_drop);
        if let Policy::Codel { interval, .. } = self.policy {
            self.codel_dequeue(now, interval, on_drop);
        }
        let popped = self.take(now, lifo, on_drop);
        self.note_if_empty();
        popped
    }

    /// Whether a deadline at `deadline` can no longer be met at `now`.
    fn misses(&self, deadline: Instant, now: Instant) -> bool {
        now + self.min_remaining >= deadline
    }

    fn expired(&self, e: &Entry<T>, now: Instant) -> Option<DropReason> {
        if e.expires.is_some_and(|x| now > x) {
            Some(DropReason::Timeout)
        } else if e.deadline.is_some_and(|d| self.misses(d, now)) {
            Some(DropReason::Deadline)
        } else {
            None
        }
    }

    /// Drops expired requests from the front (oldest first).
    fn purge_front(&mut self, now: Instant, on_drop: &mut impl FnMut(T, DropReason)) {
        while let Some(reason) = self.entries.front().and_then(|e| self.expired(e, now)) {
            let e = self.entries.pop_front().expect("front exists");
            on_drop(e.item, reason);
        }
    }

    /// An empty queue resets the RFC 8289 state, as the RFC's dequeue of an
    /// empty queue does (`first_above_time = 0`, `dropping = false`), and
    /// forgets when the queue became non-empty.
    fn note_if_empty(&mut self) {
        if self.entries.is_empty() {
            self.nonempty_since = None;
            self.codel.first_above = None;
            self.codel.dropping = false;
        }
    }

    /// Takes the next live entry from the chosen end, dropping expired ones
    /// met on the way.
    fn take(
        &mut self,
        now: Instant,
        lifo: bool,
        on_drop: &mut impl FnMut(T, DropReason),
    ) -> Option<Popped<T>> {
        loop {
            let e = if lifo {
                self.entries.pop_back()
            } else {
                self.entries.pop_front()
            }?;
            if let Some(reason) = self.expired(&e, now) {
                on_drop(e.item, reason);
                continue;
            }
            return Some(Popped {
                item: e.item,
                sojourn: now.saturating_duration_since(e.start),
            });
        }
    }

    /// RFC 8289 `dodequeue` on the oldest waiting request (after dropping
    /// expired ones): `None` for an empty queue, else `ok_to_drop`. A
    /// sojourn equal to TARGET counts as above it; "no other request
    /// queued" stands for the RFC's `bytes <= maxpacket`.
    fn judge(&mut self, now: Instant, on_drop: &mut impl FnMut(T, DropReason)) -> Option<bool> {
        let Policy::Codel { target, interval } = self.policy else {
            return Some(false);
        };
        self.purge_front(now, on_drop);
        let Some(head) = self.entries.front() else {
            self.codel.first_above = None;
            return None;
        };
        let sojourn = now.saturating_duration_since(head.start);
        if sojourn < target || self.entries.len() == 1 {
            self.codel.first_above = None;
            return Some(false);
        }
        Some(match self.codel.first_above {
            None => {
                self.codel.first_above = Some(now + interval);
                false
            }
            Some(t) => now >= t,
        })
    }

    /// Drops the oldest waiting request by the control law.
    fn drop_head(&mut self, on_drop: &mut impl FnMut(T, DropReason)) {
        if let Some(e) = self.entries.pop_front() {
            on_drop(e.item, DropReason::Codel);
        }
    }

    /// RFC 8289 `dequeue`, up to the packet it would send: the drops. The
    /// control law judges and drops the oldest request (the head, whose
    /// sojourn is the standing queue delay); which request is then served
    /// is the LIFO rule's choice. With FIFO service this is the RFC
    /// exactly: the judged head is the request served.
    fn codel_dequeue(
        &mut self,
        now: Instant,
        interval: Duration,
        on_drop: &mut impl FnMut(T, DropReason),
    ) {
        let Some(ok_to_drop) = self.judge(now, on_drop) else {
            self.codel.dropping = false;
            return;
        };
        if self.codel.dropping {
            if !ok_to_drop {
                self.codel.dropping = false;
            }
            while self.codel.dropping && self.codel.drop_next.is_some_and(|t| now >= t) {
                self.drop_head(on_drop);
                self.codel.count = self.codel.count.saturating_add(1);
                match self.judge(now, on_drop) {
                    None | Some(false) => self.codel.dropping = false,
                    Some(true) => {
                        let t = self.codel.drop_next.expect("dropping has a schedule");
                        self.codel.drop_next = Some(control_law(t, interval, self.codel.count));
                    }
                }
            }
        } else if ok_to_drop {
            self.drop_head(on_drop);
            self.judge(now, on_drop);
            self.codel.dropping = true;
            let delta = self.codel.count.saturating_sub(self.codel.lastcount);
            let recent = self
                .codel
                .drop_next
                .is_some_and(|t| now.saturating_duration_since(t) < interval * 16);
            self.codel.count = if delta > 1 && recent { delta } else { 1 };
            self.codel.drop_next = Some(control_law(now, interval, self.codel.count));
            self.codel.lastcount = self.codel.count;
        }
    }
}

/// RFC 8289's control law: `t + interval / √count`.
pub fn control_law(t: Instant, interval: Duration, count: u32) -> Instant {
    let nanos = interval.as_nanos() as f64 / f64::from(count.max(1)).sqrt();
    t + Duration::from_nanos(nanos as u64)
}
