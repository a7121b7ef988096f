#!/usr/bin/env bash
# Where the end-to-end comparison's CPU goes, per request: runs each proxy
# alone under `perf record` (`lab e2e --quick --only ...`: the load
# generator, the proxy and the upstream, all in one process) and prints the
# sampled CPU time per answered request, by category, as a Markdown table.
# Needs `perf` (Debian's linux-perf) and python3; not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "e2e-profile: perf is not installed" >&2; exit 1; }
FREQ=${FREQ:-3000}
OUT=target/lab/profile
mkdir -p "$OUT"
cargo build --release -q -p floodwall-benches --bin lab
for proxy in bare layers-off gateway; do
  perf record -q -F "$FREQ" -o "$OUT/$proxy.data" \
    ./target/release/lab e2e --quick --only "$proxy" 2>/dev/null | grep . > "$OUT/$proxy.txt"
  perf report -i "$OUT/$proxy.data" --no-children --stdio --sort dso,sym -n 2>/dev/null \
    | grep -v '^#' | grep '%' > "$OUT/$proxy.symbols"
done
python3 - "$OUT" "$FREQ" <<'EOF'
import re, sys
out, freq = sys.argv[1], float(sys.argv[2])

def category(dso, sym):
    if 'kernel' in dso:
        return 'kernel (TCP, wake-ups, syscalls)'
    if dso.startswith('libc') and re.search(r'malloc|free|realloc|unlink_chunk|consolidate|_int_', sym):
        return 'allocator (glibc malloc/free)'
    if dso.startswith('libc'):
        return 'libc, other (memcpy, syscall stubs)'
    if 'vdso' in dso:
        return 'clock reads (vDSO)'
    if re.search(r'floodwall_(deadline|priority|breaker|throttle|ratelimit|token_bucket|http|core)'
                 r'|Either|task_local|time::wheel|runtime::time|TimerEntry', sym):
        return 'floodwall layers and their timers'
    if re.search(r'floodwall_examples|boxed_clone|clone_box', sym):
        return 'gateway frame (route, handler, boxing)'
    if re.search(r'hyper|httparse', sym):
        return 'hyper, hyper-util'
    if re.search(r'tokio|mio', sym):
        return 'tokio runtime and I/O'
    if re.search(r'^http::|hashbrown|bytes::', sym):
        return 'http, bytes, hashbrown'
    return 'other'

proxies = ['bare', 'layers-off', 'gateway']
per_request = {}
for p in proxies:
    m = re.search(r'about (\d+) requests', open(f'{out}/{p}.txt').read())
    requests = float(m.group(1))
    cats = {}
    for line in open(f'{out}/{p}.symbols'):
        m = re.match(r'\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)', line)
        if m:
            c = category(m.group(2), m.group(3))
            cats[c] = cats.get(c, 0.0) + int(m.group(1)) / freq / requests * 1e6
    per_request[p] = cats
names = sorted(set().union(*per_request.values()), key=lambda c: -per_request['gateway'].get(c, 0))
print('| CPU µs per request | bare hyper proxy | gateway, layers off | gateway, every layer |')
print('|---|---|---|---|')
for c in names:
    print(f'| {c} | ' + ' | '.join(f"{per_request[p].get(c, 0):.1f}" for p in proxies) + ' |')
print('| **total** | ' + ' | '.join(f"**{sum(per_request[p].values()):.1f}**" for p in proxies) + ' |')
EOF
