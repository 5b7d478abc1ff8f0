//! A booted base system, shared by the VM tests that start from one: the base commit's
//! qcow2 image (hybrid BIOS/UEFI, `kiln.autologin`) and an update disk holding v2
//! (`update_disk`), booted once, logged in and saved (`kiln::qemu::snapshot`). Tests
//! resume it in seconds instead of paying a TCG boot each.
//!
//! Kept in `build/test-fixture/booted/` across test binaries (a file lock serialises
//! them: the first builds and boots, the others wait and resume) and across runs while
//! the base commit and the kiln binary are the same (`key`); otherwise rebuilt.

use super::{base_commit, fixture_dir, kiln_bin, lock, update_disk, VM_CMD};
use kiln::qemu::{Disk, Vm, VmOptions};
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct BootedBase {
    pub dir: PathBuf,
    /// The image as `kiln image` built it (its manifest.json beside it).
    pub image: PathBuf,
    /// The booted disk state: a qcow2 overlay of `image`, never written after the save.
    pub disk: PathBuf,
    pub state: PathBuf,
    /// The update disk (`LABEL=updates`, an archive repo with v2 on `ref_`).
    pub updates: PathBuf,
    pub ref_: String,
    pub v1: String,
    pub v2: String,
    /// The console of the boot that was saved.
    pub boot_log: String,
}

/// The shared booted base system, made on first use.
pub fn booted_fixture() -> BootedBase {
    static B: OnceLock<BootedBase> = OnceLock::new();
    B.get_or_init(|| {
        let f = base_commit();
        let dir = fixture_dir().join("booted");
        let _l = lock(&fixture_dir().join("booted.lock"));
        let kiln = kiln::image::manifest::sha256_file(&kiln_bin()).unwrap();
        let key = format!("commit {}\nkiln {kiln}\n", f.commit);
        let b = BootedBase {
            image: dir.join("base.qcow2"),
            disk: dir.join("booted.qcow2"),
            state: dir.join("state"),
            updates: dir.join("updates.ext4"),
            ref_: f.ref_.clone(),
            v1: f.commit.clone(),
            v2: std::fs::read_to_string(dir.join("v2")).unwrap_or_default(),
            boot_log: std::fs::read_to_string(dir.join("boot.log")).unwrap_or_default(),
            dir: dir.clone(),
        };
        if std::fs::read_to_string(dir.join("key")).ok().as_deref() == Some(key.as_str()) {
            eprintln!("booted base: resuming the saved one ({})", dir.display());
            return b;
        }
        make_booted_base(b, &f, &key)
    })
    .clone()
}

/// Builds the image and the update disk in `b.dir`, boots, logs in and saves. `key` is
/// written last: a half-made fixture is never taken for a whole one.
fn make_booted_base(mut b: BootedBase, f: &super::Composed, key: &str) -> BootedBase {
    let t = std::time::Instant::now();
    if b.dir.exists() {
        std::fs::remove_dir_all(&b.dir).unwrap();
    }
    std::fs::create_dir_all(&b.dir).unwrap();
    let mut o = kiln::image::ImageOptions::new(&f.repo, &f.ref_, &b.image);
    o.format = kiln::image::Format::Qcow2;
    o.extra_kargs = vec!["kiln.autologin".into()];
    let mut p = kiln::progress::Progress::new(false);
    kiln::image::build(&o, &mut p).expect("kiln image");
    let (updates, v2) = update_disk(f, &b.dir);
    assert_eq!(updates, b.updates);
    kiln::qemu::snapshot::overlay(&b.image, &b.disk).unwrap();

    let mut vo = booted_machine(&b, "booted-base");
    vo.snapshot = false;
    vo.incoming = None;
    let mut vm = Vm::start(vo).unwrap();
    let booted = super::wait_booted(&mut vm, "booted base");
    assert_eq!(booted, f.commit, "the base image booted another commit");
    super::vm_login(&mut vm);
    let state = vm
        .run_ok("systemctl is-system-running --wait", VM_CMD)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.trim(), "running", "system state: {state}");
    b.boot_log = vm.console();
    vm.save(&b.state).unwrap();
    std::fs::write(b.dir.join("boot.log"), &b.boot_log).unwrap();
    std::fs::write(b.dir.join("v2"), &v2).unwrap();
    b.v2 = v2;
    std::fs::write(b.dir.join("key"), key).unwrap();
    eprintln!(
        "booted base: built, booted and saved in {:.0?}",
        t.elapsed()
    );
    b
}

/// The machine the base system was saved on; resuming needs the same one. Tests may
/// change `name` and `artifacts`, nothing that QEMU migrates (memory, vCPUs, firmware,
/// disks, network).
fn booted_machine(b: &BootedBase, name: &str) -> VmOptions {
    let mut o = VmOptions::new(&b.disk, name);
    o.artifacts = super::vm_artifacts();
    o.network = true;
    o.monitor = true;
    o.disks.push(Disk {
        path: b.updates.clone(),
        read_only: true,
        serial: Some("updates".into()),
    });
    o.incoming = Some(b.state.clone());
    o
}

/// Options that resume the booted base system (writes go to a throwaway overlay).
pub fn booted_options(b: &BootedBase, name: &str) -> VmOptions {
    booted_machine(b, name)
}

/// Resumes the booted base system: logged in on the console, the clock set to now.
pub fn resume_booted(b: &BootedBase, name: &str) -> Vm {
    resume_booted_with(booted_options(b, name))
}

/// Resumes from `o` (made by [`booted_options`]).
pub fn resume_booted_with(o: VmOptions) -> Vm {
    let t = std::time::Instant::now();
    let mut vm = Vm::start(o).unwrap();
    super::vm_login(&mut vm);
    vm.set_clock(VM_CMD).unwrap();
    eprintln!("booted base: resumed in {:.1?}", t.elapsed());
    vm
}

/// Where the update disk's repo is mounted by [`mount_updates`].
pub const UPDATES: &str = "/run/updates/repo";

/// Mounts the update disk at `/run/updates` in the guest.
pub fn mount_updates(vm: &mut Vm) {
    vm.run_ok(
        "mkdir -p /run/updates && { mountpoint -q /run/updates || mount -o ro /dev/disk/by-id/virtio-updates /run/updates; }",
        VM_CMD,
    )
    .unwrap();
}
