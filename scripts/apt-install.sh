#!/usr/bin/env bash
# Sourced by the ensure-*.sh scripts: `apt_install PACKAGE...` installs
# Debian packages as root or through passwordless sudo, refreshing the
# package lists once if the first attempt fails; it explains and fails when
# neither is possible.

apt_install() {
    local as_root
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "$* not installed and this user cannot install it;" >&2
        echo "install Debian's $* (apt-get install $*)." >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$* not installed and apt-get is not available to install it." >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "$@" >&2; then
        "${as_root[@]}" apt-get update -q >&2
        "${as_root[@]}" apt-get install -y -q --no-install-recommends "$@" >&2
    fi
}
