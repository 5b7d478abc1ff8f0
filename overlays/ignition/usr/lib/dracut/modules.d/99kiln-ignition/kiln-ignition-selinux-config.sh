#!/bin/bash
# Ignition's files stage reads /etc/selinux/config of the target root and fails without
# it; libostree, on the booted system, treats the same file as "SELinux in use" and fails
# to finalize staged deployments (no bwrap, no semodule, no policy). So the file exists
# only while Ignition runs: written here (start) unless the tree has one, and removed
# again (stop) before switch-root.
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

conf=/sysroot/etc/selinux/config
made=$KILN_RUN/selinux-config-written

case "${1:-}" in
start)
    if [[ -e "$conf" || -L "$conf" ]]; then
        exit 0
    fi
    mkdir -p "$KILN_RUN" /sysroot/etc/selinux
    cp /usr/libexec/kiln-ignition/selinux-config.template "$conf"
    : > "$made"
    ;;
stop)
    if [[ -e "$made" ]]; then
        rm -f "$conf" "$made"
        # The directory stays when a package put more in it (semanage.conf).
        rmdir --ignore-fail-on-non-empty /sysroot/etc/selinux || true
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
