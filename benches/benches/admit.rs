//! Wall time per request on every layer's admit path next to its nearest
//! peer: the same cases `benches/icount.sh` counts instructions of
//! (`floodwall_benches::admit`). `cargo bench -p floodwall-benches --bench admit`.

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall_benches::admit;

fn admit_paths(c: &mut Criterion) {
    let rt = floodwall_benches::bench_runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("admit");
    for case in admit::CASES {
        g.bench_function(*case, |b| {
            b.iter_custom(|iters| admit::run(case, iters).expect("a known case"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = floodwall_benches::criterion_config();
    targets = admit_paths
}
criterion_main!(benches);
