#!/bin/bash
# kiln's Ignition glue for Debian: what Debian's 30ignition module leaves to the
# distribution. See docs/firstboot.md.

check() {
    # Only when asked for (dracut --add kiln-ignition).
    return 255
}

depends() {
    echo ignition ostree systemd-networkd
}

install_kiln_unit() {
    local unit="$1" target="$2"
    inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
    if [[ -n $target ]]; then
        mkdir -p "$initdir/$systemdsystemunitdir/$target.requires"
        ln_r "$systemdsystemunitdir/$unit" "$systemdsystemunitdir/$target.requires/$unit"
    fi
}

install() {
    inst_multiple mount umount mountpoint mkdir rmdir rm cp mv chmod touch sync sed awk grep tr seq ls sort \
        cat tail sleep readlink journalctl systemctl networkctl ostree
    inst_multiple -o "$systemdutildir/systemd-networkd-wait-online"
    # libostree's GRUB config generator (sysroot.bootloader=grub2 runs $OSTREE_GRUB2_EXEC
    # on every boot-entry write): the kargs stage rewrites the boot entries.
    inst_binary /usr/bin/kiln

    inst_script "$moddir/kiln-ignition-lib.sh" /usr/libexec/kiln-ignition/lib.sh
    for s in user-config network mount-var selinux-config presets firstboot-done report-failure; do
        inst_script "$moddir/kiln-ignition-$s.sh" "/usr/libexec/kiln-ignition/$s"
    done

    # Debian's helper (installed by 30ignition) is a stub that exits 1. dracut's
    # installer never replaces a file that is already in the image: overwrite it.
    # (`command`: this function is itself called install.)
    mkdir -p "$initdir/usr/sbin"
    command install -m 0755 "$moddir/ignition-kargs-helper" "$initdir/usr/sbin/ignition-kargs-helper"

    # Ignition's files stage always relabels; this system has no SELinux policy.
    # The no-op lives in the initramfs only.
    command install -m 0755 "$moddir/setfiles" "$initdir/usr/sbin/setfiles"
    # ... and it refuses to run without the target's /etc/selinux/config, which the
    # booted system must not have (see kiln-ignition-selinux-config.sh).
    inst_simple "$moddir/selinux-config" /usr/libexec/kiln-ignition/selinux-config.template

    # First boot only (pulled in by ignition-complete.target / ignition-diskful.target).
    install_kiln_unit kiln-ignition-user-config.service ignition-diskful.target
    install_kiln_unit kiln-ignition-network.service ignition-complete.target
    install_kiln_unit kiln-ignition-kargs-reboot.service ignition-complete.target
    # Live systems too (no boot disk): the units Ignition enabled.
    install_kiln_unit kiln-ignition-presets.service ignition-complete.target
    install_kiln_unit kiln-ignition-mount-var.service ignition-diskful.target
    install_kiln_unit kiln-ignition-var-dirs.service ignition-diskful.target
    # Wherever the files stage runs: installed disks and live systems.
    install_kiln_unit kiln-ignition-selinux-config.service ignition-complete.target
    install_kiln_unit kiln-ignition-firstboot-done.service ignition-diskful.target

    # Nothing after the kargs stage runs when it asked for a reboot (and the stamp stays).
    local u
    for u in ignition-disks.service ignition-mount.service ignition-files.service \
        kiln-ignition-mount-var.service kiln-ignition-var-dirs.service \
        kiln-ignition-selinux-config.service \
        kiln-ignition-firstboot-done.service; do
        inst_simple "$moddir/10-kiln-kargs-reboot.conf" \
            "$systemdsystemunitdir/$u.d/10-kiln-kargs-reboot.conf"
    done

    # Failure report, on the console, when any unit isolates emergency.target.
    install_kiln_unit kiln-ignition-report-failure.service emergency.target
}
