//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`): blobs
//! written through a temp file and renamed under their digest, manifests and configs as
//! JSON, the index naming each manifest by tag. skopeo reads and writes the same layout,
//! so a pull into it keeps every blob already there (only missing layers are fetched).

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of an image config kiln reads and writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub type_: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// `sha256:HEX` with HEX 64 lower-case hex digits.
pub fn check_digest(d: &str) -> Result<&str> {
    let hex = d
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| anyhow!("{d:?} is not a sha256 digest"))?;
    Ok(hex)
}

/// An OCI layout directory.
pub struct OciDir {
    pub path: PathBuf,
}

impl OciDir {
    /// Opens `path`, creating the layout when missing.
    pub fn create(path: &Path) -> Result<OciDir> {
        let blobs = path.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("creating the OCI layout {}", path.display()))?;
        let marker = path.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = path.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        Ok(OciDir { path: path.into() })
    }

    /// Opens an existing layout.
    pub fn open(path: &Path) -> Result<OciDir> {
        if !path.join("oci-layout").is_file() {
            bail!(
                "{} is not an OCI image layout (no oci-layout file)",
                path.display()
            );
        }
        Ok(OciDir { path: path.into() })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.path.join("blobs/sha256").join(check_digest(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a blob and checks its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        let data = std::fs::read(&p).with_context(|| format!("reading blob {}", p.display()))?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if got != digest {
            bail!(
                "blob {digest} in {} has digest {got}: the layout is corrupt",
                self.path.display()
            );
        }
        Ok(data)
    }

    /// Writes `data` as a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let p = self.blob_path(&digest)?;
        if !p.exists() {
            write_atomic(&p, data)?;
        }
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: data.len() as u64,
            annotations: BTreeMap::new(),
        })
    }

    /// A writer for a gzip-compressed layer blob.
    pub fn layer_writer(&self) -> Result<LayerWriter> {
        let dir = self.path.join("blobs/sha256");
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        let file = tmp.reopen().context("reopening a layer temp file")?;
        let gz = flate2::write::GzEncoder::new(
            Hashing::new(std::io::BufWriter::new(file)),
            flate2::Compression::new(6),
        );
        Ok(LayerWriter {
            inner: Hashing::new(gz),
            tmp,
            dir,
        })
    }

    /// The manifest named `tag` in the index, with its descriptor.
    pub fn manifest(&self, tag: &str) -> Result<(Descriptor, Manifest)> {
        let index = self.index()?;
        let desc = index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .or_else(|| (index.manifests.len() == 1 && tag.is_empty()).then(|| &index.manifests[0]))
            .ok_or_else(|| {
                anyhow!(
                    "no image tagged {tag:?} in the OCI layout {}",
                    self.path.display()
                )
            })?
            .clone();
        let data = self.read_blob(&desc.digest)?;
        let m: Manifest = serde_json::from_slice(&data)
            .with_context(|| format!("parsing manifest {}", desc.digest))?;
        Ok((desc, m))
    }

    pub fn config(&self, m: &Manifest) -> Result<ImageConfig> {
        let data = self.read_blob(&m.config.digest)?;
        serde_json::from_slice(&data)
            .with_context(|| format!("parsing image config {}", m.config.digest))
    }

    /// Writes the manifest and names it `tag` in the index (replacing an older one).
    pub fn set_manifest(&self, tag: &str, m: &Manifest) -> Result<Descriptor> {
        let data = serde_json::to_vec(m).context("serializing the manifest")?;
        let mut desc = self.write_blob(MEDIA_MANIFEST, &data)?;
        desc.annotations.insert(REF_NAME.into(), tag.into());
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
        index.manifests.push(desc.clone());
        let data = serde_json::to_vec(&index).context("serializing index.json")?;
        write_atomic(&self.path.join("index.json"), &data)?;
        Ok(desc)
    }

    fn index(&self) -> Result<Index> {
        let p = self.path.join("index.json");
        let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))
    }

    /// Removes blobs no manifest of the index refers to (after a pull replaced a tag).
    pub fn prune(&self) -> Result<u64> {
        let index = self.index()?;
        let mut keep = std::collections::BTreeSet::new();
        for d in &index.manifests {
            keep.insert(d.digest.clone());
            let data = self.read_blob(&d.digest)?;
            let m: Manifest = serde_json::from_slice(&data)
                .with_context(|| format!("parsing manifest {}", d.digest))?;
            keep.insert(m.config.digest.clone());
            keep.extend(m.layers.iter().map(|l| l.digest.clone()));
        }
        let dir = self.path.join("blobs/sha256");
        let mut freed = 0;
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        // The object lists of imported layers go with their blobs.
        let lists = self.path.join(super::LAYER_INDEX_DIR);
        for e in std::fs::read_dir(&lists).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&format!("sha256:{name}")) {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        Ok(freed)
    }
}

/// A writer that hashes what passes through it.
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type GzFile = flate2::write::GzEncoder<Hashing<std::io::BufWriter<std::fs::File>>>;

/// A gzip layer being written: the tar stream goes in, [`LayerWriter::finish`] renames it
/// under its digest.
pub struct LayerWriter {
    inner: Hashing<GzFile>,
    tmp: tempfile::NamedTempFile,
    dir: PathBuf,
}

/// A written layer: its descriptor and its uncompressed digest (the config's diff id).
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: String,
    pub uncompressed_size: u64,
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl LayerWriter {
    pub fn finish(self) -> Result<Layer> {
        let diff_id = format!("sha256:{}", hex::encode(self.inner.hash.finalize()));
        let uncompressed_size = self.inner.len;
        let compressed = self
            .inner
            .inner
            .finish()
            .context("finishing a gzip layer")?;
        let digest = format!("sha256:{}", hex::encode(compressed.hash.finalize()));
        let size = compressed.len;
        let file = compressed
            .inner
            .into_inner()
            .map_err(|e| anyhow!("flushing a layer: {}", e.error()))?;
        file.sync_all().context("syncing a layer")?;
        let dest = self.dir.join(check_digest(&digest)?);
        self.tmp
            .persist(&dest)
            .with_context(|| format!("renaming a layer into {}", dest.display()))?;
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", dest.display()))?;
        Ok(Layer {
            descriptor: Descriptor {
                media_type: MEDIA_LAYER_GZIP.into(),
                digest,
                size,
                annotations: BTreeMap::new(),
            },
            diff_id,
            uncompressed_size,
        })
    }
}

use crate::cleanup::write_atomic;
