// suite-minutes: 10 (TCG run time: 12.6 min here under a load average of 6 for five kernel boots, seven before; tests/suite.sh balances the VM test files over two groups by it)
//! End to end: first boot of a kiln image provisioned by the real Ignition (QEMU TCG).
//!
//! - fw_cfg (`kiln run --ignition`, platform `qemu`), one disk: a config with a bad hash
//!   stops the boot with a console message naming the stage; the stamp stays, so the same
//!   disk's next boot, with a config that writes files in /etc and /var, creates a user
//!   with an ssh key, enables a unit that prints a marker and sets a kernel argument, is
//!   provisioned. The marker appears after exactly one extra (kargs) reboot; the files,
//!   the user's key (honoured by sshd) and the argument are there; the boot after that
//!   does not run Ignition again and keeps the state.
//! - The same config embedded with `kiln image --ignition` (platform `metal`), with a
//!   second disk partitioned, formatted and mounted under /var (one boot checks both).
//!
//! Console logs of failed boots land in `build/test-artifacts/`. Timeouts scale with
//! `KILN_E2E_BOOT_TIMEOUT` (seconds, default 900).

mod common;

use kiln::image::{self, Format, ImageOptions, Platform};
use kiln::qemu::{Disk, Vm, VmOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const MARKER: &str = "KILN-IGNITION-MARKER";
const KARG: &str = "kiln.test=firstboot";
use common::VM_CMD as CMD;
const FW_CFG_NAME: &str = "opt/com.coreos/config";

fn ssh_key() -> String {
    std::fs::read_to_string(common::project_root().join("tests/firstboot/test_key.pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn work_dir() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let d = common::fixture_dir().join("firstboot");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// The unit the configs enable: prints the marker on the console on every boot.
fn marker_unit() -> serde_json::Value {
    json!({
        "name": "kiln-ignition-marker.service",
        "enabled": true,
        "contents": format!(
            "[Unit]\nDescription=kiln first-boot test marker\nAfter=multi-user.target\n\
             [Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo {MARKER} > /dev/console'\n\
             [Install]\nWantedBy=multi-user.target\n"
        )
    })
}

/// Files, a user with an ssh key, the marker unit and a kernel argument.
fn main_config() -> serde_json::Value {
    json!({
        "ignition": {"version": "3.3.0"},
        "kernelArguments": {"shouldExist": [KARG]},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [ssh_key()]}]},
        "storage": {"files": [
            {"path": "/etc/kiln-test/hello.txt", "mode": 420,
             "contents": {"source": "data:,hello%20from%20ignition"}},
            {"path": "/var/lib/kiln-test/data.txt", "mode": 420,
             "contents": {"source": "data:,var%20persists"}}
        ]},
        "systemd": {"units": [marker_unit()]}
    })
}

fn write_config(name: &str, v: &serde_json::Value) -> PathBuf {
    let p = work_dir().join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    // The configs are checked by Ignition's own validator first.
    let out = std::process::Command::new("ignition-validate")
        .arg(&p)
        .output()
        .expect("running ignition-validate (package ignition)");
    assert!(
        out.status.success(),
        "{name} is not a valid Ignition config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

fn build_image(name: &str, ignition: Option<PathBuf>, platform: Option<Platform>) -> PathBuf {
    let f = common::base_commit();
    let out = work_dir().join(name);
    let mut o = ImageOptions::new(&f.repo, &f.ref_, &out);
    o.format = Format::Qcow2;
    o.extra_kargs = vec!["kiln.autologin".into()];
    o.ignition = ignition;
    o.platform = platform;
    let mut p = kiln::progress::Progress::new(false);
    let r = image::build(&o, &mut p).expect("kiln image");
    assert!(
        r.kargs.iter().any(|k| k == "$ignition_firstboot"),
        "image kargs lack $ignition_firstboot: {:?}",
        r.kargs
    );
    out
}

/// The base image with no embedded config (platform `qemu`), built once per commit and
/// shared by the tests (and test processes) that boot overlays of it.
fn qemu_image() -> PathBuf {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let _l = common::lock(&work_dir().join("qemu-image.lock"));
        let commit = common::base_commit().commit;
        let img = work_dir().join("base-qemu.qcow2");
        let stamp = work_dir().join("base-qemu.qcow2.commit");
        if img.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&commit) {
            return img;
        }
        let _ = std::fs::remove_file(&stamp);
        let img = build_image("base-qemu.qcow2", None, None);
        std::fs::write(&stamp, &commit).unwrap();
        img
    })
    .clone()
}

/// A copy-on-write overlay of `base`, so a test can reboot the disk across QEMU runs.
fn overlay(base: &Path, name: &str) -> PathBuf {
    let p = work_dir().join(name);
    let _ = std::fs::remove_file(&p);
    kiln::cmd::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&p)
        .run()
        .unwrap();
    p
}

fn vm_options(image: &Path, name: &str, config: Option<&Path>) -> VmOptions {
    let mut o = VmOptions::new(image, name);
    o.artifacts = common::vm_artifacts();
    if let Some(c) = config {
        o.fw_cfg = vec![(FW_CFG_NAME.into(), c.to_path_buf())];
    }
    o
}

/// Kernel boots seen on the console so far.
fn kernel_boots(vm: &Vm) -> usize {
    vm.console().matches("Linux version").count()
}

/// The console text of the latest boot.
fn last_boot(vm: &Vm) -> String {
    let c = vm.console();
    let i = c.rfind("Linux version").unwrap_or(0);
    kiln::qemu::strip_ansi(&c[i..])
}

/// `provisioning_boot`: Ignition ran on this boot, so GRUB put `ignition.firstboot` on its
/// command line (the stamp existed when it booted); on later boots it must be gone.
fn check_main_config_applied(vm: &mut Vm, provisioning_boot: bool) {
    let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(cmdline.contains(KARG), "kernel argument missing: {cmdline}");
    assert_eq!(
        cmdline
            .split_whitespace()
            .any(|w| w == "ignition.firstboot"),
        provisioning_boot,
        "ignition.firstboot on the command line: {cmdline}"
    );
    // Either way the stamp is gone: the next boot does not provision again.
    vm.run_ok("test ! -e /boot/ignition.firstboot", CMD)
        .unwrap_or_else(|e| panic!("the first-boot stamp is still there: {e}"));
    assert_eq!(
        vm.run_ok("cat /etc/kiln-test/hello.txt", CMD).unwrap(),
        "hello from ignition"
    );
    assert_eq!(
        vm.run_ok("cat /var/lib/kiln-test/data.txt", CMD).unwrap(),
        "var persists"
    );
    let keys = vm
        .run_ok("cat /home/core/.ssh/authorized_keys.d/ignition", CMD)
        .unwrap();
    assert!(keys.contains(&ssh_key()), "authorized keys: {keys}");
    assert_eq!(
        vm.run_ok("stat -c %U /home/core/.ssh/authorized_keys.d/ignition", CMD)
            .unwrap(),
        "core"
    );
    // sshd reads the file Ignition wrote.
    let akf = vm
        .run_ok(
            "{ ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A >/dev/null; } && \
             mkdir -p /run/sshd && sshd -T -C user=core,host=h,addr=127.0.0.1 | grep -i '^authorizedkeysfile'",
            CMD,
        )
        .unwrap();
    assert!(
        akf.contains(".ssh/authorized_keys.d/ignition"),
        "sshd: {akf}"
    );
    // The argument is in the deployment's boot entry (libostree), next to the
    // unexpanded first-boot variable.
    let entry = vm
        .run_ok("grep -h '^options' /boot/loader/entries/*.conf", CMD)
        .unwrap();
    assert!(entry.contains(KARG), "boot entry: {entry}");
    assert!(entry.contains("$ignition_firstboot"), "boot entry: {entry}");
    // The stamp is gone.
    vm.run_ok("test ! -e /boot/ignition.firstboot", CMD)
        .unwrap();
}

/// The main config plus a second disk partitioned, formatted and mounted under /var,
/// embedded in a `metal` image: one boot checks both.
#[test]
fn embedded_config_metal_with_a_second_disk_under_var() {
    let mut v = main_config();
    v["storage"]["disks"] = json!([{
        "device": "/dev/disk/by-id/virtio-kiln-data",
        "wipeTable": true,
        "partitions": [{"number": 1, "label": "kiln-data"}]
    }]);
    v["storage"]["filesystems"] = json!([{
        "device": "/dev/disk/by-partlabel/kiln-data",
        "format": "ext4",
        "label": "kiln-data",
        "path": "/var/data",
        "wipeFilesystem": true
    }]);
    v["storage"]["files"].as_array_mut().unwrap().push(json!(
        {"path": "/var/data/hello.txt", "mode": 420,
         "contents": {"source": "data:,on%20the%20second%20disk"}}));
    v["systemd"]["units"].as_array_mut().unwrap().push(json!(
        {"name": "var-data.mount", "enabled": true,
         "contents": "[Unit]\nBefore=local-fs.target\n[Mount]\nWhat=/dev/disk/by-label/kiln-data\nWhere=/var/data\nType=ext4\n[Install]\nWantedBy=local-fs.target\n"}));
    let cfg = write_config("metal.ign", &v);
    let img = build_image("base-metal.qcow2", Some(cfg), None);
    let data = work_dir().join("data-disk.raw");
    let f = std::fs::File::create(&data).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let mut o = vm_options(&img, "firstboot-metal", None);
    o.disks.push(Disk {
        path: data,
        read_only: false,
        serial: Some("kiln-data".into()),
    });
    let mut vm = Vm::start(o).unwrap();
    let t = common::boot_timeout();
    vm.wait_for(
        "using the Ignition config from /boot/ignition/config.ign",
        t,
    )
    .unwrap();
    vm.wait_for(MARKER, t).unwrap();
    vm.login(t).unwrap();
    check_main_config_applied(&mut vm, true);
    assert!(vm
        .run_ok("cat /proc/cmdline", CMD)
        .unwrap()
        .contains("ignition.platform.id=metal"));
    // The config copy on /boot (secrets) went with the stamp.
    vm.run_ok("test ! -e /boot/ignition/config.ign", CMD)
        .unwrap();
    // The second disk.
    let m = vm
        .run_ok("findmnt -n -o SOURCE,FSTYPE,LABEL /var/data", CMD)
        .unwrap();
    assert!(m.contains("/dev/vdb1") && m.contains("ext4"), "mount: {m}");
    assert_eq!(
        vm.run_ok("cat /var/data/hello.txt", CMD).unwrap(),
        "on the second disk"
    );
    let parts = vm.run_ok("lsblk -n -o PARTLABEL /dev/vdb1", CMD).unwrap();
    assert_eq!(parts.trim(), "kiln-data");
}

/// fw_cfg (platform `qemu`), one disk: a config with a bad hash stops the first boot with
/// a console message naming the stage and the stamp stays; the next boot, with the main
/// config, provisions it (exactly one extra reboot, for the kernel argument), and the boot
/// after that does not run Ignition again and keeps the state.
#[test]
fn fwcfg_bad_hash_stops_boot_then_good_config_is_applied_once() {
    let img = overlay(&qemu_image(), "fwcfg.qcow2");
    let bad = write_config(
        "bad.ign",
        &json!({
            "ignition": {"version": "3.3.0"},
            "storage": {"files": [{
                "path": "/etc/kiln-test/bad.txt",
                "contents": {
                    "source": "data:,not%20what%20the%20hash%20says",
                    "verification": {"hash": format!("sha512-{}", "0".repeat(128))}
                }
            }]},
            "systemd": {"units": [marker_unit()]}
        }),
    );
    let t = common::boot_timeout();
    {
        let mut o = vm_options(&img, "firstboot-bad", Some(&bad));
        o.snapshot = false;
        let mut vm = Vm::start(o).unwrap();
        let line = vm.wait_for("kiln: Ignition failed in stage", t).unwrap();
        assert!(line.contains("'files'"), "{line}");
        vm.wait_for("the machine was NOT provisioned", CMD).unwrap();
        let c = kiln::qemu::strip_ansi(&vm.console());
        let block = &c[c.find("kiln: Ignition failed in stage").unwrap()..];
        assert!(
            block.to_lowercase().contains("hash") || block.contains("bad.txt"),
            "the message does not name the error:\n{block}"
        );
        assert!(!c.contains(MARKER), "the failed boot went on to the system");
        assert!(
            !c.contains("KILN-BOOTED"),
            "the failed boot went on to the system"
        );
        vm.kill();
    }
    // The stamp stayed: the same disk with a good config is provisioned on its next boot.
    let cfg = write_config("main.ign", &main_config());
    let mut o = vm_options(&img, "firstboot-fwcfg", Some(&cfg));
    o.snapshot = false;
    let mut vm = Vm::start(o).unwrap();
    vm.wait_for("kernel arguments changed; rebooting", t)
        .unwrap();
    vm.wait_for(MARKER, t).unwrap();
    eprintln!("first boot to marker: {:.1} s", vm.elapsed().as_secs_f64());
    // Exactly one reboot, for the kernel argument.
    assert_eq!(kernel_boots(&vm), 2, "kernel boots before the marker");
    assert!(last_boot(&vm).contains("Ignition (files)"));
    vm.login(t).unwrap();
    check_main_config_applied(&mut vm, true);
    assert!(vm
        .run_ok("cat /proc/cmdline", CMD)
        .unwrap()
        .contains("ignition.platform.id=qemu"));

    // Second boot: no Ignition, same state.
    vm.send("systemctl reboot\n").unwrap();
    // The marker unit and the boot marker both run after multi-user.target, in either
    // order.
    vm.wait_for_all(&["KILN-BOOTED", MARKER], t).unwrap();
    assert_eq!(kernel_boots(&vm), 3);
    let second = last_boot(&vm);
    assert!(
        !second.contains("Ignition (files)") && !second.contains("Ignition (fetch"),
        "Ignition ran on the second boot"
    );
    vm.login(t).unwrap();
    check_main_config_applied(&mut vm, false);
}
