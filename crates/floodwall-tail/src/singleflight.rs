//! Many callers of one key, one call: the core of [`CoalesceLayer`]
//! (crate::CoalesceLayer), usable by any layer that needs it (the hot-key
//! cache of floodwall-hotkey does).

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodwall_core::{BoxError, Deadline};
use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::coalesce::{CoalescedError, in_flight_deadline};

type Outcome<R> = Option<Result<R, CoalescedError>>;

/// One call in flight: where its outcome is published (the map and the
/// call's leader each hold a sender; followers subscribe).
type Flight<R> = watch::Sender<Outcome<R>>;

/// A call in flight, its error boxed.
pub type Call<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

/// The calls in flight, by key: a caller either joins the one for its key
/// or leads a new one.
///
/// - A leader's [`Lead`] future drives the call and publishes its outcome
///   to the followers. Dropped before the end while followers wait, it
///   hands the call to a task, so no follower fails; once nobody waits any
///   more, the call is cancelled (its future dropped) and the key freed.
/// - A [`Follower`] waits for the outcome (a clone of the response, or the
///   error shared as [`CoalescedError`]), at most until its own deadline.
///
/// ```
/// use std::sync::Arc;
/// use floodwall_tail::{Entry, Singleflight};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flights: Arc<Singleflight<u64, String>> = Arc::new(Singleflight::new());
/// let Entry::Leader(leader) = flights.enter(7, 100) else { unreachable!() };
/// let Entry::Follower(follower) = flights.enter(7, 100) else { unreachable!() };
/// let lead = leader.run(Box::pin(async { Ok("room 7".to_owned()) }));
/// assert_eq!(lead.await.unwrap(), "room 7");
/// assert_eq!(follower.wait(None).await.unwrap().unwrap(), "room 7");
/// assert!(flights.is_empty());
/// # }
/// ```
pub struct Singleflight<K, R> {
    flights: Mutex<HashMap<K, Flight<R>>>,
}

impl<K, R> std::fmt::Debug for Singleflight<K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Singleflight")
            .field("in_flight", &self.flights.lock().len())
            .finish()
    }
}

impl<K, R> Singleflight<K, R> {
    /// Keys with a call in flight (whatever the key and response types).
    pub fn len(&self) -> usize {
        self.flights.lock().len()
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, R> Default for Singleflight<K, R> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

/// How a caller enters a [`Singleflight`].
#[derive(Debug)]
pub enum Entry<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    /// A call for the key is in flight: wait for it.
    Follower(Follower<R>),
    /// No call for the key: this caller leads one ([`Leader::run`]).
    Leader(Leader<K, R>),
    /// `max_keys` calls are in flight already.
    Full,
}

impl<K, R> Singleflight<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    /// Frees `key` if it still names `flight` (and not a later call's).
    fn remove_if_same(flights: &mut HashMap<K, Flight<R>>, key: &K, flight: &Flight<R>) {
        if flights.get(key).is_some_and(|f| f.same_channel(flight)) {
            flights.remove(key);
        }
    }

    /// Frees `key` and hands `outcome` to the followers waiting, if any.
    fn publish(&self, key: &K, flight: &Flight<R>, outcome: &Result<R, CoalescedError>) {
        Self::remove_if_same(&mut self.flights.lock(), key, flight);
        // Followers subscribe under the map's lock: none comes after this.
        if flight.receiver_count() > 0 {
            flight.send_replace(Some(outcome.clone()));
        }
    }
}

impl<K, R> Singleflight<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    /// No call in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the call in flight for `key`, or leads a new one (when fewer
    /// than `max_keys` are in flight).
    pub fn enter(self: &Arc<Self>, key: K, max_keys: usize) -> Entry<K, R> {
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(&key) {
            return Entry::Follower(Follower(flight.subscribe()));
        }
        if flights.len() >= max_keys {
            return Entry::Full;
        }
        let (flight, _) = watch::channel(None);
        flights.insert(key.clone(), flight.clone());
        Entry::Leader(Leader {
            flights: self.clone(),
            key: Some(key),
            flight,
        })
    }
}

/// A caller that leads the call for its key: [`run`](Self::run) starts it.
/// Dropped without running, it frees the key (followers that joined see
/// the call abandoned).
#[derive(Debug)]
pub struct Leader<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    flights: Arc<Singleflight<K, R>>,
    key: Option<K>,
    flight: Flight<R>,
}

impl<K, R> Leader<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    /// Leads `call`: the future drives it and publishes its outcome.
    pub fn run(mut self, call: Call<R>) -> Lead<K, R> {
        Lead {
            fut: Some(call),
            flights: self.flights.clone(),
            key: self.key.take(),
            flight: self.flight.clone(),
        }
    }
}

impl<K, R> Drop for Leader<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            Singleflight::remove_if_same(&mut self.flights.flights.lock(), &key, &self.flight);
        }
    }
}

/// The leader's side of a call: drives it and publishes its outcome to the
/// followers. Dropped before the end, it hands the call to a task while
/// followers wait, or cancels it when none does.
pub struct Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fut: Option<Call<R>>,
    flights: Arc<Singleflight<K, R>>,
    key: Option<K>,
    flight: Flight<R>,
}

impl<K, R> std::fmt::Debug for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lead")
            .field("done", &self.fut.is_none())
            .finish_non_exhaustive()
    }
}

// Nothing in a `Lead` is pinned in place: its call is boxed.
impl<K, R> Unpin for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
}

impl<K, R> Future for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    type Output = Result<R, CoalescedError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let fut = this.fut.as_mut().expect("polled after its end");
        let outcome =
            std::task::ready!(fut.as_mut().poll(cx)).map_err(|e| CoalescedError(Arc::from(e)));
        this.fut = None;
        let key = this.key.take().expect("published once");
        this.flights.publish(&key, &this.flight, &outcome);
        Poll::Ready(outcome)
    }
}

impl<K, R> Drop for Lead<K, R>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let (Some(fut), Some(key)) = (self.fut.take(), self.key.take()) else {
            return; // finished and published
        };
        let mut flights = self.flights.flights.lock();
        if self.flight.receiver_count() == 0 {
            // Nobody waits: the call is cancelled (its future dropped here).
            Singleflight::remove_if_same(&mut flights, &key, &self.flight);
            return;
        }
        drop(flights);
        // Followers wait: the call goes on for them in a task of its own.
        // (Without a runtime, shutting down, the followers see the call
        // abandoned.)
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(go_on(fut, self.flight.clone(), self.flights.clone(), key));
        }
    }
}

/// Finishes a call its leader left, for the followers; cancels it (drops
/// its future) once none of them waits any more.
async fn go_on<K, R>(mut fut: Call<R>, flight: Flight<R>, flights: Arc<Singleflight<K, R>>, key: K)
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
{
    let outcome = loop {
        tokio::select! {
            outcome = &mut fut => break outcome,
            () = flight.closed() => {
                // Every waiter went away. New followers subscribe under the
                // map's lock, so under it "nobody waits" is final.
                let mut map = flights.flights.lock();
                if flight.receiver_count() == 0 {
                    Singleflight::remove_if_same(&mut map, &key, &flight);
                    return;
                }
            }
        }
    };
    let outcome = outcome.map_err(|e| CoalescedError(Arc::from(e)));
    flights.publish(&key, &flight, &outcome);
}

/// A caller waiting for the call in flight for its key.
#[derive(Debug)]
pub struct Follower<R>(watch::Receiver<Outcome<R>>);

impl<R: Clone> Follower<R> {
    /// The call's outcome, waited for at most until `deadline` (then a
    /// `DeadlineExceeded` rejection; the call goes on for the others).
    ///
    /// # Errors
    /// The deadline's rejection, or an error when the call was abandoned
    /// (its leader left before running it, or the runtime shut down).
    pub async fn wait(
        mut self,
        deadline: Option<Deadline>,
    ) -> Result<Result<R, CoalescedError>, BoxError> {
        let outcome = async {
            match self.0.wait_for(Option::is_some).await {
                Ok(outcome) => Ok(outcome.clone().expect("waited for it")),
                Err(_) => Err(BoxError::from("the coalesced call was abandoned")),
            }
        };
        match deadline {
            None => outcome.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.instant(), outcome).await {
                Ok(outcome) => outcome,
                Err(_) => Err(in_flight_deadline()),
            },
        }
    }
}
