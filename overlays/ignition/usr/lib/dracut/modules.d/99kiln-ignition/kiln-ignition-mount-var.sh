#!/bin/bash
# On OSTree, /sysroot is the deployment and /var lives in the stateroot
# (/sysroot/sysroot/ostree/deploy/STATEROOT/var); the booted system bind-mounts it
# later. Ignition writes users' homes, files under /var and mount points there, so
# mount it for the Ignition stages (start) and release it before switch-root (stop).
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

case "${1:-}" in
start)
    stateroot=$(kiln_stateroot)
    if [[ -z "$stateroot" ]]; then
        kiln_say "no ostree= argument on the kernel command line; cannot find /var"
        exit 1
    fi
    var="/sysroot/sysroot/ostree/deploy/$stateroot/var"
    if [[ ! -d "$var" ]]; then
        kiln_say "stateroot /var not found at $var"
        exit 1
    fi
    if ! mountpoint -q /sysroot/var; then
        mount --bind "$var" /sysroot/var
    fi
    # What the tree's tmpfiles.d would make on the first boot, needed earlier by
    # useradd (homes) and by files Ignition writes.
    mkdir -p /sysroot/var/home /sysroot/var/lib /sysroot/var/opt /sysroot/var/srv \
        /sysroot/var/mnt /sysroot/var/usrlocal /sysroot/var/log
    mkdir -p -m 0700 /sysroot/var/roothome
    ;;
stop)
    if mountpoint -q /sysroot/var; then
        umount /sysroot/var
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
