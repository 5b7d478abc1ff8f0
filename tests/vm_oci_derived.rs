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
use kiln::repo::oci::ImageRef;

const REF: &str = "kiln/derived/x86_64/test";

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
    let t = std::time::Instant::now();
    let (layout, _) = common::publish_base_layout("oci-vm-derived");
    let cleanup = RemoveDir(layout.clone());
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
    let disk = common::archive_disk(work.path(), &[("repo", &repo, REF, &got.commit)]);
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
