// suite-minutes: 7 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! End to end: `recipes/base.toml` → commit → disk image → real QEMU (TCG) boots.
//!
//! - BIOS (SeaBIOS), qcow2, hybrid image (the shared booted base system, `common::booted`,
//!   resumed from its saved state): booted to multi-user, the boot-marker unit names
//!   the booted commit, /usr is read-only, /etc writable, `kiln status` lists the booted
//!   deployment; then `kiln upgrade` from an update repo on a second disk, reboot into v2
//!   (/var survived), `kiln rollback`, reboot into v1.
//! - UEFI (OVMF), raw, UEFI-only image: boots to multi-user.
//! - The qcow2 passes `qemu-img check`; `manifest.json` matches the files.
//!
//! Console logs of failed boots land in `build/test-artifacts/`. Boot timeouts scale with
//! `KILN_E2E_BOOT_TIMEOUT` (seconds, default 900: TCG on a busy 2-core CI runner is slow).

mod common;

use common::VM_CMD;
use kiln::cmd::Cmd;
use kiln::image::{self, Firmware, Format, ImageOptions};
use kiln::qemu::{Vm, VmOptions};
use std::path::Path;

fn build(f: &common::Composed, out: &Path, format: Format, fw: Firmware) -> image::ImageResult {
    let mut o = ImageOptions::new(&f.repo, &f.ref_, out);
    o.format = format;
    o.firmware = fw;
    o.extra_kargs = vec!["kiln.autologin".into()];
    let mut p = kiln::progress::Progress::new(false);
    image::build(&o, &mut p).expect("kiln image")
}

#[test]
fn bios_qcow2_boots_upgrades_and_rolls_back() {
    let f = common::base_commit();
    // The base image (qcow2, hybrid BIOS/UEFI, autologin) booted once for every test that
    // starts from a booted base system (common::booted); resumed here.
    let b = common::booted::booted_fixture();
    let out = &b.image;
    let manifest = b.dir.join("manifest.json");
    assert_eq!(b.v1, f.commit);

    // The artifact: qemu-img check, manifest checksum.
    Cmd::new("qemu-img")
        .args(["check", "-q"])
        .arg(out)
        .run()
        .expect("qemu-img check");
    let info = Cmd::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(out)
        .read()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(4096 * 1024 * 1024));
    let m = image::manifest::load(&manifest).unwrap();
    let a = &m.artifacts["base.qcow2"];
    assert_eq!(a.sha256, image::manifest::sha256_file(out).unwrap());
    assert_eq!(a.size, std::fs::metadata(out).unwrap().len());
    assert_eq!(a.commit, f.commit);
    image::manifest::verify(&manifest).unwrap();

    // Boot 1 (v1) happened when the fixture was saved; its console is in b.boot_log.
    // Restricted user networking there too: DHCP from QEMU (networkd-wait-online needs a
    // link), nothing reachable beyond the VM.
    assert_eq!(
        common::booted_commit(
            b.boot_log
                .lines()
                .find(|l| l.contains("KILN-BOOTED"))
                .expect("boot marker")
        ),
        f.commit
    );
    let v2 = b.v2.clone();
    let mut vm = common::booted::resume_booted(&b, "image-e2e-bios");
    common::vm_login(&mut vm);
    let state = vm
        .run_ok(
            "systemctl is-system-running --wait; systemctl --no-pager --failed --no-legend",
            VM_CMD,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.starts_with("running"), "system state: {state}");
    // systemd skips a unit to break an ordering cycle and says so only on the console.
    assert!(
        !b.boot_log.contains("Ordering cycle found"),
        "an ordering cycle among the image's units (see the console log)"
    );
    assert!(
        vm.run("touch /usr/kiln-e2e", VM_CMD).unwrap().0 != 0,
        "/usr is writable"
    );
    let usr = vm.run_ok("findmnt -no OPTIONS /usr", VM_CMD).unwrap();
    assert!(usr.split(',').any(|o| o == "ro"), "/usr options: {usr}");
    vm.run_ok("echo hello > /etc/kiln-e2e && cat /etc/kiln-e2e", VM_CMD)
        .unwrap();
    vm.run_ok("echo persisted > /var/kiln-e2e", VM_CMD).unwrap();
    let boot = vm
        .run_ok("findmnt -no SOURCE,FSTYPE /boot", VM_CMD)
        .unwrap();
    assert!(boot.contains("ext4"), "/boot: {boot}");
    let st = common::vm_status_json(&mut vm);
    assert_eq!(common::booted_in_status(&st), f.commit);
    let text = vm.run_ok("kiln status", VM_CMD).unwrap();
    assert!(
        text.contains("booted") && text.contains(&f.commit),
        "{text}"
    );

    // Upgrade to v2 from the second disk, reboot.
    common::booted::mount_updates(&mut vm);
    let up = vm
        .run_ok("kiln upgrade --repo /run/updates/repo", VM_CMD)
        .unwrap();
    eprintln!("upgrade: {up}");
    vm.send("systemctl reboot\n").unwrap();
    assert_eq!(
        common::wait_booted(&mut vm, "boot 2"),
        v2,
        "did not boot the upgrade"
    );
    common::vm_login(&mut vm);
    assert_eq!(
        vm.run_ok("cat /usr/share/kiln-e2e-v2", VM_CMD).unwrap(),
        "v2"
    );
    assert_eq!(vm.run_ok("cat /var/kiln-e2e", VM_CMD).unwrap(), "persisted");
    assert_eq!(vm.run_ok("cat /etc/kiln-e2e", VM_CMD).unwrap(), "hello");
    assert_eq!(
        common::booted_in_status(&common::vm_status_json(&mut vm)),
        v2
    );

    // Roll back, reboot into v1.
    let rb = vm.run_ok("kiln rollback", VM_CMD).unwrap();
    eprintln!("rollback: {rb}");
    vm.send("systemctl reboot\n").unwrap();
    assert_eq!(
        common::wait_booted(&mut vm, "boot 3"),
        f.commit,
        "rollback did not boot v1"
    );
    common::vm_login(&mut vm);
    assert_eq!(vm.run_ok("cat /var/kiln-e2e", VM_CMD).unwrap(), "persisted");
    assert!(vm.run("test -e /usr/share/kiln-e2e-v2", VM_CMD).unwrap().0 != 0);
}

#[test]
fn uefi_raw_boots() {
    let f = common::base_commit();
    let work = common::fixture_workdir("image-e2e-uefi-");
    let out = work.path().join("base-uefi.raw");
    let r = build(&f, &out, Format::Raw, Firmware::Uefi);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), r.virtual_size);
    image::manifest::verify(&work.path().join("manifest.json")).unwrap();
    // UEFI-only: no GRUB boot code in the MBR.
    let mbr = image::disk::read_bytes(&out, 0, 512).unwrap();
    assert!(mbr[..0x1b8].iter().all(|&b| b == 0), "MBR has boot code");

    let mut o = VmOptions::new(&out, "image-e2e-uefi");
    o.artifacts = common::vm_artifacts();
    // Restricted user networking: DHCP from QEMU, nothing reachable beyond the VM.
    o.network = true;
    o.uefi = true;
    let mut vm = Vm::start(o).unwrap();
    let line = vm.wait_for("KILN-BOOTED", common::boot_timeout()).unwrap();
    eprintln!("UEFI boot after {:?}: {line}", vm.elapsed());
    assert_eq!(common::booted_commit(&line), f.commit);
    common::vm_login(&mut vm);
    vm.run_ok("test -d /sys/firmware/efi", VM_CMD).unwrap();
    let state = vm
        .run_ok(
            "systemctl is-system-running --wait; systemctl --no-pager --failed --no-legend",
            VM_CMD,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(state.starts_with("running"), "system state: {state}");
}
