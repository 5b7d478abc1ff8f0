//! Importing an ostree-container image from an OCI layout into a repo: the objects of
//! every layer (`sysroot/ostree/repo/objects/…`) are written with their expected
//! checksums, so libostree verifies each one; the commit's checksum is the one the image
//! config names (`ostree.commit`). Entries outside the object store (the hard links that
//! make the image a container filesystem) are skipped; a layer with files but no objects
//! is a derived layer (`podman build`), applied on the commit by [`derive`].

use super::derive;
use super::layout::{Descriptor, Manifest, OciDir, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR};
use super::{labels, OBJECTS_DIR};
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::HashMap;
use std::io::Read;

/// What an import found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Imported {
    pub commit: String,
    pub version: Option<String>,
    pub manifest_digest: String,
    /// Objects written (the rest were in the repo already).
    pub objects_written: u64,
    /// Layers that carried no OSTree objects (derived image layers, applied on
    /// `base_commit`).
    pub derived_layers: Vec<String>,
    /// The kiln commit a derived image was built on (`commit` is then the derived one).
    pub base_commit: Option<String>,
    /// Files under /var, /tmp and /run of derived layers, not in the commit.
    pub dropped: Vec<String>,
}

/// Reads the image tagged `tag` in `dir` and returns (manifest digest, manifest, the commit
/// its config names, its labels).
pub fn inspect(
    dir: &OciDir,
    tag: &str,
) -> Result<(
    String,
    Manifest,
    String,
    std::collections::BTreeMap<String, String>,
)> {
    let (desc, m) = dir.manifest(tag)?;
    let cfg = dir.config(&m)?;
    let labels = cfg.config.labels;
    let commit = labels.get(labels::COMMIT).cloned().ok_or_else(|| {
        anyhow!(
            "the image {tag:?} has no {} label: it is not an OSTree (ostree-container) image",
            labels::COMMIT
        )
    })?;
    if !crate::validate::is_commit_checksum(&commit) {
        bail!(
            "the image's {} label {commit:?} is not a commit checksum",
            labels::COMMIT
        );
    }
    Ok((desc.digest, m, commit, labels))
}

/// Opens a layer blob as its uncompressed tar stream.
fn open_layer(dir: &OciDir, layer: &Descriptor) -> Result<Box<dyn Read>> {
    let path = dir.blob_path(&layer.digest)?;
    let f =
        std::fs::File::open(&path).with_context(|| format!("opening layer {}", path.display()))?;
    Ok(match layer.media_type.as_str() {
        MEDIA_LAYER_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
        }
        MEDIA_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
            Box::new(std::io::BufReader::new(f))
        }
        other => bail!(
            "layer {} has media type {other}, which kiln cannot read",
            layer.digest
        ),
    })
}

/// Imports the image tagged `tag` in `dir` into `repo` in one transaction: the objects of
/// its OSTree layers, then the layers kiln did not write (a derived image) applied on
/// that commit by [`derive::apply`]. `image` names the image in messages.
pub fn import(repo: &ostree::Repo, dir: &OciDir, tag: &str, image: &str) -> Result<Imported> {
    let (digest, manifest, commit, labels) = inspect(dir, tag)?;
    let cancel = gio::Cancellable::NONE;
    repo.prepare_transaction(cancel)
        .context("starting a repo transaction")?;
    let mut written = 0;
    let mut derived: Vec<&Descriptor> = Vec::new();
    let mut indexes: Vec<(&str, Vec<String>)> = Vec::new();
    let res = (|| -> Result<Option<derive::Derived>> {
        for layer in &manifest.layers {
            if derived.is_empty() && layer_already_imported(repo, dir, &layer.digest)? {
                continue;
            }
            let (n, objects, listed) = import_layer(repo, open_layer(dir, layer)?)
                .with_context(|| format!("importing layer {}", layer.digest))?;
            written += n;
            if objects {
                indexes.push((layer.digest.as_str(), listed));
            }
            if !objects {
                derived.push(layer);
            } else if let Some(d) = derived.first() {
                bail!(
                    "{image}: layer {} holds OSTree objects but comes after layer {}, which \
                     does not: kiln reads derived layers only on top of the base image's",
                    layer.digest,
                    d.digest
                );
            }
        }
        if !repo
            .has_object(ostree::ObjectType::Commit, &commit, cancel)
            .context("looking up the imported commit")?
        {
            bail!("the image's layers do not contain its commit {commit}");
        }
        if derived.is_empty() {
            return Ok(None);
        }
        let created = dir
            .config(&manifest)?
            .created
            .as_deref()
            .and_then(crate::compose::epoch::parse_rfc3339);
        let streams = derived
            .iter()
            .map(|l| {
                Ok(derive::LayerStream {
                    digest: l.digest.clone(),
                    reader: open_layer(dir, l)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        derive::apply(repo, image, &commit, streams, &digest, created).map(Some)
    })();
    let derived_commit = match res {
        Ok(d) => d,
        Err(e) => {
            let _ = repo.abort_transaction(cancel);
            return Err(e);
        }
    };
    repo.commit_transaction(cancel)
        .context("committing the imported objects")?;
    for (digest, listed) in &indexes {
        write_layer_index(dir, digest, listed)?;
    }
    let version = labels
        .get(labels::VERSION)
        .or_else(|| labels.get("version"))
        .cloned();
    let derived_layers = derived.iter().map(|l| l.digest.clone()).collect();
    Ok(match derived_commit {
        Some(d) => Imported {
            commit: d.commit,
            base_commit: Some(d.base),
            version,
            manifest_digest: digest,
            objects_written: written,
            derived_layers,
            dropped: d.dropped,
        },
        None => Imported {
            commit,
            base_commit: None,
            version,
            manifest_digest: digest,
            objects_written: written,
            derived_layers,
            dropped: Vec::new(),
        },
    })
}

fn layer_index_path(dir: &OciDir, digest: &str) -> Result<std::path::PathBuf> {
    Ok(dir
        .path
        .join(super::LAYER_INDEX_DIR)
        .join(super::layout::check_digest(digest)?))
}

/// Whether the layer `digest` was imported before and every object it held is still in
/// `repo` (a pruned repo may have lost some: then it is read again).
fn layer_already_imported(repo: &ostree::Repo, dir: &OciDir, digest: &str) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(layer_index_path(dir, digest)?) else {
        return Ok(false);
    };
    for line in text.lines() {
        let Some((suffix, checksum)) = line.split_once(' ') else {
            return Ok(false);
        };
        let ty = match (suffix, variant_type(suffix)) {
            ("file", _) => ostree::ObjectType::File,
            (_, Some((ty, _))) => ty,
            _ => return Ok(false),
        };
        if !repo
            .has_object(ty, checksum, gio::Cancellable::NONE)
            .with_context(|| format!("looking up object {checksum}"))?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_layer_index(dir: &OciDir, digest: &str, listed: &[String]) -> Result<()> {
    let p = layer_index_path(dir, digest)?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = listed.join("\n");
    text.push('\n');
    crate::cleanup::write_atomic(&p, text.as_bytes())
}

/// (checksum, suffix) of an object path, or None for other entries.
fn parse_object_path(p: &str) -> Option<(String, &str)> {
    let rest = p
        .strip_prefix("./")
        .unwrap_or(p)
        .strip_prefix(OBJECTS_DIR)?
        .strip_prefix('/')?;
    let (dir, file) = rest.split_once('/')?;
    let (tail, suffix) = file.split_once('.')?;
    let checksum = format!("{dir}{tail}");
    crate::validate::is_commit_checksum(&checksum).then_some((checksum, suffix))
}

fn variant_type(suffix: &str) -> Option<(ostree::ObjectType, &'static str)> {
    Some(match suffix {
        "commit" => (ostree::ObjectType::Commit, "(a{sv}aya(say)sstayay)"),
        "dirtree" => (ostree::ObjectType::DirTree, "(a(say)a(sayay))"),
        "dirmeta" => (ostree::ObjectType::DirMeta, "(uuua(ayay))"),
        "commitmeta" => (ostree::ObjectType::CommitMeta, "a{sv}"),
        _ => return None,
    })
}

/// Writes the objects of one layer; returns (objects written, whether it had objects,
/// its objects as `SUFFIX CHECKSUM` lines, detached metadata left out).
fn import_layer(repo: &ostree::Repo, r: impl Read) -> Result<(u64, bool, Vec<String>)> {
    let cancel = gio::Cancellable::NONE;
    let mut ar = tar::Archive::new(r);
    let mut xattrs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, Vec<u8>> = HashMap::new();
    let mut written = 0;
    let mut objects = false;
    let mut files = false;
    let mut listed = Vec::new();
    for e in ar.entries().context("reading the layer's tar stream")? {
        let mut e = e.context("reading the layer's tar stream")?;
        let path = e
            .path()
            .context("reading a tar path")?
            .to_string_lossy()
            .into_owned();
        let Some((checksum, suffix)) = parse_object_path(&path) else {
            let t = e.header().entry_type();
            files |=
                !t.is_dir() && !path.starts_with("sysroot/") && !path.starts_with("./sysroot/");
            continue;
        };
        objects = true;
        if suffix == "file" || matches!(suffix, "commit" | "dirtree" | "dirmeta") {
            listed.push(format!("{suffix} {checksum}"));
        }
        match suffix {
            "file-xattrs" => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).context("reading an xattrs object")?;
                xattrs.insert(path.trim_start_matches("./").to_string(), v);
            }
            "file-xattrs-link" => {
                let target = e
                    .link_name()
                    .context("reading an xattrs link")?
                    .ok_or_else(|| anyhow!("{path}: an xattrs link without a target"))?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                let v = xattrs.get(&target).ok_or_else(|| {
                    anyhow!("{path} links to {target}, which precedes it nowhere")
                })?;
                links.insert(checksum, v.clone());
            }
            "file" => {
                if repo.has_object(ostree::ObjectType::File, &checksum, cancel)? {
                    continue;
                }
                write_file_object(repo, &mut e, &checksum, links.get(&checksum))
                    .with_context(|| format!("writing content object {checksum}"))?;
                written += 1;
            }
            s => {
                let Some((ty, vt)) = variant_type(s) else {
                    continue;
                };
                if repo.has_object(ty, &checksum, cancel)? {
                    continue;
                }
                let mut v = Vec::new();
                e.read_to_end(&mut v).context("reading a metadata object")?;
                let variant = glib::Variant::from_data_with_type(
                    v,
                    glib::VariantTy::new(vt).map_err(|e| anyhow!("{e}"))?,
                );
                if ty == ostree::ObjectType::CommitMeta {
                    repo.write_commit_detached_metadata(&checksum, Some(&variant), cancel)
                        .with_context(|| format!("writing the detached metadata of {checksum}"))?;
                } else {
                    repo.write_metadata(ty, Some(&checksum), &variant, cancel)
                        .with_context(|| {
                            format!("writing {s} object {checksum} (checksum mismatch?)")
                        })?;
                }
                written += 1;
            }
        }
    }
    // A layer of only directories (or nothing) counts as OSTree's own.
    Ok((written, objects || !files, listed))
}

fn write_file_object(
    repo: &ostree::Repo,
    e: &mut tar::Entry<impl Read>,
    checksum: &str,
    xattrs: Option<&Vec<u8>>,
) -> Result<()> {
    let h = e.header();
    let info = gio::FileInfo::new();
    info.set_attribute_uint32("unix::uid", h.uid()? as u32);
    info.set_attribute_uint32("unix::gid", h.gid()? as u32);
    let perm = h.mode()? & 0o7777;
    let xv = match xattrs {
        Some(x) => glib::Variant::from_data_with_type(
            x.clone(),
            glib::VariantTy::new("a(ayay)").map_err(|e| anyhow!("{e}"))?,
        ),
        None => Vec::<(Vec<u8>, Vec<u8>)>::new().to_variant(),
    };
    let input: gio::InputStream;
    if h.entry_type().is_symlink() {
        let target = e
            .link_name()?
            .ok_or_else(|| anyhow!("a symlink object without a target"))?
            .to_string_lossy()
            .into_owned();
        info.set_file_type(gio::FileType::SymbolicLink);
        info.set_attribute_uint32("unix::mode", libc::S_IFLNK | perm);
        info.set_symlink_target(&target);
        info.set_size(0);
        input = gio::MemoryInputStream::new().upcast();
    } else if h.entry_type().is_file() {
        let mut data = Vec::with_capacity(h.size()? as usize);
        e.read_to_end(&mut data).context("reading file content")?;
        info.set_file_type(gio::FileType::Regular);
        info.set_attribute_uint32("unix::mode", libc::S_IFREG | perm);
        info.set_size(data.len() as i64);
        input = gio::MemoryInputStream::from_bytes(&glib::Bytes::from_owned(data)).upcast();
    } else {
        bail!("content object of tar type {:?}", h.entry_type());
    }
    let (stream, len) =
        ostree::raw_file_to_content_stream(&input, &info, Some(&xv), gio::Cancellable::NONE)
            .context("framing a content object")?;
    repo.write_content(Some(checksum), &stream, len, gio::Cancellable::NONE)
        .context("checksum mismatch or write error")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths() {
        let c = "ab".to_string() + &"c".repeat(62);
        let p = super::super::object_path(&c, "file");
        assert_eq!(parse_object_path(&p), Some((c.clone(), "file")));
        assert_eq!(parse_object_path(&format!("./{p}")), Some((c, "file")));
        assert_eq!(parse_object_path("usr/bin/sh"), None);
        assert_eq!(parse_object_path("sysroot/ostree/repo/config"), None);
    }
}
