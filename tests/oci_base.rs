//! The composed base OS as an ostree-container image (VM-free): podman stores it and
//! assembles its rootfs (isolated storage), and `kiln image --from-oci` builds a disk
//! whose deployment is the image's commit and follows the image.

mod common;

use kiln::cmd::Cmd;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn base_image_is_a_container_image_and_builds_a_disk_that_follows_it() {
    let base = common::base_commit();
    let work = common::fixture_workdir("oci-base");
    // Container image names are lower case: a layout path without the temp dir's name.
    let layout = common::fixture_dir().join(format!("oci-base-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    let t = std::time::Instant::now();
    let p: serde_json::Value = serde_json::from_str(&common::kiln_ok(&[
        "publish",
        "--repo",
        s(&base.repo),
        "--ref",
        &base.ref_,
        "--oci",
        &format!("oci:{}:base", layout.display()),
        "--json",
    ]))
    .unwrap();
    eprintln!(
        "publish --oci: {:?}, {} layers",
        t.elapsed(),
        p["layers"].as_array().unwrap().len()
    );
    assert_eq!(p["commit"], base.commit.as_str());

    // podman runs it: the container's os-release is the commit's.
    let repo = kiln::repo::open(&base.repo).unwrap();
    let tree = kiln::repo::tree::CommitTree::open(&repo, &base.commit).unwrap();
    let want = String::from_utf8(tree.read("/usr/lib/os-release").unwrap()).unwrap();
    let storage = work.path().join("podman");
    // podman wants a short runroot.
    let run = tempfile::Builder::new()
        .prefix("kp")
        .tempdir_in("/tmp")
        .unwrap();
    let t = std::time::Instant::now();
    // `podman run` itself cannot start here (crun may not set rlimits in this sandbox):
    // podman pulls the image into its own storage and assembles the rootfs from the
    // layers, which is what a container would see.
    let podman = |args: &[&str]| {
        Cmd::new("podman")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(run.path())
            .args(["--storage-driver", "overlay"])
            .args(args)
            .read()
    };
    let src = format!("oci:{}:base", layout.display());
    let got = podman(&["pull", &src]).and_then(|id| {
        let id = id.lines().last().unwrap_or_default().trim().to_string();
        let mnt = podman(&["image", "mount", &id])?;
        let text = std::fs::read_to_string(Path::new(mnt.trim()).join("usr/lib/os-release"));
        podman(&["image", "unmount", &id])?;
        Ok(text?)
    });
    eprintln!("podman pull + image mount: {:?}", t.elapsed());
    let reset = podman(&["system", "reset", "--force"]);
    // containers/storage leaves its overlay directory mounted on itself.
    let _ = Cmd::new("umount").arg(storage.join("root/overlay")).run();
    let got = got.unwrap();
    assert_eq!(got.trim(), want.trim());
    reset.unwrap();

    // kiln image --from-oci: the disk's deployment is the image's commit, following it.
    let img = format!("ostree-unverified-image:oci:{}:base", layout.display());
    let out = format!("{}/", work.path().join("disk").display());
    let t = std::time::Instant::now();
    let v: serde_json::Value = serde_json::from_str(&common::kiln_ok(&[
        "image",
        "--from-oci",
        &img,
        "--format",
        "raw",
        "--output",
        &out,
        "--json",
    ]))
    .unwrap();
    eprintln!("image --from-oci: {:?}", t.elapsed());
    assert_eq!(v["commit"], base.commit.as_str(), "{v}");
    let disk = v["output"].as_str().unwrap();
    let parts: serde_json::Value =
        serde_json::from_str(&Cmd::new("sfdisk").args(["--json", disk]).read().unwrap()).unwrap();
    let root = parts["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap_or_else(|| panic!("no root partition: {parts}"));
    let offset = root["start"].as_u64().unwrap() * 512;
    let origin = Cmd::new("debugfs")
        .arg("-R")
        .arg(format!(
            "cat /ostree/deploy/kiln/deploy/{}.0.origin",
            base.commit
        ))
        .arg(format!("{disk}?offset={offset}"))
        .read()
        .unwrap();
    assert!(
        origin.contains(&format!("container-image-reference={img}")),
        "origin: {origin}"
    );
    std::fs::remove_dir_all(&layout).unwrap();
}
