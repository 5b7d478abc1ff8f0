#!/bin/bash
# Ignition succeeded: remove the first-boot stamp so later boots don't run it again,
# and the config copy on /boot (it may hold secrets; the system has applied it).
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

mnt="$KILN_RUN/boot-rw"
kiln_wait_dev "$KILN_BOOT_DEV"
mkdir -p "$mnt"
mount -o rw "$KILN_BOOT_DEV" "$mnt"
trap 'umount "$mnt" 2>/dev/null || true' EXIT
rm -f "$mnt/ignition/config.ign"
rm -f "$mnt/ignition.firstboot"
sync
kiln_say "Ignition finished; removed the first-boot stamp /boot/ignition.firstboot"
