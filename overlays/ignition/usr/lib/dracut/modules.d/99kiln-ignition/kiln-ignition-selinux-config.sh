#!/bin/bash
# Ignition's files stage reads /etc/selinux/config of the target root and fails without
# it; libostree, on the booted system, treats the same file as "SELinux in use" and fails
# to finalize staged deployments (no bwrap, no semodule, no policy). So the file exists
# only while Ignition runs: written here (start) unless the tree has one, and removed
# again (stop) before switch-root.
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

conf=/sysroot/etc/selinux/config
# The marker lives beside the file, on the disk: a boot cut short after `start` (power
# loss, a VM killed in the emergency shell) leaves both behind, and the next boot, which
# runs Ignition again, rewrites the file (which may have lost its contents) and removes
# both at `stop`. A marker in /run would be gone, and the stale file would stay forever.
made=/sysroot/etc/selinux/.kiln-ignition-written

case "${1:-}" in
start)
    if [[ ( -e "$conf" || -L "$conf" ) && ! -e "$made" ]]; then
        exit 0
    fi
    mkdir -p /sysroot/etc/selinux
    : > "$made"
    sync -f "$made"
    cp /usr/libexec/kiln-ignition/selinux-config.template "$conf.tmp"
    sync "$conf.tmp"
    mv -f "$conf.tmp" "$conf"
    sync -f "$conf"
    ;;
stop)
    if [[ -e "$made" ]]; then
        rm -f "$conf" "$conf.tmp"
        rm -f "$made"
        sync -f /sysroot/etc
        # The directory stays when a package put more in it (semanage.conf).
        rmdir --ignore-fail-on-non-empty /sysroot/etc/selinux || true
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
