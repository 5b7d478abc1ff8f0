// suite-minutes: 9 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! Secure Boot end to end: the base image (hybrid, raw) on OVMF's Secure Boot build with
//! Microsoft's keys (`kiln run --secure-boot`'s firmware). One VM, four boots:
//!
//! 1. v1 boots through shim → signed GRUB → signed kernel with Secure Boot enforced (the
//!    `SecureBoot` EFI variable is 1, the kernel says so and is locked down) and measured
//!    into the VM's TPM (the event log readable, GRUB's PCRs 8 and 9 extended);
//! 2. `kiln upgrade` to v2 from a second disk, reboot: v2, still enforced, and on trial:
//!    the signed GRUB counted the boot in grubenv (`save_env`), `kiln health mark-good`
//!    ends the trial;
//! 3. `kiln rollback`, reboot: the rollback entry (v1), still enforced;
//! 4. `kiln deploy` of a commit whose kernel has one byte changed (its signature no longer
//!    matches), reboot: GRUB refuses that kernel (`bad shim signature`), falls back to
//!    the previous deployment's entry, and v1 boots, enforced.

mod common;

use common::VM_CMD;
use kiln::cmd::Cmd;
use kiln::image::{self, Firmware, Format, ImageOptions};
use kiln::qemu::{Disk, TpmState, Vm, VmOptions};
use std::path::Path;

/// The ref the tampered commit is kept under in the update repo (it is deployed by
/// checksum).
const TAMPERED_REF: &str = "kiln/test/tampered-kernel";

/// v1's tree with its kernel changed by one byte: a commit whose boot entry has a kernel
/// no trusted key signed (its own boot directory: the boot checksum covers the kernel).
fn tampered_kernel_commit(f: &common::Composed, work: &Path) -> String {
    let ostree = |args: &[&str]| {
        Cmd::new("ostree")
            .arg(format!("--repo={}", f.repo.display()))
            .args(args)
            .read()
            .unwrap()
    };
    let listing = ostree(&["ls", &f.commit, "/usr/lib/modules"]);
    let kdir = listing
        .lines()
        .filter(|l| l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .find(|p| *p != "/usr/lib/modules")
        .unwrap_or_else(|| panic!("no kernel directory in {listing}"))
        .to_string();
    let kernel = format!("{kdir}/vmlinuz");
    let out = Cmd::new("ostree")
        .arg(format!("--repo={}", f.repo.display()))
        .args(["cat", &f.commit, &kernel])
        .run()
        .unwrap();
    let mut bytes = out.stdout;
    assert!(bytes.len() > 1 << 20, "{kernel}: {} bytes", bytes.len());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let add = work.join("tampered-add");
    let dest = add.join(kernel.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, &bytes).unwrap();
    common::base_variant(f, &add, "tampered-kernel")
}

/// Checks that this boot runs with Secure Boot enforced: the firmware's `SecureBoot`
/// variable (4 attribute bytes, then the value) is 1, the kernel logged it and is locked
/// down.
fn assert_enforced(vm: &mut Vm, what: &str) {
    let var = vm
        .run_ok(
            "od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
            VM_CMD,
        )
        .unwrap();
    let last = var
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(last, "1", "{what}: SecureBoot variable reads {var:?}");
    // No timestamps: the harness drops `[ 1.23] …` lines as stray console messages.
    let log = vm
        .run_ok("dmesg -t | grep -i 'secure boot' || true", VM_CMD)
        .unwrap();
    assert!(
        log.contains("Secure boot enabled"),
        "{what}: the kernel log does not say Secure Boot is on: {log:?}"
    );
    let lockdown = vm
        .run_ok("cat /sys/kernel/security/lockdown", VM_CMD)
        .unwrap();
    assert!(
        !lockdown.contains("[none]"),
        "{what}: kernel not locked down: {lockdown}"
    );
}

/// Measured boot under Secure Boot: the firmware's TPM event log reached the kernel
/// (through its EFI stub) and the signed GRUB extended PCR 8 (its commands) and PCR 9 (the
/// kernel and initramfs it loaded).
fn assert_measured(vm: &mut Vm, what: &str) {
    let size = vm
        .run_ok(
            "wc -c < /sys/kernel/security/tpm0/binary_bios_measurements",
            VM_CMD,
        )
        .unwrap();
    let size: u64 = size.trim().parse().unwrap_or(0);
    assert!(size > 0, "{what}: no TPM event log in securityfs");
    for pcr in [8, 9] {
        let v = vm
            .run_ok(&format!("cat /sys/class/tpm/tpm0/pcr-sha256/{pcr}"), VM_CMD)
            .unwrap();
        let v = v.trim();
        assert_eq!(v.len(), 64, "{what}: PCR {pcr}: {v:?}");
        assert!(
            v.chars().any(|c| c != '0') && v.chars().any(|c| c != 'F' && c != 'f'),
            "{what}: PCR {pcr} was never extended: {v}"
        );
    }
}

fn reboot_into(vm: &mut Vm, what: &str) -> String {
    vm.send("systemctl reboot\n").unwrap();
    let c = common::wait_booted(vm, what);
    common::vm_login(vm);
    c
}

#[test]
fn secure_boot_enforced_rollback_and_tampered_kernel_refused() {
    let f = common::base_commit();
    let work = common::fixture_workdir("vm-secureboot-");
    let out = work.path().join("base-sb.raw");
    let mut o = ImageOptions::new(&f.repo, &f.ref_, &out);
    o.format = Format::Raw;
    o.firmware = Firmware::Hybrid;
    o.extra_kargs = vec!["kiln.autologin".into()];
    let mut p = kiln::progress::Progress::new(false);
    image::build(&o, &mut p).expect("kiln image");

    let v2 = common::base_v2(&f, work.path());
    let bad = tampered_kernel_commit(&f, work.path());
    let updates = common::update_disk_with(&f, work.path(), &v2, &[(TAMPERED_REF, &bad)]);

    let mut o = VmOptions::new(&out, "vm-secureboot");
    o.artifacts = common::vm_artifacts();
    o.network = true;
    o.secure_boot = true;
    o.tpm = Some(TpmState::Fresh);
    o.disks.push(Disk {
        path: updates,
        read_only: true,
        serial: Some("updates".into()),
    });
    let mut vm = Vm::start(o).unwrap();

    // Boot 1: v1 through shim and the signed GRUB.
    assert_eq!(common::wait_booted(&mut vm, "boot 1"), f.commit);
    common::vm_login(&mut vm);
    assert_enforced(&mut vm, "boot 1");
    assert_measured(&mut vm, "boot 1");
    vm.run_ok(
        "mkdir -p /run/updates && mount -o ro /dev/disk/by-id/virtio-updates /run/updates",
        VM_CMD,
    )
    .unwrap();

    // Boot 2: the upgrade (a staged deployment, finalized at shutdown), on trial. The
    // health check is masked for this boot (the mask in /etc carries into v2's /etc) so
    // the boot counting GRUB did stays visible: the signed GRUB took one try with
    // `save_env` on the boot partition.
    vm.run_ok("systemctl mask kiln-health.service", VM_CMD)
        .unwrap();
    vm.run_ok("kiln upgrade --repo /run/updates/repo", VM_CMD)
        .unwrap();
    let env = vm.run_ok("cat /boot/grub/grubenv", VM_CMD).unwrap();
    assert!(
        env.contains(&format!("kiln_pending={v2}.")) && env.contains("kiln_tries=3"),
        "no trial of v2 before the reboot: {env}"
    );
    assert_eq!(
        reboot_into(&mut vm, "boot 2"),
        v2,
        "did not boot the upgrade"
    );
    assert_enforced(&mut vm, "boot 2");
    let env = vm.run_ok("cat /boot/grub/grubenv", VM_CMD).unwrap();
    assert!(
        env.contains(&format!("kiln_pending={v2}.")) && env.contains("kiln_tries=2"),
        "the signed GRUB did not count the trial boot: {env}"
    );
    vm.run_ok(
        "systemctl unmask kiln-health.service && kiln health mark-good",
        VM_CMD,
    )
    .unwrap();
    let env = vm.run_ok("cat /boot/grub/grubenv", VM_CMD).unwrap();
    assert!(!env.contains("kiln_tries="), "trial not ended: {env}");

    // Boot 3: the rollback entry.
    vm.run_ok("kiln rollback", VM_CMD).unwrap();
    assert_eq!(
        reboot_into(&mut vm, "boot 3"),
        f.commit,
        "rollback did not boot v1"
    );
    assert_enforced(&mut vm, "boot 3");

    // Boot 4: the next deployment's kernel is not signed by a trusted key.
    vm.run_ok(
        "mkdir -p /run/updates && mount -o ro /dev/disk/by-id/virtio-updates /run/updates",
        VM_CMD,
    )
    .unwrap();
    // By checksum: the commit is bound to the base ref, like every published commit.
    vm.run_ok(
        &format!("kiln deploy --repo /run/updates/repo {bad}"),
        VM_CMD,
    )
    .unwrap();
    assert!(!vm.console().contains("bad shim signature"));
    assert_eq!(
        reboot_into(&mut vm, "boot 4"),
        f.commit,
        "the previous deployment did not boot after the tampered kernel"
    );
    assert!(
        vm.console().contains("bad shim signature"),
        "GRUB did not refuse the tampered kernel (see the console log)"
    );
    assert_enforced(&mut vm, "boot 4");
    // The tampered deployment is the default entry; the fallback booted the next one.
    let st = common::vm_status_json(&mut vm);
    let deps = st["status"]["deployments"].as_array().unwrap();
    assert_eq!(deps[0]["checksum"], bad.as_str(), "{st}");
    assert_eq!(common::booted_in_status(&st), f.commit);
}
