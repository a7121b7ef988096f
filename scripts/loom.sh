#!/usr/bin/env bash
# Runs the loom models of floodwall's lock-free cores (tests/loom.rs in the
# core (its shared trailing window), token-bucket, sliding-window and breaker
# crates, and the worker handoff in
# floodwall-codel's layer): the cores' atomics and
# locks become loom's (`--cfg floodwall_loom`, see floodwall_core::sync) and
# every interleaving up to LOOM_MAX_PREEMPTIONS preemptions is explored.
# Uses its own target directory so the normal build is not invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg floodwall_loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test --release \
    -p floodwall-core -p floodwall-token-bucket -p floodwall-sliding-window -p floodwall-breaker \
    --test loom -- --test-threads=1 "$@"
cargo test --release -p floodwall-codel --lib loom_model -- --test-threads=1 "$@"
