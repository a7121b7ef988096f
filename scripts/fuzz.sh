#!/usr/bin/env bash
# Runs every cargo-fuzz target of floodwall for a bounded time each:
#   fuzz/                        priority_header, gateway_config, forwarded_headers,
#                                retry_headers, redis_script_reply
#   crates/floodwall-deadline/fuzz  parse_timeouts (grpc-timeout, HTTP header)
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 10)
# Installs cargo-fuzz from crates.io when it is missing. cargo-fuzz needs
# nightly compiler flags: a nightly toolchain when one is installed, else
# the stable one with RUSTC_BOOTSTRAP=1 (the same flags, unlocked).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install --locked cargo-fuzz)"
    cargo install --locked --quiet cargo-fuzz
fi
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi

run() {
    local dir="$1" target="$2"
    local scratch log
    scratch="$(mktemp -d)"
    log="$(mktemp)"
    echo "fuzz: $target for ${seconds}s ($dir)"
    mkdir -p "$dir/corpus/$target"
    # New inputs go to a scratch corpus; the committed seeds are only read.
    if ! (cd "$dir" && cargo "${toolchain[@]}" fuzz run "$target" "$scratch" "corpus/$target" -- \
            -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (a crash is saved under $dir/artifacts/$target)" >&2
        exit 1
    fi
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)" "$log" || true
    rm -rf "$scratch" "$log"
}

run fuzz priority_header
run fuzz gateway_config
run fuzz forwarded_headers
run fuzz retry_headers
run fuzz redis_script_reply
run crates/floodwall-deadline/fuzz parse_timeouts
