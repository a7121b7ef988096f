//! What the sketch is built from: a bucket packed in one `u64`
//! (fingerprint, member bit, count), the key hash and its per-row bucket
//! index, the top-k list's map, and the per-thread generator for the decay
//! draws.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;

/// A bucket in one `u64`: the fingerprint in the high 32 bits (its top bit
/// set while the key holding the bucket is in the top-k list), the count in
/// the low 32.
pub(super) const MEMBER: u64 = 1 << 63;
const FP_MASK: u64 = 0x7FFF_FFFF << 32;

pub(super) fn pack(fingerprint: u64, count: u64) -> u64 {
    fingerprint | count
}

pub(super) fn count_of(bucket: u64) -> u64 {
    bucket & 0xFFFF_FFFF
}

pub(super) fn fingerprint_of(bucket: u64) -> u64 {
    bucket & FP_MASK
}

/// A key's hash, mixed (the splitmix64 finalizer over a seeded FxHash-
/// style fold): the row indices and the fingerprint come from it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        splitmix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517C_C1B7_2722_0A95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Seeded(pub(super) u64);

impl BuildHasher for Seeded {
    type Hasher = Mix;

    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

/// Threads seeded one after another.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each thread's own generator for the decay draws: no shared line.
    static RNG: Cell<u64> = Cell::new(
        splitmix(THREADS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
    );
}

/// A uniform draw in `[0, 2^64)` (xorshift64*).
pub(super) fn draw() -> u64 {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// The bucket of hash `h` in `row`: the hash re-mixed per row.
#[inline]
pub(super) fn index(h: u64, row: usize, width: usize) -> usize {
    let z =
        (h ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (((z >> 32) * width as u64) >> 32) as usize
}

/// The top-k list: members by hash.
pub(super) type Members<K> = HashMap<u64, K, std::hash::BuildHasherDefault<Identity>>;

/// Hashes already mixed: the members are keyed by them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A key's fingerprint from its hash: 31 bits, never zero, in the bucket's
/// high half.
pub(super) fn fingerprint(h: u64) -> u64 {
    ((h >> 33) | 1) << 32
}
