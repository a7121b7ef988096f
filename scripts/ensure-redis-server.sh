#!/usr/bin/env bash
# Makes `redis-server` available for floodwall-redis's tests and benches, and
# prints its path. Uses the one on PATH if there is one; otherwise installs
# Debian's package (as root, or through sudo). Called by .ci/run and, when
# redis-server is missing, by the tests themselves.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "redis-server is not installed and this user cannot install it;" >&2
    echo "install Debian's redis-server package (apt-get install redis-server)." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is not installed and apt-get is not available to install it." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The tests never use the packaged service: they start their own servers
# on ephemeral loopback ports.
if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends redis-server >&2; then
    "${as_root[@]}" apt-get update -q >&2
    "${as_root[@]}" apt-get install -y -q --no-install-recommends redis-server >&2
fi
command -v redis-server
