#!/bin/bash
# Mounts the live root: the read-only image the boot loader loaded as an extra initramfs
# (/kiln-live/root.squashfs or /kiln-live/root.erofs), a tmpfs for writes, and an overlay
# of both on /sysroot. /usr is then made read-only again, like on an installed system;
# /etc and /var are writable (in RAM: lost at power-off).
set -euo pipefail

say() {
    echo "kiln-live: $*" >&2
    echo "<5>kiln-live: $*" > /dev/kmsg 2>/dev/null || true
}

img="" fstype=""
for t in squashfs erofs; do
    if [[ -f "/kiln-live/root.$t" ]]; then
        img="/kiln-live/root.$t"
        fstype=$t
        break
    fi
done
if [[ -z "$img" ]]; then
    say "no root image (/kiln-live/root.squashfs or root.erofs) in the initramfs: the boot"
    say "loader must load rootfs.img after initramfs.img (ISO: images/rootfs.img; PXE: rootfs.img)"
    exit 1
fi

modprobe -a loop overlay "$fstype" 2>/dev/null || true
base=/run/kiln-live
mkdir -p "$base/ro" "$base/rw"
mountpoint -q "$base/ro" || mount -t "$fstype" -o ro,loop "$img" "$base/ro"
mountpoint -q "$base/rw" || mount -t tmpfs -o mode=0755 kiln-live-rw "$base/rw"
mkdir -p "$base/rw/upper" "$base/rw/work"
if ! mountpoint -q /sysroot; then
    mount -t overlay -o "lowerdir=$base/ro,upperdir=$base/rw/upper,workdir=$base/rw/work" \
        kiln-live /sysroot
fi
# /usr stays read-only, as on an installed system.
mount --bind /sysroot/usr /sysroot/usr
mount -o remount,bind,ro /sysroot/usr

# There is no /boot partition on a live system.
if [[ -f /sysroot/etc/fstab ]]; then
    sed -i -e '/[[:space:]]\/boot[[:space:]]/d' /sysroot/etc/fstab
fi
# What the tree's tmpfiles.d makes at boot, needed earlier by Ignition (homes, files
# under /var).
mkdir -p /sysroot/var/home /sysroot/var/lib /sysroot/var/opt /sysroot/var/srv \
    /sysroot/var/mnt /sysroot/var/usrlocal /sysroot/var/log /sysroot/var/tmp
mkdir -p -m 0700 /sysroot/var/roothome
say "live root from $img ($fstype) mounted on /sysroot with a RAM overlay"
