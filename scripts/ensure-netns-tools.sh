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

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "${missing[*]} not installed and this user cannot install them;" >&2
    echo "install Debian's ${missing[*]} (apt-get install ${missing[*]})." >&2
    exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "apt-get is not available to install ${missing[*]}." >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    "${as_root[@]}" apt-get update -q >&2
    "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
