#!/bin/bash
# Ignition's files stage records `enabled: true|false` of units as presets
# (/etc/systemd/system-preset/20-ignition.preset) and leaves applying them to systemd's
# first-boot preset-all. A kiln system ships an empty /etc/machine-id, which systemd does
# not count as a first boot, and a full preset-all would also enable every unit Debian
# leaves disabled: apply exactly the units Ignition named, in the new root. A unit the
# image does not have (a config enabling kubelet.service for an image without a kubelet)
# is reported and skipped, as systemd's own preset-all would; any other error stops.
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

preset=/sysroot/etc/systemd/system-preset/20-ignition.preset
[[ -f "$preset" ]] || exit 0
mapfile -t units < <(awk '$1 == "enable" || $1 == "disable" { print $2 }' "$preset" | sort -u)
[[ ${#units[@]} -gt 0 ]] || exit 0
applied=()
for u in "${units[@]}"; do
    if err=$(systemctl --root=/sysroot preset -- "$u" 2>&1); then
        applied+=("$u")
    elif [[ "$err" == *"does not exist"* ]]; then
        kiln_say "warning: the config enables $u, which this image does not have; skipped"
    else
        kiln_say "applying the preset of $u failed: $err"
        exit 1
    fi
done
kiln_say "applied Ignition's unit presets: ${applied[*]}"
