// suite-minutes: 1 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! The QEMU harness itself, against a real QEMU that boots nothing: paths with commas reach
//! QEMU as one option value (no broken or injected `-drive` options), and the QMP monitor
//! answers.

mod common;

use kiln::qemu::{Disk, Vm, VmOptions};

/// The comma test points the process's TMPDIR (where a VM's work dir goes) at a directory
/// it removes when done: the tests of this file take turns, also when cargo runs them
/// on several threads.
static TMPDIR_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn paths_with_commas_reach_qemu_whole() {
    let _turn = TMPDIR_TURN.lock().unwrap_or_else(|e| e.into_inner());
    // The work dir (console and monitor sockets, the UEFI vars copy) has a comma too.
    let base = common::fixture_workdir("vm-harness-");
    let tmp = base.path().join("tmp,x");
    std::fs::create_dir(&tmp).unwrap();
    std::env::set_var("TMPDIR", &tmp);
    let dir = base.path().join("a,b");
    std::fs::create_dir(&dir).unwrap();
    // Without escaping, `,format=qcow2` would become a second drive option.
    let img = dir.join("disk,format=qcow2,x.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let extra = dir.join("extra,snapshot=off.raw");
    std::fs::write(&extra, vec![0u8; 1 << 20]).unwrap();
    let ign = dir.join("config,1.ign");
    std::fs::write(&ign, "{}").unwrap();

    let mut o = VmOptions::new(&img, "vm-harness");
    o.artifacts = common::vm_artifacts();
    o.uefi = true;
    o.monitor = true;
    o.disks.push(Disk {
        path: extra.clone(),
        read_only: true,
        serial: Some("x,y".into()),
    });
    o.fw_cfg.push(("opt/com.coreos/config".into(), ign));
    let mut vm = Vm::start(o).unwrap();
    let blocks = vm.qmp("query-block", serde_json::Value::Null).unwrap();
    let file_of = |dev: &str| -> String {
        let b = blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["device"] == dev)
            .unwrap_or_else(|| panic!("no drive {dev}: {blocks:#}"));
        // snapshot=on: the image is the backing file of a temp overlay.
        let img = &b["inserted"]["image"];
        img["backing-image"]["filename"]
            .as_str()
            .or(img["filename"].as_str())
            .unwrap()
            .to_string()
    };
    assert_eq!(file_of("d0"), img.to_str().unwrap());
    assert_eq!(file_of("x0"), extra.to_str().unwrap());
    let info = vm.monitor("info qtree").unwrap();
    assert!(info.contains("serial = \"x,y\""), "{info}");
    vm.qmp("quit", serde_json::Value::Null).ok();
    vm.wait_exit(std::time::Duration::from_secs(30)).unwrap();
    // `base` goes now: the next test's VM must not make its temp dir in it.
    std::env::remove_var("TMPDIR");
}

#[test]
fn a_saved_vm_resumes_and_throwaway_disks_are_never_saved() {
    let _turn = TMPDIR_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let base = common::fixture_workdir("vm-harness-save-");
    let disk = base.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The firmware finds nothing to boot and keeps trying: a running guest all the same.
    let mut o = VmOptions::new(&disk, "vm-harness-save");
    o.artifacts = common::vm_artifacts();
    o.monitor = true;
    let mut vm = Vm::start(o.clone()).unwrap();
    let state = base.path().join("state");
    let err = vm.save(&state).unwrap_err();
    assert!(format!("{err:#}").contains("throwaway"), "{err:#}");
    assert!(!state.exists());
    vm.kill();

    let overlay = base.path().join("disk.qcow2");
    kiln::qemu::snapshot::overlay(&disk, &overlay).unwrap();
    let mut o = VmOptions::new(&overlay, "vm-harness-save");
    o.artifacts = common::vm_artifacts();
    o.monitor = true;
    o.snapshot = false;
    let mut vm = Vm::start(o.clone()).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    vm.save(&state).unwrap();
    assert!(std::fs::metadata(&state).unwrap().len() > 0);
    // No temp files left beside it.
    let left: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".state-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Twice from the same state, at once: the saved disk is only ever read.
    o.snapshot = true;
    o.incoming = Some(state.clone());
    let before = std::fs::read(&overlay).unwrap();
    let mut a = Vm::start(o.clone()).unwrap();
    let mut b = Vm::start(o).unwrap();
    for vm in [&mut a, &mut b] {
        let st = vm.qmp("query-status", serde_json::Value::Null).unwrap();
        assert_eq!(st["status"], "running", "{st}");
        vm.qmp("quit", serde_json::Value::Null).ok();
        vm.wait_exit(std::time::Duration::from_secs(30)).unwrap();
    }
    assert!(
        std::fs::read(&overlay).unwrap() == before,
        "the saved disk was written"
    );
}
