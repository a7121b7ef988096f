//! What an instance remembers per key between round trips: leased tokens,
//! and refusals.
//!
//! Sans-IO: every method takes the current instant.

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, futures::OwnedNotified};
use tokio::time::Instant;

/// Local state for up to `capacity` keys.
///
/// **Leases.** A key's lease holds the tokens left over from its last lease
/// round trip and when they expire. At most one lease round trip per key is
/// in flight: a request that finds the lease empty while another is
/// fetching waits for that fetch (once), then asks Redis for its own tokens
/// only if the new lease does not cover it. So an instance never holds more
/// than `size − 1` unspent tokens of a key, which bounds what leasing can
/// over-admit (see the crate docs). With `size` 1 there are no leases.
///
/// **Refusals.** When Redis refuses a key, it says when one token will
/// conform; until then this instance refuses the key's requests itself.
/// That is exact — the global bucket only refills with time, so Redis would
/// refuse them too — and it keeps an over-quota key from costing a round
/// trip per request.
///
/// **Room.** When the map is full, a new key's request sweeps it for entries
/// that no longer hold anything; a sweep visits every entry, so after one
/// there is no other for an eighth of the lease's maximum age. Until then a
/// new key that finds the map full goes without a lease (its request asks
/// Redis for its own tokens), so a map full of live keys costs new keys one
/// sweep per interval, not one per request.
#[derive(Debug)]
pub(crate) struct Leases<K> {
    map: Mutex<Map<K>>,
    capacity: usize,
}

#[derive(Debug)]
struct Map<K> {
    entries: HashMap<K, Entry>,
    /// No sweep for room before this instant (see the type docs).
    next_sweep: Option<Instant>,
    /// Tokens to ask for per lease round trip (1: leasing off).
    size: u32,
    max_age: Duration,
    /// The quota's emission interval, for refusals of heavier requests.
    interval: Duration,
}

#[derive(Debug)]
struct Entry {
    tokens: u32,
    expires: Instant,
    fetching: bool,
    /// Until when one token cannot conform.
    blocked_until: Instant,
    /// Wakes requests waiting for this key's lease fetch.
    fetched: Arc<Notify>,
}

impl Entry {
    fn new(now: Instant, fetching: bool, blocked_until: Instant) -> Self {
        Self {
            tokens: 0,
            expires: now,
            fetching,
            blocked_until,
            fetched: Arc::new(Notify::new()),
        }
    }
}

impl Entry {
    fn is_useful(&self, now: Instant) -> bool {
        self.fetching || (self.tokens > 0 && self.expires > now) || self.blocked_until > now
    }
}

/// What a request should do after looking at its key's local state.
#[derive(Debug)]
pub(crate) enum Take {
    /// The lease covered it: admitted, no round trip.
    Taken,
    /// Redis refused this key recently and would refuse this request too:
    /// refused, no round trip, conforming after the wait.
    Blocked(Duration),
    /// Ask Redis for `want` tokens. `claimed` means this request fetches the
    /// key's next lease and must [`fill`](Leases::fill) or
    /// [`release`](Leases::release) it.
    Fetch { want: u32, claimed: bool },
    /// Another request is fetching this key's lease: wait for it to finish,
    /// then look again.
    Wait(OwnedNotified),
}

impl<K> Leases<K> {
    /// Tokens asked for per lease round trip (1: leasing off).
    pub(crate) fn size(&self) -> u32 {
        self.map.lock().size
    }
}

impl<K: Hash + Eq + Clone> Leases<K> {
    pub(crate) fn new(size: u32, max_age: Duration, interval: Duration, capacity: usize) -> Self {
        Self {
            map: Mutex::new(Map {
                entries: HashMap::new(),
                next_sweep: None,
                size: size.max(1),
                max_age,
                interval,
            }),
            capacity,
        }
    }

    /// Takes a new lease size, lease age and quota interval from now on.
    /// Leased tokens are kept (they were taken out of the global bucket and
    /// expire by their age); remembered refusals are forgotten, since the
    /// new quota may admit what the old one refused: the next request on
    /// such a key asks Redis.
    pub(crate) fn reconfigure(
        &self,
        size: u32,
        max_age: Duration,
        interval: Duration,
        now: Instant,
    ) {
        let mut map = self.map.lock();
        map.size = size.max(1);
        map.max_age = max_age;
        map.interval = interval;
        for entry in map.entries.values_mut() {
            entry.blocked_until = entry.blocked_until.min(now);
        }
    }

    /// Spends `n` leased tokens of `key`, refuses it from a remembered
    /// refusal, or says what to fetch — or, if `may_wait` and another
    /// request is fetching the key's lease, to wait for that.
    pub(crate) fn take(&self, key: &K, n: u32, now: Instant, may_wait: bool) -> Take {
        let own = Take::Fetch {
            want: n,
            claimed: false,
        };
        let mut map = self.map.lock();
        let (size, interval) = (map.size, map.interval);
        let leasing = size > 1;
        if let Some(entry) = map.entries.get_mut(key) {
            if entry.expires <= now {
                entry.tokens = 0;
            }
            if entry.tokens >= n {
                entry.tokens -= n;
                return Take::Taken;
            }
            // A request of n tokens conforms (n − 1)·I after one token does.
            let until = entry.blocked_until + interval * n.saturating_sub(1);
            if until > now {
                return Take::Blocked(until - now);
            }
            if !leasing {
                return own;
            }
            if entry.fetching {
                // Registered under the lock: a fill or release after this
                // point wakes it.
                return if may_wait {
                    Take::Wait(entry.fetched.clone().notified_owned())
                } else {
                    own
                };
            }
            entry.fetching = true;
            return Take::Fetch {
                want: size.max(n),
                claimed: true,
            };
        }
        if !leasing || !self.make_room(&mut map, now) {
            return own;
        }
        map.entries.insert(key.clone(), Entry::new(now, true, now));
        Take::Fetch {
            want: size.max(n),
            claimed: true,
        }
    }

    /// Whether the map has room for one more key, after forgetting entries
    /// that no longer hold anything (at most one sweep per interval: see
    /// the type docs).
    fn make_room(&self, map: &mut Map<K>, now: Instant) -> bool {
        if map.entries.len() >= self.capacity && map.next_sweep.is_none_or(|at| now >= at) {
            map.entries.retain(|_, e| e.is_useful(now));
            map.next_sweep = Some(now + map.max_age / 8);
        }
        map.entries.len() < self.capacity
    }

    /// Stores the `leftover` tokens of a claimed fetch, granted at `now`;
    /// they expire after the lease's maximum age.
    pub(crate) fn fill(&self, key: &K, leftover: u32, now: Instant) {
        let mut map = self.map.lock();
        let max_age = map.max_age;
        if let Some(entry) = map.entries.get_mut(key) {
            entry.fetching = false;
            if entry.expires <= now {
                entry.tokens = 0;
            }
            entry.tokens = entry.tokens.saturating_add(leftover);
            entry.expires = now + max_age;
            entry.fetched.notify_waiters();
        }
    }

    /// Gives up a claimed fetch (refused, failed or cancelled).
    pub(crate) fn release(&self, key: &K) {
        if let Some(entry) = self.map.lock().entries.get_mut(key) {
            entry.fetching = false;
            entry.fetched.notify_waiters();
        }
    }

    /// Remembers that Redis refused `n` tokens of `key`, which would conform
    /// after `retry_after` counted from `sent` (when the request left, so
    /// the block never outlasts Redis's own).
    pub(crate) fn block(&self, key: &K, n: u32, sent: Instant, retry_after: Duration) {
        let mut map = self.map.lock();
        let one = retry_after.saturating_sub(map.interval * n.saturating_sub(1));
        let until = sent + one;
        if let Some(entry) = map.entries.get_mut(key) {
            entry.blocked_until = entry.blocked_until.max(until);
            return;
        }
        if one.is_zero() || !self.make_room(&mut map, sent) {
            return;
        }
        map.entries
            .insert(key.clone(), Entry::new(sent, false, until));
    }

    /// Unexpired leased tokens of `key`.
    pub(crate) fn tokens(&self, key: &K, now: Instant) -> u32 {
        self.map
            .lock()
            .entries
            .get(key)
            .filter(|e| e.expires > now)
            .map_or(0, |e| e.tokens)
    }

    /// Keys with an entry.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().entries.len()
    }
}

#[cfg(test)]
impl PartialEq for Take {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Take::Taken, Take::Taken) | (Take::Wait(_), Take::Wait(_)) => true,
            (Take::Blocked(a), Take::Blocked(b)) => a == b,
            (
                Take::Fetch { want, claimed },
                Take::Fetch {
                    want: w,
                    claimed: c,
                },
            ) => want == w && claimed == c,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_millis(100);
    const I: Duration = Duration::from_millis(10);

    #[test]
    fn one_fetch_per_key_is_claimed_and_its_leftover_serves_the_next_requests() {
        let t = Instant::now();
        let leases = Leases::new(10, AGE, I, 8);
        assert_eq!(
            leases.take(&"k", 1, t, false),
            Take::Fetch {
                want: 10,
                claimed: true
            }
        );
        // A second request while the lease is being fetched asks for itself.
        assert_eq!(
            leases.take(&"k", 1, t, false),
            Take::Fetch {
                want: 1,
                claimed: false
            }
        );
        leases.fill(&"k", 9, t);
        for _ in 0..9 {
            assert_eq!(leases.take(&"k", 1, t, false), Take::Taken);
        }
        assert_eq!(leases.tokens(&"k", t), 0);
        assert!(matches!(
            leases.take(&"k", 1, t, false),
            Take::Fetch { claimed: true, .. }
        ));
    }

    #[test]
    fn leased_tokens_expire_after_the_maximum_age() {
        let t = Instant::now();
        let leases = Leases::new(10, AGE, I, 8);
        let _ = leases.take(&"k", 1, t, false);
        leases.fill(&"k", 9, t);
        assert_eq!(leases.tokens(&"k", t + AGE - Duration::from_nanos(1)), 9);
        assert_eq!(leases.tokens(&"k", t + AGE), 0);
        assert!(matches!(
            leases.take(&"k", 1, t + AGE, false),
            Take::Fetch { claimed: true, .. }
        ));
    }

    #[test]
    fn a_released_claim_lets_the_next_request_fetch_the_lease() {
        let t = Instant::now();
        let leases = Leases::new(4, AGE, I, 8);
        let _ = leases.take(&"k", 1, t, false);
        leases.release(&"k");
        assert!(matches!(
            leases.take(&"k", 1, t, false),
            Take::Fetch { claimed: true, .. }
        ));
    }

    #[test]
    fn a_heavy_request_asks_for_at_least_its_weight() {
        let t = Instant::now();
        let leases = Leases::new(4, AGE, I, 8);
        assert_eq!(
            leases.take(&"k", 7, t, false),
            Take::Fetch {
                want: 7,
                claimed: true
            }
        );
    }

    #[test]
    fn the_map_never_holds_more_than_its_capacity() {
        let t = Instant::now();
        let leases = Leases::new(4, AGE, I, 2);
        for key in 0..2 {
            let _ = leases.take(&key, 1, t, false);
            leases.fill(&key, 3, t);
        }
        // Full of live leases: a new key goes without.
        assert_eq!(
            leases.take(&2, 1, t, false),
            Take::Fetch {
                want: 1,
                claimed: false
            }
        );
        assert_eq!(leases.len(), 2);
        // Once they expire, room is made.
        assert!(matches!(
            leases.take(&2, 1, t + AGE, false),
            Take::Fetch { claimed: true, .. }
        ));
        assert!(leases.len() <= 2);
    }

    #[test]
    fn a_full_map_is_swept_for_room_at_most_once_per_interval() {
        let t = Instant::now();
        let leases = Leases::new(4, AGE, I, 2);
        for key in 0..2 {
            let _ = leases.take(&key, 1, t, false);
            leases.fill(&key, 3, t);
        }
        let without = Take::Fetch {
            want: 1,
            claimed: false,
        };
        // Just before the leases expire: a sweep finds nothing to drop.
        let before = t + AGE - Duration::from_millis(1);
        assert_eq!(leases.take(&2, 1, before, false), without);
        // They have expired, but the next sweep is not due yet: the map
        // stays full and new keys still go without.
        assert_eq!(leases.take(&3, 1, t + AGE, false), without);
        assert_eq!(leases.len(), 2);
        // One eighth of the maximum age after the first sweep: room.
        assert!(matches!(
            leases.take(&3, 1, before + AGE / 8, false),
            Take::Fetch { claimed: true, .. }
        ));
        assert_eq!(leases.len(), 1);
    }

    #[test]
    fn a_refusal_is_remembered_until_one_token_conforms() {
        let t = Instant::now();
        for size in [1, 10] {
            let leases = Leases::new(size, AGE, I, 8);
            // Redis refused 3 tokens: one conforms 2·I earlier.
            leases.block(&"k", 3, t, Duration::from_millis(50));
            assert_eq!(
                leases.take(&"k", 1, t, false),
                Take::Blocked(Duration::from_millis(30))
            );
            assert_eq!(
                leases.take(&"k", 2, t, false),
                Take::Blocked(Duration::from_millis(40))
            );
            let later = t + Duration::from_millis(30);
            assert!(matches!(
                leases.take(&"k", 1, later, false),
                Take::Fetch { .. }
            ));
            assert_eq!(
                leases.take(&"k", 2, later, false),
                Take::Blocked(Duration::from_millis(10))
            );
        }
    }

    #[test]
    fn without_leasing_nothing_is_claimed_and_only_refusals_take_room() {
        let t = Instant::now();
        let leases = Leases::new(1, AGE, I, 1);
        assert_eq!(
            leases.take(&"a", 1, t, false),
            Take::Fetch {
                want: 1,
                claimed: false
            }
        );
        assert_eq!(leases.len(), 0);
        leases.block(&"a", 1, t, I);
        leases.block(&"b", 1, t, I);
        assert_eq!(leases.len(), 1, "capacity 1 holds one live refusal");
        assert!(matches!(leases.take(&"b", 1, t, false), Take::Fetch { .. }));
    }

    #[tokio::test]
    async fn a_request_waiting_for_the_lease_fetch_is_woken_by_its_fill_or_release() {
        let t = Instant::now();
        let leases = Leases::new(10, AGE, I, 8);
        let _ = leases.take(&"k", 1, t, true);
        let Take::Wait(woken) = leases.take(&"k", 1, t, true) else {
            panic!("a fetch is in flight");
        };
        leases.fill(&"k", 9, t);
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("woken by the fill");
        assert_eq!(leases.take(&"k", 1, t, true), Take::Taken);

        let later = t + AGE;
        let _ = leases.take(&"k", 1, later, true);
        let Take::Wait(woken) = leases.take(&"k", 1, later, true) else {
            panic!("a fetch is in flight");
        };
        leases.release(&"k");
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("woken by the release");
    }
}
