#!/usr/bin/env bash
# What floodwall costs a server, under Debian's real load generators
# (issue 30): a minimal hyper server and a minimal axum server
# (`e2e_server`), each bare, with floodwall's recommended server stack and
# with the peer stack (tower_governor + tower Timeout + LoadShed +
# ConcurrencyLimit), driven by `wrk` (HTTP/1.1) and `h2load` (HTTP/2, the
# gRPC shape). The server runs on one core, the generator on another;
# rounds alternate every configuration (in reverse order every other
# round); the server's CPU time comes from /proc. Prints a Markdown table:
# medians over the rounds, with the spread.
# A benchmark, not a test: not part of CI.
#
#   bash benches/e2e/run.sh            # ROUNDS=3 DURATION=5 CONNS=32
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../../scripts/apt-install.sh
source scripts/apt-install.sh
# shellcheck source=lib.sh
source benches/e2e/lib.sh
command -v wrk >/dev/null || apt_install wrk
command -v h2load >/dev/null || apt_install nghttp2-client
command -v taskset >/dev/null || apt_install util-linux
cargo build -q --release -p floodwall-benches --no-default-features --bin e2e_server
BIN=target/release/e2e_server
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
SERVERS=${SERVERS:-"hyper axum"}
GENERATORS=${GENERATORS:-"wrk h2load"}
STACKS=${STACKS:-"bare floodwall peer"}
PROXIES=${PROXIES:-"bare layers-off gateway"}
CLK=$(getconf CLK_TCK)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; jobs -p | xargs -r kill 2>/dev/null' EXIT
results="$tmp/results.tsv"

# utime and stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

run_one() {
    local server=$1 stack=$2 gen=$3 round=$4
    # A file of its own: a stale address from the previous server is never read.
    local out="$tmp/srv-$server-$stack-$gen-$round.txt"
    taskset -c "$SERVER_CORE" "$BIN" "$server" "$stack" >"$out" 2>&1 &
    local pid=$! addr
    addr=$(listening_on "$out")
    # Warm-up: connections, allocator, keyed-limiter entries.
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d1s "http://$addr/" >/dev/null
    local t0 requests rps p50 p99
    t0=$(cpu_ticks "$pid")
    if [ "$gen" = wrk ]; then
        taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$addr/" >"$tmp/gen.txt"
        requests=$(awk '/requests in/ {print $1}' "$tmp/gen.txt")
        rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/gen.txt")
        p50=$(awk '$1 == "50%" {print $2}' "$tmp/gen.txt")
        p99=$(awk '$1 == "99%" {print $2}' "$tmp/gen.txt")
    else
        taskset -c "$LOAD_CORE" h2load -c"$CONNS" -m10 -D"$DURATION" "http://$addr/" >"$tmp/gen.txt"
        requests=$(awk '/^requests:/ {print $8}' "$tmp/gen.txt")
        rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$tmp/gen.txt")
        p50=$(awk '/^time for request:/ {print $6}' "$tmp/gen.txt")
        p99="-"
    fi
    local t1
    t1=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    # User and system time per request, in µs.
    local user_us sys_us cpu_us
    read -r user_us sys_us < <(awk -v a="$t0" -v b="$t1" -v clk="$CLK" -v n="$requests" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        printf "%.3f %.3f\n", (y[1] - x[1]) / clk * 1e6 / n, (y[2] - x[2]) / clk * 1e6 / n }')
    cpu_us=$(awk -v u="$user_us" -v s="$sys_us" 'BEGIN {printf "%.3f", u + s}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$gen" "$stack" "$round" "$rps" "$cpu_us" "$p50" "$p99" "$user_us" "$sys_us" >>"$results"
    echo "e2e: round $round $server $gen $stack: $rps req/s, $cpu_us µs CPU/request ($user_us user), p50 $p50" >&2
}

# `$@` in the order of round `$1`: as given in odd rounds, reversed in even
# ones. The shared host's speed drifts over minutes (a bare server's rounds
# have moved by half from first to last); with one fixed order the last
# stack of every round would always meet the host a little slower, and the
# ratios between stacks would carry that drift. Alternating the order
# cancels a steady drift from the ratios of the medians and evens it out
# across the per-round ratios.
in_order() {
    local round=$1
    shift
    if [ $((round % 2)) -eq 1 ]; then
        echo "$@"
    else
        local reversed=() item
        for item in "$@"; do reversed=("$item" "${reversed[@]}"); done
        echo "${reversed[@]}"
    fi
}

for round in $(seq "$ROUNDS"); do
    for server in $SERVERS; do
        for gen in $GENERATORS; do
            # shellcheck disable=SC2086 # word lists
            for stack in $(in_order "$round" $STACKS); do
                run_one "$server" "$stack" "$gen" "$round"
            done
        done
    done
    # The gateway: proxy and upstream share the server's core.
    # shellcheck disable=SC2086 # word lists
    for stack in $(in_order "$round" $PROXIES); do
        run_one proxy "$stack" wrk "$round"
    done
done

python3 - "$results" "$ROUNDS" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
from collections import defaultdict
path, rounds, duration, conns = sys.argv[1], *sys.argv[2:]
rows = defaultdict(list)
for line in open(path):
    server, gen, stack, _, rps, cpu, p50, p99, user, system = line.rstrip("\n").split("\t")
    rows[(server, gen, stack)].append((float(rps), float(cpu), p50, p99, float(user), float(system)))
print(f"{rounds} alternating rounds of {duration} s, {conns} connections; server on one core, "
      "generator on another; medians, spread min–max.\n")
print("| server | generator | stack | req/s | server CPU µs/request | user / system µs | vs bare | p50 | p99 |")
print("|---|---|---|---:|---:|---:|---:|---|---|")
order = ["bare", "floodwall", "peer", "layers-off", "gateway"]
for (server, gen, stack), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]))):
    rps = [r[0] for r in rs]
    cpu = [r[1] for r in rs]
    bare = statistics.median(r[1] for r in rows[(server, gen, "bare")]) if (server, gen, "bare") in rows else None
    vs = f"{(statistics.median(cpu) / bare - 1) * 100:+.1f} %" if bare else "-"
    if server == "proxy" and bare:
        # The proxies compare by throughput (issue 30): req/s against the bare proxy's.
        base = statistics.median(r[0] for r in rows[(server, gen, "bare")])
        vs += f" CPU, {statistics.median(rps) / base * 100:.1f} % of bare req/s"
    mid = sorted(rs, key=lambda r: r[1])[len(rs) // 2]
    print(f"| {server} | {gen} | {stack} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) "
          f"| {statistics.median(cpu):.2f} ({min(cpu):.2f}–{max(cpu):.2f}) "
          f"| {statistics.median(r[4] for r in rs):.2f} / {statistics.median(r[5] for r in rs):.2f} "
          f"| {vs} | {mid[2]} | {mid[3]} |")

# The proxies' targets (issue 30) are ratios of throughput: besides the ratio
# of the medians above, the ratio within each round (the stacks of a round
# run minutes apart at most, so a slow spell of the shared host weighs on
# both sides of it), median and spread.
pairs = [("layers-off", "bare"), ("gateway", "layers-off"), ("gateway", "bare")]
have = {stack for (server, _, stack) in rows if server == "proxy"}
lines = []
for a, b in pairs:
    if {a, b} <= have:
        ra = [r[0] for r in rows[("proxy", "wrk", a)]]
        rb = [r[0] for r in rows[("proxy", "wrk", b)]]
        per_round = sorted(x / y * 100 for x, y in zip(ra, rb))
        lines.append(f"| {a} / {b} | {statistics.median(per_round):.1f} % "
                     f"({per_round[0]:.1f}–{per_round[-1]:.1f}) "
                     f"| {statistics.median(ra) / statistics.median(rb) * 100:.1f} % |")
if lines:
    print("\n| proxy throughput | per round: median (min–max) | of the medians |")
    print("|---|---:|---:|")
    print("\n".join(lines))
PY
