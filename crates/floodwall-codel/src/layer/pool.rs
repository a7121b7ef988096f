//! The worker pool: a fixed number of workers, and the waiters queued for
//! them in the admission queue (whose policy decides who is served next and
//! who is dropped). Permits and waiters give back what they hold on drop.

use super::*;

/// A waiting request's slot: how its wait ended, and who to wake.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) waker: Option<Waker>,
    pub(crate) outcome: Option<Result<(), DropReason>>,
}

#[derive(Debug)]
pub(crate) struct Waiters {
    pub(crate) queue: AdmissionQueue<u64>,
    pub(crate) slots: HashMap<u64, Slot>,
    pub(crate) next_id: u64,
}

pub(crate) struct Metrics {
    pub(crate) requests: RequestCounters,
    pub(crate) queue_length: Gauge,
    pub(crate) sojourn: Histogram,
    pub(crate) dropped: [Counter; 4],
    pub(crate) lifo: Gauge,
    /// `reconfigurations_total{name}`.
    pub(crate) reconfigured: Counter,
    /// `limit{name}`: the workers configured.
    pub(crate) limit: Gauge,
}

impl Metrics {
    /// Counts a request shed for `reason`: in `requests_total` by its
    /// rejection kind, and in the queue's own `dropped_total` by reason.
    pub(crate) fn shed(&self, reason: DropReason) {
        self.dropped[reason.index()].increment(1);
        self.requests.rejected(Shed { reason }.kind());
    }
}

pub(crate) struct Shared<X> {
    /// How many requests may run at once (changed by
    /// [`CodelHandle::set_workers`]).
    pub(crate) workers: AtomicUsize,
    /// `min_remaining` in nanoseconds (changed by a reconfiguration).
    pub(crate) min_remaining: AtomicU64,
    /// Workers taken (running requests, and grants not yet picked up).
    pub(crate) busy: AtomicUsize,
    /// A copy of the queue's length, for the lock-free fast path.
    pub(crate) queued: AtomicUsize,
    pub(crate) waiters: Mutex<Waiters>,
    /// The configuration in force (its `workers` as configured; the live
    /// count is `workers`).
    pub(crate) config: Mutex<CodelConfig>,
    pub(crate) timing: X,
    pub(crate) name: Arc<str>,
    pub(crate) metrics: Metrics,
    pub(crate) on_sojourn: Option<SojournHook>,
}

/// Called with each served request's queuing time (see
/// [`Builder::on_sojourn`]).
pub(crate) type SojournHook = Arc<dyn Fn(Duration) + Send + Sync>;

impl<X> Shared<X> {
    /// How much time a request's deadline must leave when it starts.
    #[inline]
    pub(crate) fn min_remaining(&self) -> Duration {
        Duration::from_nanos(self.min_remaining.load(Ordering::Relaxed))
    }

    /// Takes a worker if one is free.
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        let mut busy = self.busy.load(Ordering::SeqCst);
        while busy < self.workers.load(Ordering::Relaxed) {
            match self.busy.compare_exchange_weak(
                busy,
                busy + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => busy = now,
            }
        }
        false
    }

    /// Gives a worker back and, if requests wait, hands it on.
    pub(crate) fn release(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        // Pairs with the enqueuer's store of `queued` then its dispatch:
        // one of the two sees the other's write (the SeqCst total order;
        // modelled in `loom_model` below).
        sync::seqcst_handoff();
        if self.queued.load(Ordering::SeqCst) > 0 {
            let mut w = self.waiters.lock();
            self.dispatch(&mut w, Instant::now());
        }
    }

    /// Hands free workers to waiting requests, dropping what the policy
    /// drops. Runs under the lock.
    pub(crate) fn dispatch(&self, w: &mut Waiters, now: Instant) {
        let Waiters { queue, slots, .. } = w;
        let metrics = &self.metrics;
        while !queue.is_empty() && self.try_take() {
            metrics.lifo.set(if queue.is_lifo(now) { 1.0 } else { 0.0 });
            let popped = queue.pop_timed(now, &mut |id, reason: DropReason| {
                metrics.shed(reason);
                finish(slots, id, Err(reason));
            });
            match popped {
                Some(p) => {
                    metrics.sojourn.record(p.sojourn.as_secs_f64());
                    if let Some(hook) = &self.on_sojourn
                        && !floodwall_core::hook::contain(|| hook(p.sojourn))
                    {
                        tracing::error!(name = %self.name, "codel: the on_sojourn hook panicked");
                    }
                    finish(slots, p.item, Ok(()));
                }
                None => {
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
            }
        }
        self.queued.store(queue.len(), Ordering::SeqCst);
        metrics.queue_length.set(queue.len() as f64);
    }

    /// Queues a request that found no free worker, then hands it one if a
    /// worker came free since it looked: the enqueuer's half of the handoff
    /// whose other half is [`release`](Self::release). Returns the waiter
    /// (armed before anything else can happen) and when the queue's
    /// timeout would drop it.
    pub(crate) fn push(
        this: &Arc<Self>,
        now: Instant,
        start: Instant,
        deadline: Option<Instant>,
    ) -> Result<(Waiter<X>, Option<Instant>), DropReason> {
        let mut w = this.waiters.lock();
        let id = w.next_id;
        w.next_id += 1;
        let expires = w
            .queue
            .push(now, id, start, deadline)
            .map_err(|(_, reason)| reason)?;
        w.slots.insert(id, Slot::default());
        let waiter = Waiter {
            shared: this.clone(),
            id: Some(id),
        };
        this.queued.store(w.queue.len(), Ordering::SeqCst);
        // A worker may have come free since the fast path looked; see
        // `release` for the other half.
        sync::seqcst_handoff();
        this.dispatch(&mut w, now);
        Ok((waiter, expires))
    }

    /// A waiter gave up: take it out of the queue, or give back the worker
    /// it was granted and never used.
    pub(crate) fn cancel(&self, id: u64) {
        let mut w = self.waiters.lock();
        let Some(slot) = w.slots.remove(&id) else {
            return;
        };
        match slot.outcome {
            Some(Ok(())) => {
                self.busy.fetch_sub(1, Ordering::SeqCst);
                self.dispatch(&mut w, Instant::now());
            }
            Some(Err(_)) => {}
            None => {
                w.queue.remove(|x| *x == id);
                self.queued.store(w.queue.len(), Ordering::SeqCst);
                self.metrics.queue_length.set(w.queue.len() as f64);
            }
        }
    }
}

pub(crate) fn finish(slots: &mut HashMap<u64, Slot>, id: u64, outcome: Result<(), DropReason>) {
    if let Some(slot) = slots.get_mut(&id) {
        slot.outcome = Some(outcome);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// A worker taken; given back on drop.
/// A worker held by a running request; given back when dropped.
pub struct Permit<X> {
    pub(crate) shared: Arc<Shared<X>>,
}

impl<X> fmt::Debug for Permit<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl<X> Drop for Permit<X> {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A queued request; leaves the queue (or gives back its grant) on drop.
pub(crate) struct Waiter<X> {
    pub(crate) shared: Arc<Shared<X>>,
    pub(crate) id: Option<u64>,
}

impl<X> Drop for Waiter<X> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.cancel(id);
        }
    }
}
