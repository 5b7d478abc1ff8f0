#!/bin/bash
# Shared helpers for kiln's Ignition glue (sourced).

KILN_RUN=/run/kiln-ignition

# Prints a message on the console and in the kernel log.
kiln_say() {
    local msg="kiln-ignition: $*"
    echo "$msg" >&2
    echo "<5>$msg" > /dev/kmsg 2>/dev/null || true
}

# Value of a kernel command line argument (last one wins), empty when absent.
kiln_cmdline_arg() {
    local name="$1" value="" arg
    for arg in $(</proc/cmdline); do
        if [[ "${arg%%=*}" == "$name" ]]; then
            value="${arg#*=}"
        fi
    done
    echo "$value"
}

# Waits until a device node exists (udev may still be settling).
kiln_wait_dev() {
    local dev="$1" i
    for i in $(seq 1 300); do
        [[ -b "$dev" ]] && return 0
        sleep 0.1
    done
    kiln_say "device $dev did not appear"
    return 1
}

# The boot and root partitions, by label (the image contract: LABEL=boot, LABEL=root).
KILN_BOOT_DEV=/dev/disk/by-label/boot
kiln_root_dev() {
    local root
    root=$(kiln_cmdline_arg root)
    case "$root" in
        LABEL=*) echo "/dev/disk/by-label/${root#LABEL=}" ;;
        UUID=*) echo "/dev/disk/by-uuid/${root#UUID=}" ;;
        PARTUUID=*) echo "/dev/disk/by-partuuid/${root#PARTUUID=}" ;;
        PARTLABEL=*) echo "/dev/disk/by-partlabel/${root#PARTLABEL=}" ;;
        /dev/*) echo "$root" ;;
        *) echo /dev/disk/by-label/root ;;
    esac
}

# The stateroot of the deployment being booted, from ostree=/ostree/boot.N/STATEROOT/...
kiln_stateroot() {
    local o
    o=$(kiln_cmdline_arg ostree)
    o="${o#/ostree/}"
    o="${o#*/}"
    echo "${o%%/*}"
}
