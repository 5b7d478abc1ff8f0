#!/bin/bash
# Hands /boot/ignition/config.ign (the installer's contract) to Ignition as
# /usr/lib/ignition/user.ign in the initramfs. No file: nothing to do.
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

mnt="$KILN_RUN/boot-ro"
kiln_wait_dev "$KILN_BOOT_DEV"
mkdir -p "$mnt"
mount -o ro "$KILN_BOOT_DEV" "$mnt"
trap 'umount "$mnt" 2>/dev/null || true' EXIT

if [[ -f "$mnt/ignition/config.ign" ]]; then
    mkdir -p /usr/lib/ignition
    cp "$mnt/ignition/config.ign" /usr/lib/ignition/user.ign.tmp
    chmod 0600 /usr/lib/ignition/user.ign.tmp
    mv /usr/lib/ignition/user.ign.tmp /usr/lib/ignition/user.ign
    kiln_say "using the Ignition config from /boot/ignition/config.ign"
fi
