//! Derived OS images (VM-free): the published base image runs under podman (`podman run
//! IMAGE cat /usr/lib/os-release`); a Containerfile `FROM` it installs a package with apt
//! (`podman build`); `kiln deploy ostree-unverified-image:oci:…` turns the result into a
//! deployment of a directory sysroot with the package in it. Layers written by hand check
//! the overlay rules (whiteouts, opaque directories, hard links, /var dropped) and each
//! refusal (its message names the image and the path; the sysroot is left as it was).

mod common;

use common::derived::{self, Podman};
use common::{kiln, kiln_ok};
use kiln::repo::oci::import;
use kiln::repo::oci::layout::{ImageConfig, OciDir};
use serde_json::Value;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Adds `tag` to `layout`: the image `base` plus one layer written by `fill`.
fn hand_made(layout: &Path, base: &str, tag: &str, fill: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let dir = OciDir::open(layout).unwrap();
    let (_, mut m) = dir.manifest(base).unwrap();
    let mut cfg: ImageConfig = dir.config(&m).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    fill(&mut b);
    let data = b.into_inner().unwrap();
    let mut w = dir.layer_writer().unwrap();
    std::io::Write::write_all(&mut w, &data).unwrap();
    let l = w.finish().unwrap();
    cfg.rootfs.diff_ids.push(l.diff_id);
    let cfg = serde_json::to_vec(&cfg).unwrap();
    m.config = dir
        .write_blob(kiln::repo::oci::layout::MEDIA_CONFIG, &cfg)
        .unwrap();
    m.layers.push(l.descriptor);
    m.annotations.clear();
    dir.set_manifest(tag, &m).unwrap();
}

fn entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    if kind.is_character_special() {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    b.append_data(&mut h, path, data).unwrap();
}

fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_link(&mut h, path, target).unwrap();
}

fn ls(repo: &Path, commit: &str, path: &str) -> Vec<String> {
    kiln::cmd::Cmd::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", "--nul-filenames-only", commit, path])
        .read()
        .unwrap_or_default()
        .split('\0')
        .filter(|l| !l.is_empty() && *l != path)
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn deployments(sysroot: &Path) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&kiln_ok(&["status", "--sysroot", s(sysroot), "--json"])).unwrap();
    v["status"]["deployments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["checksum"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the layout and lets the sysroot's deployments go, even when the test fails.
struct Cleanup {
    layout: std::path::PathBuf,
    sysroot: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        common::unlock_deployments(&self.sysroot);
        let _ = std::fs::remove_dir_all(&self.layout);
    }
}

#[test]
fn derived_image_runs_builds_and_deploys() {
    let base = common::base_commit();
    let work = common::fixture_workdir("oci-derived");
    let sysroot = work.path().join("sysroot");
    let (layout, _) = common::publish_base_layout("oci-derived");
    let _cleanup = Cleanup {
        layout: layout.clone(),
        sysroot: sysroot.clone(),
    };

    // podman runs the base image: its os-release, and /var as a booted system has it.
    let repo = kiln::repo::open(&base.repo).unwrap();
    let tree = kiln::repo::tree::CommitTree::open(&repo, &base.commit).unwrap();
    let want = String::from_utf8(tree.read("/usr/lib/os-release").unwrap()).unwrap();
    let p = Podman::new(&work.path().join("podman"));
    let t = std::time::Instant::now();
    let id = p.run(&["pull", "-q", &format!("oci:{}:base", layout.display())]);
    let id = id.lines().last().unwrap().trim().to_string();
    let got = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &id,
        "cat",
        "/usr/lib/os-release",
    ]);
    assert_eq!(got.trim(), want.trim());
    let dpkg = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &id,
        "readlink",
        "/var/lib/dpkg",
    ]);
    assert_eq!(dpkg.trim(), "../../usr/lib/sysimage/dpkg");
    eprintln!("podman pull + run: {:?}", t.elapsed());

    // podman build: apt-get install in a Containerfile FROM the base.
    let t = std::time::Instant::now();
    let log = derived::build(&p, &id, work.path(), &layout, "derived");
    assert!(log.contains(derived::GREETING), "{log}");
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/kiln-derived:test",
        derived::PKG,
    ]);
    assert_eq!(out.trim(), derived::GREETING);
    eprintln!("podman build + push + run: {:?}", t.elapsed());
    drop(p);

    // kiln deploys the derived image.
    std::fs::create_dir_all(&sysroot).unwrap();
    let img = format!("ostree-unverified-image:oci:{}:derived", layout.display());
    let t = std::time::Instant::now();
    let (code, out, err) = kiln(&["deploy", "--sysroot", s(&sysroot), &img, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    eprintln!("deploy: {:?}", t.elapsed());
    let v: Value = serde_json::from_str(&out).unwrap();
    let commit = v["commit"].as_str().unwrap().to_string();
    assert_ne!(commit, base.commit);
    // apt's /var files are not part of the deployment, and kiln says so.
    assert!(
        err.contains("under /var") && err.contains("/var/cache/apt/"),
        "{err}"
    );
    let dep = sysroot.join(format!("ostree/deploy/kiln/deploy/{commit}.0"));
    assert!(dep.join("usr/bin/kiln-hello").is_file());
    assert!(dep.join("usr/etc/kiln-hello.conf").is_file());
    assert!(dep.join("etc/kiln-hello.conf").is_file());
    assert!(dep
        .join("usr/lib/sysimage/dpkg/info/kiln-hello.list")
        .is_file());
    let status = std::fs::read_to_string(dep.join("usr/lib/sysimage/dpkg/status")).unwrap();
    assert!(
        status.contains("Package: kiln-hello\n"),
        "no kiln-hello in dpkg status"
    );
    // No /var in the commit, no mount point podman left for /etc/hostname.
    assert_eq!(std::fs::read_dir(dep.join("var")).unwrap().count(), 0);
    assert!(!dep.join("usr/etc/hostname").exists());
    let run = kiln::cmd::Cmd::new("chroot")
        .arg(&dep)
        .arg("/usr/bin/kiln-hello")
        .read()
        .unwrap();
    assert_eq!(run.trim(), derived::GREETING);
    // The commit: on the base, naming the image and the derived package list.
    let srepo = kiln::repo::open(&sysroot.join("ostree/repo")).unwrap();
    let info = kiln::repo::read_commit(&srepo, &commit).unwrap();
    assert_eq!(info.parent.as_deref(), Some(base.commit.as_str()));
    assert_eq!(
        info.meta_str(kiln::repo::oci::derive::MANIFEST_DIGEST),
        v["manifestDigest"].as_str()
    );
    assert_eq!(
        info.meta_str(kiln::repo::oci::derive::DERIVED_FROM),
        Some(base.commit.as_str())
    );
    let pkgs = info.meta_list(kiln::repo::keys::PACKAGES);
    assert!(pkgs.contains(&format!("{}={}", derived::PKG, derived::PKG_VERSION)));
    assert!(info.metadata.get(kiln::repo::keys::INPUT_HASH).is_none());
    // The deployed image is up to date (its manifest digest, not its base's label).
    let up: Value = serde_json::from_str(&kiln_ok(&[
        "upgrade",
        "--sysroot",
        s(&sysroot),
        "--check",
        "--json",
    ]))
    .unwrap();
    assert_eq!(up["checksum"], commit.as_str(), "{up}");

    refusals(&layout, &sysroot, &srepo);
}

/// Hand-made layers on the base: the overlay rules, then each refusal.
fn refusals(layout: &Path, sysroot: &Path, repo: &ostree::Repo) {
    let rp = sysroot.join("ostree/repo");
    let dir = OciDir::open(layout).unwrap();
    let (_, _, _, labels) = import::inspect(&dir, "base").unwrap();
    let kver = labels["ostree.linux"].clone();
    let name = |t: &str| format!("oci:{}:{t}", layout.display());

    // Whiteouts, an opaque directory, a hard link; /var content dropped.
    hand_made(layout, "base", "rules", |b| {
        entry(b, tar::EntryType::Directory, "usr/share/doc/", b"");
        entry(
            b,
            tar::EntryType::Regular,
            "usr/share/doc/.wh..wh..opq",
            b"",
        );
        entry(
            b,
            tar::EntryType::Regular,
            "usr/share/doc/kiln-only",
            b"kiln\n",
        );
        entry(b, tar::EntryType::Regular, "usr/bin/.wh.less", b"");
        link(b, "usr/bin/kiln-link", "usr/share/doc/kiln-only");
        entry(b, tar::EntryType::Regular, "var/lib/kiln-state", b"state\n");
    });
    let t = std::time::Instant::now();
    let got = import::import(repo, &dir, "rules", &name("rules")).unwrap();
    eprintln!("import of a hand-made derived image: {:?}", t.elapsed());
    assert_eq!(ls(&rp, &got.commit, "/usr/share/doc"), ["kiln-only"]);
    let bin = ls(&rp, &got.commit, "/usr/bin");
    assert!(bin.contains(&"kiln-link".to_string()) && !bin.contains(&"less".to_string()));
    assert_eq!(got.dropped, ["/var/lib/kiln-state"]);

    // Refused: /boot content, through the CLI (exit 2; the sysroot as it was).
    hand_made(layout, "base", "bad-boot", |b| {
        entry(b, tar::EntryType::Regular, "boot/vmlinuz-evil", b"x");
    });
    let before = deployments(sysroot);
    let (code, out, err) = kiln(&[
        "deploy",
        "--sysroot",
        s(sysroot),
        &format!("ostree-unverified-image:{}", name("bad-boot")),
    ]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "{}: /boot/vmlinuz-evil: content under /boot",
            name("bad-boot")
        )),
        "{err}"
    );
    assert_eq!(deployments(sysroot), before);

    // Refused: a device file; no kernel; a kernel without initramfs.
    let modules = format!("usr/lib/modules/{kver}");
    let cases = [
        (
            "bad-dev",
            tar::EntryType::Char,
            "usr/lib/evil-null".to_string(),
            "/usr/lib/evil-null: a device file".to_string(),
        ),
        (
            "bad-nokernel",
            tar::EntryType::Regular,
            format!("{modules}/.wh.vmlinuz"),
            "/usr/lib/modules: no kernel".to_string(),
        ),
        (
            "bad-noinitramfs",
            tar::EntryType::Regular,
            format!("{modules}/.wh.initramfs.img"),
            format!("/{modules}/initramfs.img: kernel {kver} has no initramfs"),
        ),
    ];
    for (tag, kind, path, want) in cases {
        hand_made(layout, "base", tag, |b| entry(b, kind, &path, b""));
        let e = import::import(repo, &dir, tag, &name(tag)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            e.chain()
                .any(|c| c.downcast_ref::<kiln::error::InputError>().is_some()),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}: {want}", name(tag))), "{msg}");
    }
}
