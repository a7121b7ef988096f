#!/usr/bin/env bash
# Makes `redis-server` available for floodwall-redis's tests and benches, and
# prints its path; also `openssl`, which the TLS test uses to make a
# throwaway CA and certificate. Uses the one on PATH if there is one; otherwise installs
# Debian's package (as root, or through sudo). Called by .ci/run and, when
# redis-server is missing, by the tests themselves.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi

# shellcheck source=apt-install.sh
source "$(dirname "$0")/apt-install.sh"
# The tests never use the packaged service: they start their own servers
# on ephemeral loopback ports.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server >&2
command -v openssl >/dev/null 2>&1 || apt_install openssl >&2
command -v redis-server
