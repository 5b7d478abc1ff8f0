#!/bin/bash
# kiln: make the disk this machine's own, on its first boot (docs/cloud.md, "Templates").
#
# An image ships fixed disk/partition GUIDs and filesystem UUIDs (derived from its commit,
# so that builds are reproducible), and a root partition sized for the image, not for the
# disk it was copied to. Before anything mounts boot or root:
#   1. the backup GPT moves to the real end of the disk and the root partition (the last
#      one) grows to it; the root filesystem follows (e2fsck, then resize2fs);
#   2. the disk and every partition get new random GUIDs; boot and root get new random
#      filesystem UUIDs (tune2fs -U; the filesystems carry metadata_csum_seed, so no
#      checksum is rewritten).
# Boot and root are found by label everywhere (GRUB `search --label boot`,
# `root=LABEL=root`, fstab `LABEL=boot`), so the new identifiers change nothing in how the
# machine boots.
set -euo pipefail

say() {
    echo "kiln-template: $*" >&2
    echo "<5>kiln-template: $*" > /dev/kmsg 2>/dev/null || true
}

# Up to 90 s, like systemd's device timeout.
wait_dev() {
    local i
    for i in $(seq 1 900); do
        [[ -b "$1" ]] && return 0
        sleep 0.1
    done
    say "device $1 did not appear"
    return 1
}

wait_dev /dev/disk/by-label/root
wait_dev /dev/disk/by-label/boot
root=$(readlink -f /dev/disk/by-label/root)
boot=$(readlink -f /dev/disk/by-label/boot)
rsys=/sys/class/block/$(basename "$root")
if [[ ! -e "$rsys/partition" ]]; then
    say "$root is not a partition; nothing to do"
    exit 0
fi
part=$(cat "$rsys/partition")
dname=$(basename "$(readlink -f "$rsys/..")")
disk=/dev/$dname

# 1. Grow. sysfs counts 512-byte sectors; sgdisk counts logical sectors.
lss=$(cat "/sys/class/block/$dname/queue/logical_block_size")
disk_end=$(cat "/sys/class/block/$dname/size")
part_end=$(( $(cat "$rsys/start") + $(cat "$rsys/size") ))
# An image leaves 1 MiB after root (backup GPT); more than 2 MiB free means a bigger disk.
if (( disk_end - part_end > 4096 )); then
    first=$(sgdisk -i "$part" "$disk" | awk '/^First sector:/ {print $3}')
    ptype=$(sgdisk -i "$part" "$disk" | awk '/^Partition GUID code:/ {print $4}')
    pguid=$(sgdisk -i "$part" "$disk" | awk '/^Partition unique GUID:/ {print $4}')
    pname=$(sgdisk -i "$part" "$disk" | sed -n "s/^Partition name: '\(.*\)'$/\1/p")
    say "growing partition $part of $disk (${part_end} of ${disk_end} sectors used)"
    sgdisk --move-second-header "$disk" >/dev/null
    sgdisk --delete="$part" --new="$part:$first:0" --typecode="$part:$ptype" \
        --partition-guid="$part:$pguid" --change-name="$part:$pname" "$disk" >/dev/null
    partx --update --nr "$part" "$disk"
    udevadm settle
fi
part_bytes=$(( $(cat "$rsys/size") * 512 ))
# Integers only (awk would print a product this large in exponent notation).
fs_blocks=$(dumpe2fs -h "$root" 2>/dev/null | awk -F: '/^Block count:/ {gsub(/ /, "", $2); print $2}')
fs_bsize=$(dumpe2fs -h "$root" 2>/dev/null | awk -F: '/^Block size:/ {gsub(/ /, "", $2); print $2}')
fs_bytes=$(( fs_blocks * fs_bsize ))
if (( part_bytes - fs_bytes >= 1048576 )); then
    say "growing the root filesystem on $root to $part_bytes bytes"
    # e2fsck exits 1 when it fixed something; resize2fs wants a freshly checked filesystem.
    e2fsck -f -p "$root" || (( $? == 1 ))
    resize2fs "$root"
fi

# 2. New identifiers.
sgdisk --randomize-guids "$disk" >/dev/null
tune2fs -U random "$boot" >/dev/null
tune2fs -U random "$root" >/dev/null
# Let udev see the new identifiers (by-uuid, by-partuuid) without removing any device.
udevadm trigger --action=change "$disk" "$boot" "$root" || true
udevadm settle
say "new identifiers: boot $(blkid -s UUID -o value "$boot"), root $(blkid -s UUID -o value "$root")"
