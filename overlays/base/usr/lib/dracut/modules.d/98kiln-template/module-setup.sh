#!/bin/bash
# kiln template hygiene: on the first boot of every machine made from an image, give the
# disk its own identifiers and grow the root to the disk. See docs/cloud.md.

check() {
    # Only when asked for (dracut --add kiln-template).
    return 255
}

depends() {
    echo systemd
}

install() {
    inst_multiple sgdisk partx e2fsck resize2fs tune2fs dumpe2fs blkid udevadm \
        readlink basename cat seq sleep awk
    inst_script "$moddir/kiln-template-disk.sh" /usr/libexec/kiln-template/disk
    inst_simple "$moddir/kiln-template-disk.service" \
        "$systemdsystemunitdir/kiln-template-disk.service"
    mkdir -p "$initdir/$systemdsystemunitdir/initrd.target.wants"
    ln_r "$systemdsystemunitdir/kiln-template-disk.service" \
        "$systemdsystemunitdir/initrd.target.wants/kiln-template-disk.service"
}
