#!/bin/bash
# Brings the network up in the initramfs because Ignition asked for it
# (/run/ignition/neednet: ignition.config.url=, or a config that references remote
# resources). Uses systemd-networkd: ip= arguments (turned into .network files by
# systemd-network-generator) win; otherwise DHCP on every ethernet link. The default
# lives in /etc of the initramfs only, so it does not leak into the booted system.
set -euo pipefail
. /usr/libexec/kiln-ignition/lib.sh

if ! ls /run/systemd/network/*.network >/dev/null 2>&1; then
    mkdir -p /etc/systemd/network
    cat > /etc/systemd/network/90-kiln-ignition-dhcp.network <<'NET'
[Match]
Type=ether

[Network]
DHCP=yes
NET
fi

kiln_say "Ignition needs the network; starting systemd-networkd"
# dracut's networkd module may already have started networkd (at network-pre.target),
# before the file above existed; `networkctl reload` needs D-Bus, which the initramfs
# does not run. A restart makes networkd read its .network files again.
systemctl restart systemd-networkd.service
if ! /usr/lib/systemd/systemd-networkd-wait-online --any --timeout=120; then
    kiln_say "no network link came up within 120 s"
    networkctl list --no-pager >&2 || true
    exit 1
fi

# Name servers from the DHCP leases (no resolver daemon in the initramfs).
if [[ ! -s /etc/resolv.conf ]]; then
    grep -h '^DNS=' /run/systemd/netif/leases/* 2>/dev/null | sed 's/^DNS=//' \
        | tr ' ' '\n' | awk 'NF { print "nameserver " $1 }' > /etc/resolv.conf || true
fi
networkctl list --no-pager >&2 || true
