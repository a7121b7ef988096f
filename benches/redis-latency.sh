#!/usr/bin/env bash
# The Redis limiter's decision latency, two builds side by side in one run:
#   bash benches/redis-latency.sh BASELINE_BINARY [ROUNDS] [SAMPLES]
# builds this tree's `redis_latency` (benches/src/bin/redis_latency.rs), starts
# one redis-server on core 0, and runs the baseline and this build alternately
# on core 1, ROUNDS times each (default 6, SAMPLES decisions per mode, default
# 20000). Prints every round, then per mode the median p50 / p99 of each
# build and the ratio this/baseline. Make a baseline by building
# `redis_latency` at the commit to compare with and copying the binary away.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=${1:?usage: redis-latency.sh BASELINE_BINARY [ROUNDS] [SAMPLES]}
rounds=${2:-6}
samples=${3:-20000}
bash scripts/ensure-redis-server.sh >/dev/null
cargo build --release -q -p floodwall-benches --bin redis_latency
current=target/release/redis_latency
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --loglevel warning --daemonize no >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
out=$(mktemp)
for round in $(seq "$rounds"); do
    for which in baseline current; do
        bin=$baseline; [ "$which" = current ] && bin=$current
        taskset -c 1 "$bin" "127.0.0.1:$port" "$samples" | sed "s/^/$which $round /" | tee -a "$out"
    done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
for mode in sorted({r[2] for r in rows}):
    med = {}
    for which in ("baseline", "current"):
        sel = [r for r in rows if r[0] == which and r[2] == mode]
        med[which] = (st.median(float(r[3]) for r in sel), st.median(float(r[4]) for r in sel))
    b, c = med["baseline"], med["current"]
    print(f"{mode}: p50 {b[0]:.1f} -> {c[0]:.1f} us ({c[0]/b[0]:.2f}x), "
          f"p99 {b[1]:.1f} -> {c[1]:.1f} us ({c[1]/b[1]:.2f}x)")
PY
