#!/usr/bin/env bash
# Regenerates every number and plot in docs/performance.md: the criterion
# suite, then the overload lab (virtual time), the end-to-end gateway
# comparison (real time, loopback), the distributed limiter against a real
# redis-server, and the document itself.
# Run it on an otherwise idle machine; it takes about ten minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-redis-server.sh >/dev/null
cargo bench -p floodwall-benches
cargo run --release -p floodwall-benches --bin lab -- report
