// suite-minutes: 11 (TCG run time here: 11 for four boots under a load average of 6, more when recipes/tpm.toml must be recomposed)
//! End to end: a TPM 2.0 (swtpm, `VmOptions::tpm`) in a VM of the `recipes/tpm.toml`
//! variant, one machine booted four times (QEMU TCG).
//!
//! 1. First boot with a new TPM whose state is kept, Ignition config
//!    `examples/ignition/tpm-var.toml`: measured boot (the firmware's event log in
//!    securityfs, PCRs extended, sysfs and tpm2-tools agree); Ignition made a LUKS2 volume
//!    on the second disk bound to the TPM with clevis, /var is its filesystem, crypttab
//!    and the mount unit are there; the test writes a secret into /var.
//! 2. A reboot in the same QEMU: the secret is there, the volume opened unattended (no
//!    passphrase prompt).
//! 3. The same disks with a fresh TPM: the volume does not open, the console says why,
//!    and the LUKS header is intact (read from the host with `cryptsetup luksDump`).
//! 4. A cold boot in a new QEMU with the kept TPM state, through OVMF (measured boot
//!    checked again: the event log through the EFI stub, GRUB's PCRs 8 and 9): the
//!    volume opens unattended again and the secret is still there (nothing was lost to
//!    the fresh TPM's attempt).
//!
//! Console logs of failed boots land in `build/test-artifacts/`.

mod common;

use common::VM_CMD as CMD;
use kiln::image::{self, Format, ImageOptions};
use kiln::qemu::{Disk, TpmState, Vm, VmOptions};
use std::path::{Path, PathBuf};

const FW_CFG_NAME: &str = "opt/com.coreos/config";
/// What systemd-cryptsetup prints when it has to ask (it must never have to here).
const PROMPT: &str = "passphrase for disk";

fn work_dir() -> PathBuf {
    let d = common::fixture_dir().join("tpm");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tpm variant as a qcow2 image (platform qemu, autologin), rebuilt only when the
/// commit changed.
fn tpm_image() -> PathBuf {
    let f = common::variant_commit("tpm");
    let _l = common::lock(&work_dir().join("image.lock"));
    let img = work_dir().join("tpm-qemu.qcow2");
    let stamp = work_dir().join("tpm-qemu.qcow2.commit");
    if img.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&f.commit) {
        return img;
    }
    let _ = std::fs::remove_file(&stamp);
    let mut o = ImageOptions::new(&f.repo, &f.ref_, &img);
    o.format = Format::Qcow2;
    o.extra_kargs = vec!["kiln.autologin".into()];
    let mut p = kiln::progress::Progress::new(false);
    image::build(&o, &mut p).expect("kiln image of recipes/tpm.toml");
    std::fs::write(&stamp, &f.commit).unwrap();
    img
}

/// The example config, built by kiln and accepted by Ignition's own validator.
fn config(dir: &Path) -> PathBuf {
    let src = common::project_root().join("examples/ignition/tpm-var.toml");
    let json = kiln::ignition::build_config(&src, None, None).expect("kiln ignition build");
    let p = dir.join("tpm-var.ign");
    std::fs::write(&p, json).unwrap();
    let out = std::process::Command::new("ignition-validate")
        .arg(&p)
        .output()
        .expect("running ignition-validate (package ignition)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

struct Machine {
    disk: PathBuf,
    var: PathBuf,
    tpm: PathBuf,
    config: PathBuf,
}

impl Machine {
    fn options(&self, name: &str, tpm: TpmState, ignition: bool) -> VmOptions {
        let mut o = VmOptions::new(&self.disk, name);
        o.artifacts = common::vm_artifacts();
        o.snapshot = false;
        o.tpm = Some(tpm);
        o.disks.push(Disk {
            path: self.var.clone(),
            read_only: false,
            serial: Some("kiln-var".into()),
        });
        if ignition {
            o.fw_cfg.push((FW_CFG_NAME.into(), self.config.clone()));
        }
        o
    }

    fn kept_tpm(&self) -> TpmState {
        TpmState::Dir(self.tpm.clone())
    }
}

/// The console text since the latest kernel start.
fn last_boot(vm: &Vm) -> String {
    let c = vm.console();
    let i = c.rfind("Linux version").unwrap_or(0);
    kiln::qemu::strip_ansi(&c[i..])
}

/// Measured boot: the PCRs the firmware extends are not in their reset state (the
/// kernel's sysfs view and tpm2-tools agree) and the firmware's event log reached the
/// kernel (under OVMF through the kernel's EFI stub, which GRUB's `linuxefi` runs);
/// under `uefi` the signed GRUB also measured its commands (PCR 8) and the files it
/// loaded (PCR 9). docs/image.md.
fn check_measured_boot(vm: &mut Vm, uefi: bool) {
    assert_eq!(
        vm.run_ok("cat /sys/class/tpm/tpm0/tpm_version_major", CMD)
            .unwrap(),
        "2"
    );
    check_pcrs(vm, &[0, 1, 2, 4]);
    if uefi {
        check_pcrs(vm, &[8, 9]);
    }
    let log = "/sys/kernel/security/tpm0/binary_bios_measurements";
    let size: u64 = vm
        .run_ok(&format!("wc -c < {log}"), CMD)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(size > 0, "the TPM event log is empty");
    let events = vm
        .run_ok(
            &format!("tpm2_eventlog {log} 2>/dev/null | grep -c 'PCRIndex'"),
            CMD,
        )
        .unwrap();
    assert!(
        events.trim().parse::<u32>().unwrap() > 1,
        "events: {events}"
    );
}

fn check_pcrs(vm: &mut Vm, pcrs: &[u32]) {
    for &pcr in pcrs {
        let v = vm
            .run_ok(&format!("cat /sys/class/tpm/tpm0/pcr-sha256/{pcr}"), CMD)
            .unwrap()
            .trim()
            .to_ascii_lowercase();
        assert_eq!(v.len(), 64, "PCR {pcr}: {v:?}");
        assert!(
            v.chars().any(|c| c != '0') && v.chars().any(|c| c != 'f'),
            "PCR {pcr} was never extended: {v}"
        );
        let t = vm
            .run_ok(&format!("tpm2_pcrread sha256:{pcr}"), CMD)
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            t.contains(&format!("0x{v}")),
            "PCR {pcr}: sysfs {v}, tpm2_pcrread {t}"
        );
    }
}

/// /var is the filesystem of the clevis-bound LUKS2 volume Ignition made.
fn check_encrypted_var(vm: &mut Vm) {
    let m = vm.run_ok("findmnt -n -o SOURCE,FSTYPE /var", CMD).unwrap();
    assert!(
        m.contains("/dev/mapper/var") && m.contains("ext4"),
        "/var: {m}"
    );
    let st = vm.run_ok("cryptsetup status var", CMD).unwrap();
    assert!(
        st.contains("LUKS2") && st.contains("/dev/vdb1"),
        "cryptsetup status: {st}"
    );
    let pins = vm
        .run_ok("clevis luks list -d /dev/disk/by-partlabel/var", CMD)
        .unwrap();
    assert!(pins.contains("tpm2"), "clevis bindings: {pins}");
    vm.run_ok("grep -q '^var UUID=' /etc/crypttab", CMD)
        .unwrap();
    assert_eq!(
        vm.run_ok("cat /var/lib/kiln-example/hello.txt", CMD)
            .unwrap(),
        "written by Ignition to the encrypted /var"
    );
}

fn read_secret(vm: &mut Vm) -> String {
    vm.run_ok("cat /var/lib/kiln-test/secret", CMD).unwrap()
}

fn poweroff(vm: &mut Vm) {
    vm.send("systemctl poweroff\n").unwrap();
    vm.wait_exit(common::boot_timeout()).unwrap();
}

/// The LUKS2 header of the partition on the host's copy of the disk.
fn luks_dump(var: &Path, dir: &Path) -> String {
    let parts = kiln::blockdev::partitions(var).unwrap();
    let p = parts
        .iter()
        .find(|p| p.name == "var")
        .expect("partition var");
    let hdr = dir.join("var-header.img");
    let mut src = std::fs::File::open(var).unwrap();
    std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(p.offset)).unwrap();
    let mut dst = std::fs::File::create(&hdr).unwrap();
    std::io::copy(&mut std::io::Read::take(src, 16 << 20), &mut dst).unwrap();
    kiln::cmd::Cmd::new("cryptsetup")
        .arg("luksDump")
        .arg(&hdr)
        .read()
        .expect("cryptsetup luksDump (package cryptsetup-bin)")
}

#[test]
fn var_encrypted_and_bound_to_the_tpm() {
    let image = tpm_image();
    let dir = tempfile::Builder::new()
        .prefix("var-tpm-")
        .tempdir_in(work_dir())
        .unwrap();
    let m = Machine {
        disk: dir.path().join("disk.qcow2"),
        var: dir.path().join("var.raw"),
        tpm: dir.path().join("tpm"),
        config: config(dir.path()),
    };
    kiln::cmd::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image)
        .arg(&m.disk)
        .run()
        .unwrap();
    std::fs::File::create(&m.var)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let t = common::boot_timeout();

    // 1. Provisioning boot.
    let mut vm = Vm::start(m.options("tpm-var-1", m.kept_tpm(), true)).unwrap();
    common::wait_booted(&mut vm, "first boot");
    vm.login(t).unwrap();
    check_measured_boot(&mut vm, false);
    check_encrypted_var(&mut vm);
    let secret = vm
        .run_ok(
            "mkdir -p /var/lib/kiln-test && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' \
             > /var/lib/kiln-test/secret && sync && cat /var/lib/kiln-test/secret",
            CMD,
        )
        .unwrap();
    assert_eq!(secret.len(), 32, "{secret:?}");

    // 2. Reboot in the same QEMU (same TPM, PCRs reset by the platform reset).
    vm.send("systemctl reboot\n").unwrap();
    common::wait_booted(&mut vm, "reboot");
    vm.login(t).unwrap();
    assert_eq!(read_secret(&mut vm), secret);
    check_encrypted_var(&mut vm);
    let boot = last_boot(&vm);
    assert!(
        boot.contains("kiln-luks: LUKS volume var") && boot.contains("unlocked"),
        "no unlock report on the console:\n{boot}"
    );
    poweroff(&mut vm);
    assert!(!vm.console().contains(PROMPT), "a passphrase was asked for");
    drop(vm);

    // 3. The same disks in a machine with another (fresh) TPM.
    let mut vm = Vm::start(m.options("tpm-var-fresh", TpmState::Fresh, false)).unwrap();
    let line = vm.wait_for("did NOT unlock", t).unwrap();
    eprintln!("fresh TPM after {:?}: {line}", vm.elapsed());
    assert!(line.contains("LUKS volume var"), "{line}");
    vm.wait_for("does not hold the key", CMD).unwrap();
    vm.wait_for("header and data are intact", CMD).unwrap();
    assert!(
        !vm.console().contains("KILN-BOOTED"),
        "the boot went on without /var"
    );
    vm.kill();
    drop(vm);
    let dump = luks_dump(&m.var, dir.path());
    let version = dump
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim);
    assert_eq!(version, Some("2"), "not a LUKS2 header:\n{dump}");
    assert!(dump.contains("clevis"), "the clevis token is gone:\n{dump}");

    // 4. A cold boot in a new QEMU, the TPM state kept on the host, through UEFI (the
    //    image boots either way; no PCR policy, so the firmware does not matter to clevis):
    //    the right TPM again after the fresh one's attempt, and nothing was lost.
    let mut o = m.options("tpm-var-4", m.kept_tpm(), false);
    o.uefi = true;
    let mut vm = Vm::start(o).unwrap();
    common::wait_booted(&mut vm, "cold boot (UEFI) with the original TPM");
    vm.login(t).unwrap();
    check_measured_boot(&mut vm, true);
    assert_eq!(read_secret(&mut vm), secret);
    poweroff(&mut vm);
    assert!(!vm.console().contains(PROMPT), "a passphrase was asked for");
}
