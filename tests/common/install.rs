//! Helpers shared by tests/install.rs and tests/vm_install.rs: the base commit's images
//! built once per commit, temp dirs and sparse targets on the fixture's filesystem, and
//! `kiln install --json`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const MIB: u64 = 1024 * 1024;
pub const IMAGE_SIZE: &str = "2G";
pub const KARG: &str = "kiln.test=install";

pub fn work_dir() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let d = super::fixture_dir().join("install");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A fresh temp dir for one test (on the fixture's filesystem: sparse files, loop
/// devices).
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(work_dir())
        .unwrap()
}

/// The base commit's images (raw and qcow2, platform `qemu`, 2 GiB), built once per
/// commit with `kiln image` into one directory with their manifest.json.
pub fn images() -> &'static (PathBuf, PathBuf) {
    static I: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    I.get_or_init(|| {
        let c = super::base_commit();
        let dir = work_dir().join("images");
        let _l = super::lock(&work_dir().join("images.lock"));
        let raw = dir.join("base.raw");
        let qcow2 = dir.join("base.qcow2");
        let stamp = dir.join("commit");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(c.commit.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for out in [&raw, &qcow2] {
                super::kiln_ok(&[
                    "image",
                    "--repo",
                    c.repo.to_str().unwrap(),
                    "--ref",
                    &c.ref_,
                    "--size",
                    IMAGE_SIZE,
                    "--output",
                    out.to_str().unwrap(),
                ]);
            }
            std::fs::write(&stamp, &c.commit).unwrap();
        }
        (raw, qcow2)
    })
}

/// A sparse file of `size` bytes.
pub fn sparse(path: &Path, size: u64) -> PathBuf {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    path.to_path_buf()
}

pub fn install_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["install"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = super::kiln_ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kiln install --json: {e}: {out}"))
}
