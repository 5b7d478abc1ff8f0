//! `manifest.json` beside the artifacts: sha256, size, format, commit and version of each.
//! Entries of other artifacts already in the file are kept; the file is replaced
//! atomically.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "manifest.json";

/// One artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
    pub format: String,
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// `ignition.platform.id` of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The disk's size in bytes (for archives: of the disk inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// What the platform's image import must be told for UEFI with Secure Boot (setting
    /// name as in its API → value), e.g. GCP `guestOsFeatures`; docs/cloud.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot_import: Option<BTreeMap<String, String>>,
}

/// The manifest: artifacts by file name (relative to the manifest's directory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub artifacts: BTreeMap<String, Artifact>,
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The manifest path for an artifact.
pub fn path_for(artifact: &Path) -> PathBuf {
    artifact
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(FILE_NAME)
}

/// Reads a manifest; a missing file is an empty manifest.
pub fn load(path: &Path) -> Result<Manifest> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| {
        anyhow::Error::new(
            crate::error::InputError::new(
                path.display().to_string(),
                format!("not a kiln manifest: {e}"),
            )
            .at(e.line(), e.column()),
        )
    })
}

/// Adds (or replaces) the entry for `artifact` in the manifest beside it.
pub fn record(artifact: &Path, entry: Artifact) -> Result<PathBuf> {
    let Some(name) = artifact.file_name().and_then(|n| n.to_str()) else {
        bail!(
            "artifact path {} has no UTF-8 file name",
            artifact.display()
        );
    };
    let mpath = path_for(artifact);
    let mut m = load(&mpath)?;
    m.artifacts.insert(name.to_string(), entry);
    let text = serde_json::to_string_pretty(&m).context("encoding the manifest")? + "\n";
    let dir = mpath.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).context("writing the manifest")?;
    tmp.persist(&mpath)
        .with_context(|| format!("replacing {}", mpath.display()))?;
    Ok(mpath)
}

/// Checks every artifact listed in the manifest at `path` against the files beside it.
pub fn verify(path: &Path) -> Result<()> {
    let m = load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for (name, a) in &m.artifacts {
        let f = dir.join(name);
        let size = std::fs::metadata(&f)
            .with_context(|| format!("{} lists {name}, which is missing", path.display()))?
            .len();
        if size != a.size {
            bail!("{name}: size {size} but the manifest says {}", a.size);
        }
        let sum = sha256_file(&f)?;
        if sum != a.sha256 {
            bail!("{name}: sha256 {sum} but the manifest says {}", a.sha256);
        }
    }
    Ok(())
}

/// Copies the commit's SBOM (compose puts it in the tree) to `path` (beside the artifact
/// it describes: `IMAGE.spdx.json`, `NAME.iso.spdx.json`, a PXE directory's
/// `rootfs.img.spdx.json`) and lists it in the manifest there. A commit without one (made
/// by an older kiln, or not by compose) gets none: `false`.
pub fn write_sbom(
    repo: &Path,
    rev: &str,
    info: &crate::repo::CommitInfo,
    path: &Path,
) -> Result<bool> {
    let r = crate::repo::open(repo)?;
    let tree = crate::repo::tree::CommitTree::open(&r, &info.checksum)?;
    let Some(bytes) = tree.read(&format!("/{}", crate::compose::sbom::TREE_PATH)) else {
        return Ok(false);
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes).context("writing the SBOM")?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .context("chmod 0644 the SBOM")?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    record(
        path,
        Artifact {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            format: "spdx-json".into(),
            commit: info.checksum.clone(),
            version: info.version.clone(),
            ref_: Some(rev.to_string()).filter(|r| *r != info.checksum),
            firmware: None,
            platform: None,
            virtual_size: None,
            secure_boot_import: None,
        },
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merges_and_verifies() {
        let td = tempfile::tempdir().unwrap();
        let a = td.path().join("a.raw");
        let b = td.path().join("b.qcow2");
        std::fs::write(&a, b"hello").unwrap();
        std::fs::write(&b, b"world!").unwrap();
        let entry = |p: &Path, fmt: &str| Artifact {
            sha256: sha256_file(p).unwrap(),
            size: std::fs::metadata(p).unwrap().len(),
            format: fmt.into(),
            commit: "abc".into(),
            version: Some("1".into()),
            ref_: None,
            firmware: None,
            platform: None,
            virtual_size: None,
            secure_boot_import: None,
        };
        record(&a, entry(&a, "raw")).unwrap();
        let mp = record(&b, entry(&b, "qcow2")).unwrap();
        let m = load(&mp).unwrap();
        assert_eq!(m.artifacts.len(), 2);
        assert_eq!(
            m.artifacts["a.raw"].sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        verify(&mp).unwrap();
        std::fs::write(&a, b"HELLO").unwrap();
        let err = verify(&mp).unwrap_err().to_string();
        assert!(err.contains("a.raw"), "{err}");
    }
}
