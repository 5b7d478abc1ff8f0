// suite-minutes: 5 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! Cloud and VM templates (docs/cloud.md) under QEMU: two VMs made from one template of
//! the composed `recipes/base.toml` (each booted from its own copy, one after the other,
//! one of them on a bigger disk) end with different machine-ids, SSH host keys,
//! filesystem UUIDs and disk GUIDs, the same commit, and a root grown to the disk.
//! Every platform's artifact is checked by the real tools in tests/cloud.rs.
//!
//! Console logs of failed boots land in `build/test-artifacts/`. Boot timeouts scale with
//! `KILN_E2E_BOOT_TIMEOUT` (seconds, default 900).

mod common;

use common::{boot_timeout, VM_CMD as CMD};
use kiln::cmd::Cmd;
use kiln::image::{self, Platform};
use kiln::qemu::{Vm, VmOptions};
use std::path::Path;
use std::time::Duration;

const GIB4: u64 = 4096 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// What one booted clone says about itself.
#[derive(Debug)]
struct Identity {
    machine_id: String,
    host_keys: String,
    boot_uuid: String,
    root_uuid: String,
    disk_guid: String,
    commit: String,
    root_bytes: u64,
}

fn boot_and_inspect(image: &Path, name: &str) -> Identity {
    let mut o = VmOptions::new(image, name);
    o.artifacts = common::vm_artifacts();
    o.network = true;
    let mut vm = Vm::start(o).unwrap();
    let line = vm.wait_for("KILN-BOOTED", boot_timeout()).unwrap();
    eprintln!("{name} booted after {:?}: {line}", vm.elapsed());
    let commit = common::booted_commit(&line);
    vm.login(boot_timeout()).unwrap();
    let state = vm
        .run_ok(
            "systemctl is-system-running --wait; systemctl --no-pager --failed --no-legend",
            CMD,
        )
        .unwrap();
    assert!(state.starts_with("running"), "{name}: {state}");
    let q = |vm: &mut Vm, c: &str| vm.run_ok(c, CMD).unwrap().trim().to_string();
    let journal = q(
        &mut vm,
        "journalctl -b -o cat -u kiln-template-disk.service | grep kiln-template || true",
    );
    eprintln!("{name}: {journal}");
    let id = Identity {
        machine_id: q(&mut vm, "cat /etc/machine-id"),
        host_keys: q(
            &mut vm,
            "for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done",
        ),
        boot_uuid: q(&mut vm, "blkid -s UUID -o value /dev/disk/by-label/boot"),
        root_uuid: q(&mut vm, "blkid -s UUID -o value /dev/disk/by-label/root"),
        disk_guid: q(&mut vm, "lsblk -ndo PTUUID /dev/disk/by-label/root"),
        commit,
        root_bytes: q(&mut vm, "df -B1 --output=size /sysroot | tail -1")
            .parse()
            .unwrap(),
    };
    // Nothing failed, and the new UUIDs are what the kernel mounted.
    let mounted = q(&mut vm, "findmnt -no UUID /sysroot");
    assert_eq!(mounted, id.root_uuid, "{name}");
    vm.send("systemctl poweroff\n").unwrap();
    vm.wait_exit(Duration::from_secs(300)).unwrap();
    eprintln!("{name}: {id:?}");
    id
}

#[test]
fn clones_of_one_template_are_each_their_own_machine() {
    let f = common::base_commit();
    let work = common::fixture_workdir("cloud-clones-");
    let template = work.path().join("template.qcow2");
    let mut o = image::ImageOptions::new(&f.repo, &f.ref_, &template);
    o.platform = Some(Platform::Qemu);
    o.extra_kargs = vec!["kiln.autologin".into()];
    let mut p = kiln::progress::Progress::new(false);
    let r = image::build(&o, &mut p).expect("kiln image");
    let fixed = image::disk::Ids::for_commit(&r.commit);

    // Two copies of the template; the first on a 6 GiB disk.
    let a = work.path().join("clone-a.qcow2");
    let b = work.path().join("clone-b.qcow2");
    std::fs::copy(&template, &a).unwrap();
    std::fs::copy(&template, &b).unwrap();
    Cmd::new("qemu-img")
        .args(["resize", "-f", "qcow2"])
        .arg(&a)
        .arg("6G")
        .run()
        .unwrap();

    // One VM at a time.
    let ia = boot_and_inspect(&a, "cloud-clone-a");
    let ib = boot_and_inspect(&b, "cloud-clone-b");

    assert_eq!(ia.commit, f.commit);
    assert_eq!(ib.commit, f.commit);
    for id in [&ia, &ib] {
        assert_eq!(id.machine_id.len(), 32, "{id:?}");
        assert!(id.host_keys.contains("ED25519"), "{id:?}");
        assert_ne!(id.boot_uuid, fixed.boot_fs_uuid, "boot UUID not renewed");
        assert_ne!(id.root_uuid, fixed.root_fs_uuid, "root UUID not renewed");
        assert_ne!(
            id.disk_guid.to_lowercase(),
            fixed.disk_guid.to_lowercase(),
            "disk GUID not renewed"
        );
    }
    assert_ne!(ia.machine_id, ib.machine_id);
    assert_ne!(ia.host_keys, ib.host_keys);
    assert_ne!(ia.boot_uuid, ib.boot_uuid);
    assert_ne!(ia.root_uuid, ib.root_uuid);
    assert_ne!(ia.disk_guid, ib.disk_guid);
    // Root grown to the disk: clone A's root partition ends at 6 GiB, B's stays.
    let layout = image::disk::Layout::for_size(GIB4).unwrap();
    let grown = 6 * 1024 * MIB - layout.root.offset;
    assert!(
        ia.root_bytes > grown - 200 * MIB && ia.root_bytes <= grown,
        "clone A's root is {} bytes, expected about {grown}",
        ia.root_bytes
    );
    assert!(
        ib.root_bytes <= layout.root.size && ib.root_bytes > layout.root.size - 200 * MIB,
        "clone B's root is {} bytes, expected about {}",
        ib.root_bytes,
        layout.root.size
    );
}
