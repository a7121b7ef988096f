//! Keys of bounded size for keyed limiters, whatever the client sends.
//!
//! A keyed limiter remembers up to `capacity` keys; when the key comes from
//! the request (a user id header, an API key, a path), a client can make
//! each one as long as the server's header limit allows, and multiply the
//! map's memory by it. [`BoundedKey`] keeps a key of up to
//! [`MAX_KEY_LEN`] bytes as it is and replaces a longer one (or one that is
//! not UTF-8) by a 128-bit keyed digest, so every key costs at most a fixed
//! size, in memory and in Redis.

use std::fmt;
#[allow(deprecated)] // SipHash-2-4, keyed: the one keyed PRF in std (see `digest`).
use std::hash::SipHasher;
use std::hash::{Hash, Hasher};

/// The longest key kept as it is; longer ones become a digest.
pub const MAX_KEY_LEN: usize = 64;

/// The secret a [`BoundedKey`] digest is keyed with. Instances that share a
/// limit (through Redis) must share the seed; keep it out of configs that
/// are checked in (an environment variable, a secret file). With a secret
/// seed nobody can aim two long keys at one digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySeed([u64; 4]);

impl KeySeed {
    /// The seed of [`BoundedKey::new`]: public, so digests of long keys
    /// are stable across instances and restarts but not secret.
    pub const PUBLIC: KeySeed = KeySeed([
        0x666c_6f6f_6477_616c,
        0x6c2d_6b65_7973_2d31,
        0x3238_2d62_6974_2d64,
        0x6967_6573_742d_7631,
    ]);

    /// A seed derived from secret bytes (any length; at least 16 random
    /// bytes make it unguessable).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut words = [0u64; 4];
        for (i, word) in words.iter_mut().enumerate() {
            let mut h = siphash(Self::PUBLIC, i as u64);
            h.write(secret);
            *word = h.finish();
        }
        KeySeed(words)
    }
}

impl fmt::Debug for KeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Self::PUBLIC {
            "KeySeed(public)"
        } else {
            "KeySeed(secret)"
        })
    }
}

#[allow(deprecated)]
fn siphash(seed: KeySeed, lane: u64) -> SipHasher {
    let [a, b, c, d] = seed.0;
    SipHasher::new_with_keys(a ^ lane, b ^ d ^ lane.wrapping_mul(c | 1))
}

/// A limiter key of bounded size: up to [`MAX_KEY_LEN`] bytes of UTF-8 as
/// they are, anything else as a 128-bit keyed digest. Distinct keys give
/// distinct [`Display`](fmt::Display) strings (a digest shows as `~` and 32
/// hex digits; a kept key that starts with `~` shows with one more), so it
/// can name a Redis key too.
///
/// ```
/// use floodwall_core::key::{BoundedKey, MAX_KEY_LEN};
///
/// let short = BoundedKey::new("user:alice");
/// assert_eq!(short.to_string(), "user:alice");
/// let long = BoundedKey::new("x".repeat(10_000));
/// assert!(long.is_digest());
/// assert_eq!(long.to_string().len(), 33);
/// assert_eq!(long, BoundedKey::new("x".repeat(10_000)));
/// assert_ne!(long, BoundedKey::new("x".repeat(10_001)));
/// # let _ = MAX_KEY_LEN;
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BoundedKey(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Kept { len: u8, bytes: [u8; MAX_KEY_LEN] },
    Digest([u8; 16]),
}

impl BoundedKey {
    /// `key` as it is when it is UTF-8 of at most [`MAX_KEY_LEN`] bytes,
    /// else its digest under [`KeySeed::PUBLIC`].
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self::seeded(key, KeySeed::PUBLIC)
    }

    /// As [`new`](Self::new), digests keyed with `seed`.
    pub fn seeded(key: impl AsRef<[u8]>, seed: KeySeed) -> Self {
        let key = key.as_ref();
        if key.len() <= MAX_KEY_LEN && std::str::from_utf8(key).is_ok() {
            let mut bytes = [0; MAX_KEY_LEN];
            bytes[..key.len()].copy_from_slice(key);
            return BoundedKey(Repr::Kept {
                len: key.len() as u8,
                bytes,
            });
        }
        BoundedKey(Repr::Digest(digest(seed, key)))
    }

    /// Whether the key was too long (or not UTF-8) and is a digest.
    pub fn is_digest(&self) -> bool {
        matches!(self.0, Repr::Digest(_))
    }

    /// The key as given, when it was kept.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            Repr::Kept { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).ok(),
            Repr::Digest(_) => None,
        }
    }
}

/// Two keyed SipHash-2-4 lanes over the bytes (and their length): 128 bits.
fn digest(seed: KeySeed, key: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    for (lane, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut h = siphash(seed, 0x100 + lane as u64);
        h.write_usize(key.len());
        h.write(key);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl fmt::Display for BoundedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Kept { .. } => {
                let s = self.as_str().unwrap_or_default();
                if s.starts_with('~') {
                    f.write_str("~")?;
                }
                f.write_str(s)
            }
            Repr::Digest(d) => {
                f.write_str("~")?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Debug for BoundedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoundedKey({self})")
    }
}

impl From<&str> for BoundedKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

impl From<String> for BoundedKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn short_utf8_keys_are_kept_and_everything_else_is_digested() {
        let k = BoundedKey::new("a".repeat(MAX_KEY_LEN));
        assert!(!k.is_digest());
        assert_eq!(k.as_str(), Some("a".repeat(MAX_KEY_LEN).as_str()));
        assert!(BoundedKey::new("a".repeat(MAX_KEY_LEN + 1)).is_digest());
        assert!(BoundedKey::new([0xff, 0xfe]).is_digest(), "not UTF-8");
        assert_eq!(BoundedKey::new("").to_string(), "");
    }

    #[test]
    fn displays_are_distinct_for_distinct_keys() {
        let long = BoundedKey::new("z".repeat(100));
        let shown = long.to_string();
        assert_eq!(shown.len(), 33);
        // A kept key spelling the digest's display does not collide.
        let forged = BoundedKey::new(&shown);
        assert_ne!(forged.to_string(), shown);
        assert_eq!(forged.to_string(), format!("~{shown}"));
        let mut seen = HashSet::new();
        for key in [
            "~",
            "~~",
            "a",
            "~a",
            "",
            "z".repeat(100).as_str(),
            "z".repeat(101).as_str(),
        ] {
            assert!(seen.insert(BoundedKey::new(key).to_string()), "{key}");
        }
    }

    #[test]
    fn digests_depend_on_the_seed_and_are_stable_for_one() {
        let long = "k".repeat(200);
        let secret = KeySeed::from_secret(b"correct horse battery staple");
        assert_eq!(
            BoundedKey::seeded(&long, secret),
            BoundedKey::seeded(&long, secret)
        );
        assert_ne!(BoundedKey::seeded(&long, secret), BoundedKey::new(&long));
        assert_ne!(secret, KeySeed::from_secret(b"another secret"));
        assert_eq!(format!("{secret:?}"), "KeySeed(secret)");
        // Short keys do not depend on the seed.
        assert_eq!(
            BoundedKey::seeded("alice", secret),
            BoundedKey::new("alice")
        );
    }

    #[test]
    fn a_key_costs_a_fixed_size() {
        assert!(std::mem::size_of::<BoundedKey>() <= MAX_KEY_LEN + 2);
    }
}
