#!/usr/bin/env bash
# Makes `ip` (iproute2) and `unshare` (util-linux) available for the tests
# that build a network namespace of their own (the gateway's IPv6 /64
# rotation test). Uses what is on PATH; otherwise installs Debian's packages
# (as root, or through sudo). Called by .ci/run and, when a tool is missing,
# by the test itself.
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0

# shellcheck source=apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install "${missing[@]}"
