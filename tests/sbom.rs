//! SBOMs: the composed `recipes/base.toml` commit carries an SPDX 2.3 JSON document at
//! /usr/share/kiln/sbom.spdx.json that the reference validator (`pyspdxtools` from PyPI's
//! spdx-tools, installed in build/tools/venv by `make tools`) accepts, listing every
//! installed package with its version, source package, declared licenses, the sha256 of
//! the cached .deb and its purl, dated by the commit's timestamp; `kiln image` writes it
//! beside the image and lists it in manifest.json.

mod common;

use kiln::image::{self, Format, ImageOptions};
use std::path::{Path, PathBuf};

fn pyspdxtools() -> PathBuf {
    let p = common::project_root().join("build/tools/venv/bin/pyspdxtools");
    assert!(
        p.is_file(),
        "{} is missing: run `make tools` (spdx-tools from PyPI)",
        p.display()
    );
    p
}

fn validate(path: &Path) {
    let out = std::process::Command::new(pyspdxtools())
        .arg("-i")
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("invalid"),
        "pyspdxtools refused {}:\n{err}",
        path.display()
    );
}

fn commit_sbom(f: &common::Composed) -> Vec<u8> {
    let repo = kiln::repo::open(&f.repo).unwrap();
    let tree = kiln::repo::tree::CommitTree::open(&repo, &f.commit).unwrap();
    tree.read(&format!("/{}", kiln::compose::sbom::TREE_PATH))
        .expect("the commit has no SBOM")
}

#[test]
fn commit_sbom_is_valid_spdx_with_every_package() {
    let f = common::base_commit();
    let bytes = commit_sbom(&f);
    let td = tempfile::tempdir().unwrap();
    let path = td.path().join("base.spdx.json");
    std::fs::write(&path, &bytes).unwrap();
    validate(&path);

    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let repo = kiln::repo::open(&f.repo).unwrap();
    let info = kiln::repo::read_commit(&repo, &f.commit).unwrap();
    // Dated by the build epoch (the commit's timestamp), never by the clock.
    let created = doc["creationInfo"]["created"].as_str().unwrap();
    let date = run_out(&[
        "date",
        "-u",
        "-d",
        &format!("@{}", info.timestamp),
        "+%Y-%m-%dT%H:%M:%SZ",
    ]);
    assert_eq!(created, date.trim());

    let pkgs = doc["packages"].as_array().unwrap();
    let listed = info.meta_list(kiln::repo::keys::PACKAGES);
    // Every package of the commit's list (name=version), and the OS itself.
    assert_eq!(pkgs.len(), listed.len() + 1);
    for nv in &listed {
        let (n, v) = nv.split_once('=').unwrap();
        assert!(
            pkgs.iter().any(|p| p["name"] == n && p["versionInfo"] == v),
            "{nv} missing"
        );
    }
    let by_name = |n: &str| {
        pkgs.iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing"))
            .clone()
    };
    // systemd: its source, licenses (machine-readable copyright), .deb sha256, purl.
    let sd = by_name("systemd");
    let version = sd["versionInfo"].as_str().unwrap().to_string();
    assert!(sd["sourceInfo"]
        .as_str()
        .unwrap()
        .contains("source package systemd "));
    let lic = sd["licenseDeclared"].as_str().unwrap();
    assert!(lic.contains("LGPL-2.1-or-later"), "{lic}");
    assert_eq!(
        sd["externalRefs"][0]["referenceLocator"],
        format!("pkg:deb/debian/systemd@{version}?arch=amd64")
    );
    let deb = f
        .cache_dir
        .join("debs")
        .join(format!("systemd_{}_amd64.deb", version.replace(':', "%3a")));
    let sum = run_out(&["sha256sum", deb.to_str().unwrap()]);
    assert_eq!(
        sd["checksums"][0]["checksumValue"],
        sum.split_whitespace().next().unwrap()
    );
    // A binary package of another source: its source package is named.
    let lib = by_name("libsystemd0");
    assert!(lib["sourceInfo"]
        .as_str()
        .unwrap()
        .contains("source package systemd "));
    // An epoch in the version is encoded in the purl.
    let ip = by_name("iproute2");
    let v = ip["versionInfo"].as_str().unwrap();
    if let Some((e, rest)) = v.split_once(':') {
        assert_eq!(
            ip["externalRefs"][0]["referenceLocator"],
            format!("pkg:deb/debian/iproute2@{e}%3A{rest}?arch=amd64")
        );
    }
}

fn run_out(args: &[&str]) -> String {
    kiln::cmd::Cmd::new(args[0])
        .args(&args[1..])
        .read()
        .unwrap()
}

#[test]
fn image_has_the_sbom_beside_it_in_the_manifest() {
    let f = common::base_commit();
    let td = common::fixture_workdir("sbom-image");
    let out = td.path().join("base.qcow2");
    let mut o = ImageOptions::new(&f.repo, &f.ref_, &out);
    o.format = Format::Qcow2;
    let mut p = kiln::progress::Progress::new(false);
    image::build(&o, &mut p).unwrap();
    let sbom = td.path().join("base.qcow2.spdx.json");
    assert_eq!(std::fs::read(&sbom).unwrap(), commit_sbom(&f));
    validate(&sbom);
    let m = kiln::image::manifest::load(&td.path().join("manifest.json")).unwrap();
    let a = &m.artifacts["base.qcow2.spdx.json"];
    assert_eq!(a.format, "spdx-json");
    assert_eq!(a.commit, f.commit);
    kiln::image::manifest::verify(&td.path().join("manifest.json")).unwrap();
}
