//! What an [`AggregateLayer`] aggregates: additive [`Update`]s, and how
//! deltas for one key merge ([`Merge`], [`Sum`]).

#[cfg(doc)]
use super::AggregateLayer;

/// An additive update: add `delta` to `key`'s record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Update<K, D> {
    /// The record.
    pub key: K,
    /// What to add to it.
    pub delta: D,
}

/// How deltas for one key merge: associative (`merge(merge(a, b), c) ==
/// merge(a, merge(b, c))`), so a batch is the same whatever the order its
/// updates arrived in. [`Sum`] adds them.
pub trait Merge<D>: Send + Sync + 'static {
    /// `a` and `b` as one delta.
    fn merge(&self, a: D, b: D) -> D;
}

/// Adds deltas (`+1`, `+2`, `−1` → `+2`), saturating for integers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

macro_rules! sum_saturating {
    ($($t:ty),*) => {$(
        impl Merge<$t> for Sum {
            fn merge(&self, a: $t, b: $t) -> $t {
                a.saturating_add(b)
            }
        }
    )*};
}
sum_saturating!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl Merge<f64> for Sum {
    fn merge(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}

impl<D, F> Merge<D> for F
where
    F: Fn(D, D) -> D + Send + Sync + 'static,
{
    fn merge(&self, a: D, b: D) -> D {
        self(a, b)
    }
}
