#!/bin/bash
# kiln's live boot (ISO and PXE): the root is a compressed read-only image handed to the
# kernel as an extra initramfs (/kiln-live/root.*), with a RAM overlay on top. Active only
# with `kiln.live` on the kernel command line. See docs/install.md.

check() {
    # Only when asked for (dracut --add kiln-live).
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    instmods loop squashfs erofs overlay
}

install() {
    inst_multiple mount umount mountpoint mkdir sed grep modprobe cat
    inst_script "$moddir/kiln-live-root.sh" /usr/libexec/kiln-live/root
    # Ignition's generator asks this hook whether there is a boot disk: on a live boot
    # there is none, so ignition-diskful.target (and kiln's /boot glue) stays out.
    inst_script "$moddir/is-live-image" /usr/bin/is-live-image
    inst_simple "$moddir/kiln-live-root.service" "$systemdsystemunitdir/kiln-live-root.service"
    mkdir -p "$initdir/$systemdsystemunitdir/initrd-root-fs.target.requires"
    ln_r "$systemdsystemunitdir/kiln-live-root.service" \
        "$systemdsystemunitdir/initrd-root-fs.target.requires/kiln-live-root.service"
}
