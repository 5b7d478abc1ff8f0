//! The composed base OS as an ostree-container image (VM-free): `kiln image --from-oci`
//! builds a disk whose deployment is the image's commit and follows the image. (podman
//! runs the image and builds on it: tests/oci_derived.rs.)

mod common;

use kiln::cmd::Cmd;

#[test]
fn base_image_builds_a_disk_that_follows_it() {
    let base = common::base_commit();
    let work = common::fixture_workdir("oci-base");
    let (layout, p) = common::publish_base_layout("oci-base");
    eprintln!("{} layers", p["layers"].as_array().unwrap().len());
    assert_eq!(p["commit"], base.commit.as_str());

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
