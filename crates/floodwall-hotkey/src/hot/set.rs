//! What the hot-key layer publishes: the hot set ([`HotSet`]), the
//! extensions it puts in requests ([`Hot`], [`Keyed`]) and the changes its
//! callbacks see ([`HotChange`]).

use std::hash::Hash;

use hashbrown::HashMap;

/// The hot keys at one instant, with their estimates.
#[derive(Debug, Clone)]
pub struct HotSet<K> {
    pub(super) keys: HashMap<K, u32>,
}

impl<K> Default for HotSet<K> {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> HotSet<K> {
    /// Whether `key` is hot.
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains_key(key)
    }

    /// `key`'s estimate, if it is hot.
    pub fn estimate(&self, key: &K) -> Option<u32> {
        self.keys.get(key).copied()
    }

    /// The hot keys and their estimates (in no order).
    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.keys.iter().map(|(k, &e)| (k, e))
    }

    /// How many keys are hot.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is hot.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Put in a hot request's extensions: its key and estimate, for the
/// handler (and [`HotCacheLayer`](crate::HotCacheLayer)) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hot<K> {
    /// The request's key.
    pub key: K,
    /// Its estimate when the hot set was last read.
    pub estimate: u32,
}

/// Put in every counted request's extensions (hot or not): its key, for
/// [`HotCacheLayer`](crate::HotCacheLayer) to coalesce cold reads too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<K>(pub K);

/// A change of the hot set, as the change callbacks see it.
#[derive(Debug)]
pub struct HotChange<'a, K> {
    /// Keys hot now that were not.
    pub heated: &'a [K],
    /// Keys hot before that are not now.
    pub cooled: &'a [K],
    /// The hot set now.
    pub hot: &'a HotSet<K>,
}
