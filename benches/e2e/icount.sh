#!/usr/bin/env bash
# Instructions per request of the whole e2e server (issue 30), under
# callgrind: `e2e_server` (hyper or axum; bare, floodwall or peer) serving
# `h2load -n N` requests over HTTP/1.1 (`--h1`) or HTTP/2, run twice (2,000
# and 12,000 requests) so that start-up cancels out. Deterministic for one
# binary, unlike CPU time on these shared machines, and it counts what the
# layers cost inside a real server: the per-request service clone hyper-util
# makes, the futures moved through hyper, the allocator. User space only:
# the kernel's share (syscalls, TCP) is the same for every stack.
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

# Total instructions of a server that answered `n` requests.
total() {
    local server=$1 stack=$2 proto=$3 n=$4
    local out="$tmp/$server-$stack-$proto-$n"
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$BIN" "$server" "$stack" >"$out.txt" 2>/dev/null &
    local pid=$! addr
    addr=$(listening_on "$out.txt")
    if [ "$proto" = h1 ]; then
        h2load --h1 -n "$n" -c 32 "http://$addr/" >/dev/null
    else
        h2load -n "$n" -c 32 -m 10 "http://$addr/" >/dev/null
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    grep -m1 '^summary:' "$out.cg" | awk '{print $2}'
}

one() {
    local a b
    a=$(total "$1" "$2" "$3" 2000)
    b=$(total "$1" "$2" "$3" 12000)
    printf '%s\t%s\t%s\t%s\n' "$1" "$3" "$2" "$(( (b - a) / 10000 ))"
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
