#!/usr/bin/env bash
# Instruction counts per request on every layer's admit path (callgrind),
# next to each layer's nearest peer. Deterministic for one binary: a +5 %
# change is visible. Usage:
#   bash benches/icount.sh [case ...]      # all cases when none is named
# Prints `case instructions/request` lines (TSV on stdout). The cases are
# floodwall_benches::admit (also timed by `cargo bench --bench admit`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { sudo -n apt-get install -y valgrind >/dev/null 2>&1 || apt-get install -y valgrind >/dev/null; }
cargo build -q --release -p floodwall-benches --no-default-features --bin icount
bin=target/release/icount
small=${ICOUNT_SMALL:-2000}
large=${ICOUNT_LARGE:-12000}
cases=("$@")
[ ${#cases[@]} -eq 0 ] && mapfile -t cases < <("$bin" list)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
total() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" "$1" "$2" >/dev/null 2>"$tmp/err" \
        || { cat "$tmp/err" >&2; exit 1; }
    grep -m1 '^summary:' "$tmp/out" | awk '{print $2}'
}
printf 'case\tinstructions/request\n'
for c in "${cases[@]}"; do
    a=$(total "$c" "$small")
    b=$(total "$c" "$large")
    printf '%s\t%s\n' "$c" "$(( (b - a) / (large - small) ))"
done
