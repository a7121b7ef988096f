#!/usr/bin/env bash
# Instructions per request of the whole e2e server (issue 30), under
# callgrind: `e2e_server` (hyper or axum; bare, floodwall or peer) serving
# `h2load` requests over HTTP/1.1 (`--h1`) or HTTP/2. In one process: a
# warm-up of 2,000 requests, then callgrind's counters are zeroed
# (`callgrind_control -z`), then 2,000 requests and a dump, then 12,000 and
# a dump; the difference of the two dumps over 10,000 is the count per
# request. Start-up, one-time initialisation (such as the peer's clock
# calibrating itself, which a count over two processes caught a varying
# share of) and each phase's connection set-up cancel out. Deterministic
# for one binary up to how the generator's reads batch, unlike CPU time on
# these shared machines, and it counts what the layers cost inside a real
# server: the per-request service clone hyper-util makes, the futures moved
# through hyper, the allocator. User space only: the kernel's share
# (syscalls, TCP) is the same for every stack.
#
#   bash benches/e2e/icount.sh                  # every server, stack and protocol,
#                                               # and the proxies (bare, layers-off, gateway)
#   bash benches/e2e/icount.sh hyper floodwall h1
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../../scripts/apt-install.sh
source scripts/apt-install.sh
# shellcheck source=lib.sh
source benches/e2e/lib.sh
command -v h2load >/dev/null || apt_install nghttp2-client
command -v valgrind >/dev/null || apt_install valgrind
cargo build -q --release -p floodwall-benches --no-default-features --bin e2e_server
BIN=target/release/e2e_server
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; jobs -p | xargs -r kill 2>/dev/null' EXIT

# `n` requests from h2load to `addr` over `proto`.
load() {
    local proto=$1 addr=$2 n=$3
    if [ "$proto" = h1 ]; then
        h2load --h1 -n "$n" -c 32 "http://$addr/" >/dev/null
    else
        h2load -n "$n" -c 32 -m 10 "http://$addr/" >/dev/null
    fi
}

# The instructions a dump file counted.
counted() {
    grep -m1 '^summary:' "$1" | awk '{print $2}'
}

one() {
    local server=$1 stack=$2 proto=$3
    local out="$tmp/$server-$stack-$proto"
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$BIN" "$server" "$stack" >"$out.txt" 2>/dev/null &
    local pid=$! addr a b
    addr=$(listening_on "$out.txt")
    load "$proto" "$addr" 2000
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$proto" "$addr" 2000
    callgrind_control -d "$pid" >/dev/null 2>&1
    load "$proto" "$addr" 12000
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    a=$(counted "$out.cg.1")
    b=$(counted "$out.cg.2")
    printf '%s\t%s\t%s\t%s\n' "$server" "$proto" "$stack" "$(( (b - a) / 10000 ))"
}

printf 'server\tprotocol\tstack\tinstructions/request\n'
if [ $# -eq 3 ]; then
    one "$1" "$2" "$3"
else
    for server in hyper axum; do
        for proto in h1 h2; do
            for stack in bare floodwall peer; do
                one "$server" "$stack" "$proto"
            done
        done
    done
    # The gateway (its upstream in the same process, counted alike).
    for stack in bare layers-off gateway; do
        one proxy "$stack" h1
    done
fi
