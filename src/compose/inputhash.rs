//! The input hash: sha256 over everything that decides a compose's result, computed before
//! any download so an unchanged recipe costs milliseconds.
//!
//! Covered, in this order, each item length-prefixed: a format tag; the resolved recipe as
//! JSON with paths relative to the recipe's directory and without `sources` (moving a
//! checkout does not change the hash, but every field does); every overlay file's relative
//! path, type, mode and content (or symlink target), overlay by overlay; each postprocess
//! script's content; the sha256 of each extra repository's keyring; the sha256 of the kiln
//! binary exactly as installed (stripped) and its version; the build epoch when it is fixed
//! (`SOURCE_DATE_EPOCH` or the recipe's); and the mirror state (sha256 of each suite's
//! `InRelease`, or `Release` where there is none, which pins every package version the
//! mirror would install).

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Everything the hash covers, gathered by the caller.
pub struct Inputs<'a> {
    pub recipe_json: &'a serde_json::Value,
    pub overlays: &'a [std::path::PathBuf],
    pub postprocess: &'a [std::path::PathBuf],
    /// sha256 of each extra repository's keyring, in recipe order.
    pub keyrings: &'a [String],
    /// sha256 of `usr/bin/kiln` as it goes into the tree (after stripping).
    pub kiln_sha256: &'a str,
    pub kiln_version: &'a str,
    /// `Some` when the epoch is fixed by the environment or the recipe.
    pub fixed_epoch: Option<u64>,
    pub mirror_state: &'a [String],
}

struct H(Sha256);

impl H {
    fn item(&mut self, tag: &str, data: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((data.len() as u64).to_le_bytes());
        self.0.update(data);
    }
}

pub fn compute(i: &Inputs) -> Result<String> {
    let mut h = H(Sha256::new());
    h.item("format", b"kiln-inputhash-2");
    let mut recipe = i.recipe_json.clone();
    if let Some(o) = recipe.as_object_mut() {
        o.remove("sources");
    }
    h.item(
        "recipe",
        serde_json::to_string(&recipe)
            .context("encoding the recipe")?
            .as_bytes(),
    );
    for (n, o) in i.overlays.iter().enumerate() {
        h.item("overlay", n.to_string().as_bytes());
        hash_dir(&mut h, o, Path::new(""))
            .with_context(|| format!("hashing overlay {}", o.display()))?;
    }
    for s in i.postprocess {
        h.item("postprocess", file_sha256(s)?.as_bytes());
    }
    for k in i.keyrings {
        h.item("keyring", k.as_bytes());
    }
    h.item("kiln", i.kiln_sha256.as_bytes());
    h.item("kiln-version", i.kiln_version.as_bytes());
    match i.fixed_epoch {
        Some(e) => h.item("epoch", e.to_string().as_bytes()),
        None => h.item("epoch", b"now"),
    }
    for m in i.mirror_state {
        h.item("mirror", m.as_bytes());
    }
    Ok(hex::encode(h.0.finalize()))
}

fn hash_dir(h: &mut H, base: &Path, rel: &Path) -> Result<()> {
    let dir = base.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let p = base.join(&r);
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let mode = format!("{:o}", md.mode());
        h.item("path", r.to_string_lossy().as_bytes());
        h.item("mode", mode.as_bytes());
        if md.is_dir() {
            hash_dir(h, base, &r)?;
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).with_context(|| format!("readlink {}", p.display()))?;
            h.item("link", t.to_string_lossy().as_bytes());
        } else if md.is_file() {
            h.item("content", file_sha256(&p)?.as_bytes());
        } else {
            anyhow::bail!(
                "{} is {}: overlays may hold only regular files, directories and symlinks",
                p.display(),
                crate::validate::file_kind(md.file_type())
            );
        }
    }
    Ok(())
}

/// sha256 of a regular file, hex. FIFOs, sockets and devices are refused without
/// blocking on them.
pub fn file_sha256(p: &Path) -> Result<String> {
    let mut f = crate::validate::open_regular(p).map_err(anyhow::Error::msg)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hash(recipe: &serde_json::Value, overlay: &Path, mirror: &[String]) -> String {
        compute(&Inputs {
            recipe_json: recipe,
            overlays: &[overlay.to_path_buf()],
            postprocess: &[],
            keyrings: &[],
            kiln_sha256: "k",
            kiln_version: "0.1.0",
            fixed_epoch: Some(1),
            mirror_state: mirror,
        })
        .unwrap()
    }

    #[test]
    fn every_input_changes_the_hash() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        std::fs::create_dir_all(o.join("etc")).unwrap();
        std::fs::write(o.join("etc/motd"), "hi").unwrap();
        let r = serde_json::json!({"name": "base", "packages": ["a"], "sources": ["/x/base.toml"]});
        let m = vec!["http://m bookworm abc".to_string()];
        let h0 = hash(&r, &o, &m);
        assert_eq!(h0, hash(&r, &o, &m), "stable");
        let moved =
            serde_json::json!({"name": "base", "packages": ["a"], "sources": ["/y/b.toml"]});
        assert_eq!(h0, hash(&moved, &o, &m), "sources paths are not inputs");
        let r2 = serde_json::json!({"name": "base", "packages": ["a", "b"], "sources": []});
        assert_ne!(h0, hash(&r2, &o, &m));
        assert_ne!(h0, hash(&r, &o, &["http://m bookworm abd".to_string()]));
        std::fs::write(o.join("etc/motd"), "hi!").unwrap();
        let h1 = hash(&r, &o, &m);
        assert_ne!(h0, h1);
        std::fs::set_permissions(o.join("etc/motd"), PermissionsExt::from_mode(0o600)).unwrap();
        assert_ne!(h1, hash(&r, &o, &m));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let o = d.path().join("o");
        std::fs::create_dir_all(&o).unwrap();
        let c = std::ffi::CString::new(o.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = compute(&Inputs {
            recipe_json: &serde_json::json!({}),
            overlays: std::slice::from_ref(&o),
            postprocess: &[],
            keyrings: &[],
            kiln_sha256: "k",
            kiln_version: "0.1.0",
            fixed_epoch: Some(1),
            mirror_state: &[],
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("a FIFO"), "{e:#}");
        assert!(file_sha256(&o.join("pipe")).is_err());
    }
}
