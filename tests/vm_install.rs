// suite-minutes: 2 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! `kiln install` under QEMU: a disk installed from the base commit's raw image with an
//! Ignition config and kernel arguments boots, runs Ignition once and keeps the arguments.
//! The install tests without a VM are in tests/install.rs.

mod common;

use common::install::{images, install_json, sparse, tmp, KARG, MIB};

/// One boot of an installed disk (about 2 minutes under TCG; hold /tmp/kiln-vm.lock when
/// running it by hand): Ignition runs on first boot from the config `kiln
/// install` put on /boot (platform `metal`), the stamp and config go, the kernel arguments
/// are the installed ones.
#[test]
fn installed_disk_runs_ignition_on_first_boot() {
    use kiln::qemu::{Vm, VmOptions};
    let timeout = common::boot_timeout();
    let cmd = common::VM_CMD;
    let (raw, _) = images();
    let t = tmp();
    let target = sparse(&t.path().join("disk.img"), 3 * 1024 * MIB);
    let cfg = t.path().join("boot.ign");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "ignition": {"version": "3.3.0"},
            "storage": {"files": [{"path": "/etc/kiln-installed", "mode": 420,
                                   "contents": {"source": "data:,installed"}}]}
        })
        .to_string(),
    )
    .unwrap();
    install_json(&[
        target.to_str().unwrap(),
        "--image",
        raw.to_str().unwrap(),
        "--ignition",
        cfg.to_str().unwrap(),
        "--karg",
        "kiln.autologin",
        "--karg",
        KARG,
    ]);
    let mut o = VmOptions::new(&target, "install-firstboot");
    o.artifacts = common::vm_artifacts();
    let mut vm = Vm::start(o).unwrap();
    vm.wait_for(
        "using the Ignition config from /boot/ignition/config.ign",
        timeout,
    )
    .unwrap();
    // The initramfs glue's line once every Ignition stage succeeded.
    vm.wait_for("Ignition finished; removed the first-boot stamp", timeout)
        .unwrap();
    vm.login(timeout).unwrap();
    assert_eq!(
        vm.run_ok("cat /etc/kiln-installed", cmd).unwrap(),
        "installed"
    );
    let cmdline = vm.run_ok("cat /proc/cmdline", cmd).unwrap();
    for k in [KARG, "ignition.platform.id=metal"] {
        assert!(cmdline.contains(k), "{k} not in {cmdline}");
    }
    vm.run_ok(
        "test ! -e /boot/ignition.firstboot && test ! -e /boot/ignition/config.ign",
        cmd,
    )
    .unwrap();
}
