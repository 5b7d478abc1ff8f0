#!/bin/bash
# On OSTree, /sysroot is the deployment and /var lives in the stateroot
# (/sysroot/sysroot/ostree/deploy/STATEROOT/var); the booted system bind-mounts it
# later. Ignition writes users' homes, files under /var and mount points there, so
# mount it for the Ignition stages (start) and release it before switch-root (stop).
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

# What the tree's tmpfiles.d would make on the first boot, needed earlier by useradd
# (homes) and by files Ignition writes.
var_dirs() {
    mkdir -p /sysroot/var/home /sysroot/var/lib /sysroot/var/opt /sysroot/var/srv \
        /sysroot/var/mnt /sysroot/var/usrlocal /sysroot/var/log
    mkdir -p -m 0700 /sysroot/var/roothome
}

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
    var_dirs
    ;;
dirs)
    # After the mount stage: a filesystem the config mounts at /var itself (an encrypted
    # /var, docs/ignition.md) starts empty.
    if mountpoint -q /sysroot/var; then
        var_dirs
    fi
    ;;
stop)
    if mountpoint -q /sysroot/var; then
        umount /sysroot/var
    fi
    ;;
*)
    echo "usage: $0 start|dirs|stop" >&2
    exit 2
    ;;
esac
