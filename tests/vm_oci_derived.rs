// suite-minutes: 4 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! A derived OS image boots (QEMU, TCG): the base published with `kiln publish --oci`, a
//! Containerfile `FROM` it that installs a package with apt (`podman build`), the result
//! imported on the host (`kiln::deploy::image::fetch_to_repo`, what `kiln image
//! --from-oci` uses) and handed to the saved booted base system on an update disk (an
//! archive repo; no registry). In the guest: `kiln deploy`, reboot into the derived
//! commit, the package runs, dpkg knows it, `/etc` has its conffile.

mod common;

use common::derived::{self, Podman};
use common::{vm_login, wait_booted, VM_CMD};
use kiln::cmd::Cmd;
use kiln::repo::oci::ImageRef;
use std::path::Path;

const REF: &str = "kiln/derived/x86_64/test";

/// An ext4 disk holding an archive repo with `commit` (from `src`) on [`REF`].
fn update_disk(src: &Path, commit: &str, work: &Path) -> std::path::PathBuf {
    let top = work.join("updates");
    let repo = top.join("repo");
    let ostree = |args: &[&str]| {
        Cmd::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(args)
            .run()
            .unwrap()
    };
    std::fs::create_dir_all(&repo).unwrap();
    ostree(&["init", "--mode=archive"]);
    ostree(&["pull-local", "--depth=0", src.to_str().unwrap(), commit]);
    ostree(&["refs", &format!("--create={REF}"), commit]);
    let disk = work.join("updates.ext4");
    kiln::image::disk::mkfs_ext4(
        &top,
        &disk,
        3 * 1024 * 1024 * 1024,
        "updates",
        "00000000-4b49-4c4e-8000-0000000000c0",
        None,
        &work.join("mkfs.log"),
    )
    .unwrap();
    disk
}

/// Removes the OCI layout even when the test fails.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn vm_derived_image_deploys_and_its_package_runs() {
    let f = common::base_commit();
    let base = common::booted::booted_fixture();
    let work = common::fixture_workdir("oci-vm-derived");
    let layout = common::fixture_dir().join(format!("oci-vm-derived-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    let cleanup = RemoveDir(layout.clone());
    let t = std::time::Instant::now();
    common::kiln_ok(&[
        "publish",
        "--repo",
        f.repo.to_str().unwrap(),
        "--ref",
        &f.ref_,
        "--oci",
        &format!("oci:{}:base", layout.display()),
    ]);
    let p = Podman::new(&work.path().join("podman"));
    let id = p.run(&["pull", "-q", &format!("oci:{}:base", layout.display())]);
    let id = id.lines().last().unwrap().trim().to_string();
    derived::build(&p, &id, work.path(), &layout, "derived");
    drop(p);
    let img = ImageRef::parse(&format!(
        "ostree-unverified-image:oci:{}:derived",
        layout.display()
    ))
    .unwrap();
    let repo = work.path().join("repo");
    let got = kiln::deploy::image::fetch_to_repo(&img, &repo, None).unwrap();
    assert_eq!(got.base_commit.as_deref(), Some(f.commit.as_str()));
    let disk = update_disk(&repo, &got.commit, work.path());
    drop(cleanup);
    eprintln!("derived commit {} ready in {:?}", got.commit, t.elapsed());

    let mut o = common::booted::booted_options(&base, "oci-derived");
    o.disks[0].path = disk;
    let mut vm = common::booted::resume_booted_with(o);
    common::booted::mount_updates(&mut vm);
    let out = vm
        .run_ok(
            &format!("kiln deploy --repo {} {REF}", common::booted::UPDATES),
            VM_CMD,
        )
        .unwrap();
    eprintln!("{out}");
    vm.send("systemctl reboot\n").unwrap();
    assert_eq!(
        wait_booted(&mut vm, "derived boot"),
        got.commit,
        "the derived commit did not boot"
    );
    vm_login(&mut vm);
    assert_eq!(
        vm.run_ok(derived::PKG, VM_CMD).unwrap().trim(),
        derived::GREETING
    );
    let st = vm
        .run_ok(
            &format!(
                "dpkg-query -W -f '${{Status}} ${{Version}}' {}",
                derived::PKG
            ),
            VM_CMD,
        )
        .unwrap();
    assert_eq!(
        st.trim(),
        format!("install ok installed {}", derived::PKG_VERSION)
    );
    assert!(vm
        .run_ok("cat /etc/kiln-hello.conf", VM_CMD)
        .unwrap()
        .contains("derived image"));
}
