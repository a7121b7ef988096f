//! Loom models of the shared trailing window (`window::TrailingCounts`): a
//! record, a take-back or a reset racing the advance that expires buckets
//! never loses a count from a total without its bucket, nor takes a total
//! below zero.
//! Run by `scripts/loom.sh` (`RUSTFLAGS="--cfg floodwall_loom"`).
#![cfg(floodwall_loom)]

use floodwall_core::window::TrailingCounts;
use loom::sync::Arc;
use loom::thread;

/// Runs `a` and `b` on two threads against the same window and returns
/// both results.
fn race<const N: usize, A, B>(
    w: &Arc<TrailingCounts<N>>,
    a: impl FnOnce(&TrailingCounts<N>) -> A + Send + 'static,
    b: impl FnOnce(&TrailingCounts<N>) -> B + Send + 'static,
) -> (A, B)
where
    A: Send + 'static,
    B: Send + 'static,
{
    let (wa, wb) = (w.clone(), w.clone());
    let a = thread::spawn(move || a(&wa));
    let b = thread::spawn(move || b(&wb));
    (a.join().unwrap(), b.join().unwrap())
}

/// Far enough ahead that every bucket has left the window: the totals come
/// back to zero only if they held exactly what the buckets held.
const LATER: u64 = 100;

#[test]
fn a_record_racing_an_advance_is_counted_once() {
    loom::model(|| {
        // Two buckets; bucket 0 holds one count.
        let w = Arc::new(TrailingCounts::<1>::new(2));
        w.add(0, 0);
        // The record, lagging or not, lands in bucket 0 (expired by the
        // advance) or in bucket 2 (current after it); the advance makes
        // bucket 2 current: buckets 0 and 1 leave the window.
        let (after_add, [seen]) = race(&w, move |w| w.add(0, 0), move |w| w.totals(2));
        assert!((1..=2).contains(&after_add), "{after_add}");
        assert!(seen <= 1, "the advance saw {seen}");
        let [now] = w.totals(2);
        assert!(now <= 1, "{now}");
        assert_eq!(w.totals(LATER), [0], "the total and the buckets agree");
    });
}

#[test]
fn a_record_of_several_counters_racing_an_advance_never_wraps() {
    loom::model(|| {
        let w = Arc::new(TrailingCounts::<2>::new(1));
        let (recorded, [calls, failures]) =
            race(&w, move |w| w.record(0, [true, true]), move |w| w.totals(1));
        assert_eq!(recorded, [1, 1]);
        assert!(calls <= 1 && failures <= 1, "{calls} {failures}");
        // The expiry may fall between the record's counters: each is then
        // expired with bucket 0 or counted in bucket 1, on its own.
        let [calls, failures] = w.totals(1);
        assert!(calls <= 1 && failures <= 1, "{calls} {failures}");
        assert_eq!(w.totals(LATER), [0, 0], "the totals and the buckets agree");
    });
}

#[test]
fn a_take_back_racing_an_advance_never_goes_below_zero() {
    loom::model(|| {
        // Two buckets; one count in bucket 0, one in bucket 1.
        let w = Arc::new(TrailingCounts::<1>::new(2));
        w.add(0, 0);
        w.add(1, 0);
        // The take-back finds bucket 0's count if it is still in the
        // window; the advance makes bucket 2 current, and bucket 0 leaves.
        let (removed, [seen]) = race(&w, move |w| w.remove(0, 0), move |w| w.totals(2));
        // Either way bucket 0's count is gone: taken back or expired.
        assert_eq!(seen, 1, "removed: {removed}");
        assert_eq!(w.totals(2), [1]);
        assert_eq!(w.totals(LATER), [0], "the total and the buckets agree");
    });
}

#[test]
fn a_record_racing_a_reset_never_wraps() {
    loom::model(|| {
        let w = Arc::new(TrailingCounts::<1>::new(2));
        w.add(0, 0);
        let (after_add, _) = race(&w, move |w| w.add(0, 0), move |w| w.reset());
        assert!((1..=2).contains(&after_add), "{after_add}");
        // The record landed wholly before the reset (gone) or after it.
        let [now] = w.totals(0);
        assert!(now <= 1, "{now}");
        assert_eq!(w.totals(LATER), [0], "the total and the buckets agree");
    });
}
