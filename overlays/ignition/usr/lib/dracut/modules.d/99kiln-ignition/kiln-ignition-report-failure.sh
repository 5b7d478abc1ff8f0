#!/bin/bash
# Runs when the initramfs drops to emergency.target: if an Ignition stage (or a
# piece of kiln's glue) failed, say which one and why, on the console.
set -uo pipefail

stage_of() {
    case "$1" in
        ignition-fetch-offline.service|ignition-fetch.service) echo fetch ;;
        ignition-kargs.service|kiln-ignition-kargs-reboot.service) echo kargs ;;
        ignition-disks.service) echo disks ;;
        ignition-mount.service|kiln-ignition-mount-var.service) echo mount ;;
        ignition-files.service) echo files ;;
        kiln-ignition-user-config.service) echo "config from /boot" ;;
        kiln-ignition-network.service) echo network ;;
        kiln-ignition-presets.service) echo "unit presets" ;;
        kiln-ignition-firstboot-done.service) echo "first-boot stamp removal" ;;
        ignition-remount-sysroot.service) echo "remount /sysroot" ;;
        *) echo "${1%.service}" ;;
    esac
}

failed=$(systemctl list-units --failed --plain --no-legend --no-pager \
    'ignition-*' 'kiln-ignition-*' 2>/dev/null | awk '{ print $1 }')
[[ -n "$failed" ]] || exit 0

{
    echo
    echo "######################################################################"
    for unit in $failed; do
        echo "kiln: Ignition failed in stage '$(stage_of "$unit")' ($unit)"
        echo "kiln: errors logged by $unit:"
        # Ignition also logs the whole config; keep the lines that say what went wrong.
        journalctl -b --no-pager -o cat -u "$unit" 2>/dev/null \
            | grep -v '^[[:space:]]*["{}]' | grep -v '^[[:space:]]*[]},]*$' \
            | grep -iE 'critical|error|fail|kiln-ignition|denied|mismatch|not found|no such' \
            | grep -v 'Triggering OnFailure' | tail -n 12 | sed 's/^/    /'
        echo
    done
    echo "kiln: the machine was NOT provisioned. /boot/ignition.firstboot is still there,"
    echo "kiln: so the next boot runs Ignition again. Fix the config and reboot."
    echo "kiln: in this shell: journalctl -b -u ignition-\\*; see docs/firstboot.md"
    echo "######################################################################"
} > /run/kiln-ignition-failure.txt

cat /run/kiln-ignition-failure.txt > /dev/console 2>/dev/null || true
# And into the journal.
cat /run/kiln-ignition-failure.txt
exit 0
