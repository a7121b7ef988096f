//! HeavyKeeper adds per second on one thread and on two: floodwall's
//! lock-free buckets, and the same sketch behind one mutex (the aegis
//! design), over a Zipf(1.0) stream of room ids. `cargo bench -p floodwall-benches --bench hotkey`.
//!
//! Each iteration adds a block of 4,096 keys per thread; with two threads,
//! both add their blocks at once (`std::thread::scope`), so the time per
//! iteration is the time two threads take for 8,192 adds.

use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodwall::hotkey::{HeavyKeeper, TopKConfig};
use tokio::time::Instant;

const BLOCK: usize = 4_096;

/// One add into a sketch.
type Add<'a> = dyn Fn(&u64) -> u32 + Sync + 'a;

/// A Zipf(1.0) stream over 1,000,000 keys (inverse CDF by binary search,
/// drawn once, outside the timing).
fn zipf_keys(n: usize, seed: u64) -> Vec<u64> {
    let keys = 1_000_000usize;
    let mut cdf = Vec::with_capacity(keys);
    let mut total = 0.0;
    for r in 1..=keys {
        total += 1.0 / r as f64;
        cdf.push(total);
    }
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * total;
            cdf.partition_point(|&c| c < u) as u64
        })
        .collect()
}

fn adds(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let streams = [zipf_keys(BLOCK, 1), zipf_keys(BLOCK, 2)];
    let now = Instant::now();
    let mut g = c.benchmark_group("hotkey");
    let config = TopKConfig {
        fade_every: None,
        ..TopKConfig::default()
    };
    let lock_free = HeavyKeeper::new(config).unwrap();
    let one_mutex = std::sync::Mutex::new(HeavyKeeper::new(config).unwrap());
    let variants: [(&str, &Add<'_>); 2] = [
        ("lock-free", &|k| lock_free.add(k, now)),
        ("one-mutex", &|k| one_mutex.lock().unwrap().add(k, now)),
    ];
    for (name, add) in variants {
        g.throughput(Throughput::Elements(BLOCK as u64));
        g.bench_function(format!("{name}/1-thread"), |b| {
            b.iter(|| {
                for k in &streams[0] {
                    std::hint::black_box(add(k));
                }
            })
        });
        g.throughput(Throughput::Elements(2 * BLOCK as u64));
        g.bench_function(format!("{name}/2-threads"), |b| {
            b.iter_custom(|iters| {
                let started = StdInstant::now();
                std::thread::scope(|s| {
                    for stream in &streams {
                        s.spawn(move || {
                            for _ in 0..iters {
                                for k in stream {
                                    std::hint::black_box(add(k));
                                }
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config().measurement_time(Duration::from_secs(3));
    targets = adds
}
criterion_main!(benches);
