#!/bin/bash
# kiln: what Ignition's disks stage needs in the initramfs to create LUKS2 volumes bound
# to the TPM with clevis (Ignition's `storage.luks` with `clevis.tpm2`). Debian's
# 30ignition names only some of the binding side (clevis-luks-bind, clevis-encrypt-tpm2,
# tpm2_create); clevis-dracut's modules bring the unlocking side (clevis, cryptsetup,
# luksmeta, jose, tpm2_createprimary/load/unseal). This adds the rest of what
# clevis-encrypt-tpm2 and clevis-luks-bind run. See docs/ignition.md ("Encrypted /var").

check() {
    # Only when asked for (dracut --add kiln-luks).
    return 255
}

depends() {
    echo crypt clevis clevis-pin-tpm2 clevis-pin-sss
}

install() {
    inst_multiple clevis-encrypt-tpm2 clevis-encrypt-sss clevis-decrypt-sss \
        clevis-luks-bind clevis-luks-common-functions clevis-luks-unlock \
        tpm2_createprimary tpm2_createpolicy tpm2_create tpm2_flushcontext tpm2_pcrread \
        tpm2_load tpm2_unseal jose luksmeta cryptsetup pwmake \
        base64 dd mktemp sed awk head tr wc
    inst_libdir_file "libtss2-tcti-device.so*"
    # pwmake's quality rules (Ignition's own drop-in turns the dictionary check off).
    inst_multiple -o /etc/security/pwquality.conf
}

installkernel() {
    hostonly='' instmods dm_crypt =drivers/char/tpm
}
