//! Writing a commit as ostree-container layers (the layout in `crate::repo::oci`): the
//! commit layer (commit, dirtree and dirmeta objects, the directory skeleton) and one
//! layer per [`Chunk`] (content objects hard-linked from their paths).

use super::chunk::{Chunk, Content};
use crate::repo::oci::layout::{Layer, LayerWriter, OciDir};
use crate::repo::oci::object_path;
use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::HashSet;
use std::io::Read;

const REPO_CONFIG: &str = "[core]\nrepo_version=1\nmode=bare-split-xattrs\n";

/// The directory structure and objects of a commit, read once.
pub struct Walk {
    /// (tree path, dirmeta checksum) of every directory, parents first; "" is the root.
    pub dirs: Vec<(String, String)>,
    pub dirtrees: Vec<String>,
    /// Dirmeta objects of directories without entries (`/sysroot`).
    pub extra_dirmeta: Vec<String>,
    pub content: Content,
}

/// Reads the commit's dirtrees recursively.
pub fn walk(repo: &ostree::Repo, commit: &str) -> Result<Walk> {
    let v = repo
        .load_variant(ostree::ObjectType::Commit, commit)
        .with_context(|| format!("loading commit {commit}"))?;
    let tree = ostree::checksum_from_bytes_v(&v.child_value(6)).to_string();
    let meta = ostree::checksum_from_bytes_v(&v.child_value(7)).to_string();
    let mut w = Walk {
        dirs: Vec::new(),
        dirtrees: Vec::new(),
        extra_dirmeta: Vec::new(),
        content: Content::default(),
    };
    walk_dir(repo, "", &tree, &meta, &mut w)?;
    Ok(w)
}

fn walk_dir(repo: &ostree::Repo, path: &str, tree: &str, meta: &str, w: &mut Walk) -> Result<()> {
    w.dirs.push((path.to_string(), meta.to_string()));
    w.dirtrees.push(tree.to_string());
    let v = repo
        .load_variant(ostree::ObjectType::DirTree, tree)
        .with_context(|| format!("loading dirtree {tree}"))?;
    let (files, dirs): ostree::TreeVariantType = v
        .try_get()
        .map_err(|e| anyhow!("dirtree {tree} is malformed: {e}"))?;
    let join = |n: &str| {
        if path.is_empty() {
            n.to_string()
        } else {
            format!("{path}/{n}")
        }
    };
    for (name, csum) in files {
        let c = hex::encode(csum);
        let size = repo
            .query_object_storage_size(ostree::ObjectType::File, &c, gio::Cancellable::NONE)
            .unwrap_or(0);
        w.content.add(&c, size, join(&name));
    }
    for (name, t, m) in dirs {
        // The tree's own /sysroot is where the object store sits in the image: its
        // objects go in, but no entries for it (it must be empty).
        if path.is_empty() && name == "sysroot" {
            let (t, m) = (hex::encode(t), hex::encode(m));
            let v = repo
                .load_variant(ostree::ObjectType::DirTree, &t)
                .with_context(|| format!("loading dirtree {t}"))?;
            if v.child_value(0).n_children() + v.child_value(1).n_children() > 0 {
                anyhow::bail!(
                    "the commit has content under /sysroot, where an image keeps its object store"
                );
            }
            w.dirtrees.push(t);
            w.extra_dirmeta.push(m);
            continue;
        }
        walk_dir(repo, &join(&name), &hex::encode(t), &hex::encode(m), w)?;
    }
    Ok(())
}

/// `usr/etc` is `etc` in the tar stream (ostree-ext's rule; importers map it back).
fn tar_path(p: &str) -> String {
    match p.strip_prefix("usr/etc") {
        Some(r) if r.is_empty() || r.starts_with('/') => format!("etc{r}"),
        _ => p.to_string(),
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(0);
    h.set_size(0);
    h
}

fn data(b: &mut tar::Builder<LayerWriter>, path: &str, bytes: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
    h.set_size(bytes.len() as u64);
    b.append_data(&mut h, path, bytes)
        .with_context(|| format!("writing {path} into a layer"))
}

fn dir(b: &mut tar::Builder<LayerWriter>, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, uid, gid);
    b.append_data(&mut h, format!("{path}/"), std::io::empty())
        .with_context(|| format!("writing directory {path} into a layer"))
}

/// `sysroot/ostree/repo` with its object directories and config.
fn repo_structure(b: &mut tar::Builder<LayerWriter>) -> Result<()> {
    for d in [
        "sysroot",
        "sysroot/ostree",
        "sysroot/ostree/repo",
        crate::repo::oci::OBJECTS_DIR,
    ] {
        dir(b, d, 0o755, 0, 0)?;
    }
    for i in 0..=0xffu32 {
        dir(
            b,
            &format!("{}/{i:02x}", crate::repo::oci::OBJECTS_DIR),
            0o755,
            0,
            0,
        )?;
    }
    for d in [
        "extensions",
        "refs",
        "refs/heads",
        "refs/mirrors",
        "refs/remotes",
        "state",
        "tmp",
        "tmp/cache",
    ] {
        dir(b, &format!("sysroot/ostree/repo/{d}"), 0o755, 0, 0)?;
    }
    data(b, "sysroot/ostree/repo/config", REPO_CONFIG.as_bytes())
}

fn variant_bytes(v: &glib::Variant) -> Vec<u8> {
    v.data_as_bytes().as_ref().to_vec()
}

/// The commit layer: skeleton, commit (and detached metadata), dirmeta and dirtree objects.
pub fn commit_layer(out: &OciDir, repo: &ostree::Repo, commit: &str, w: &Walk) -> Result<Layer> {
    let mut b = tar::Builder::new(out.layer_writer()?);
    b.mode(tar::HeaderMode::Complete);
    repo_structure(&mut b)?;
    let cv = repo.load_variant(ostree::ObjectType::Commit, commit)?;
    data(&mut b, &object_path(commit, "commit"), &variant_bytes(&cv))?;
    if let Some(m) = repo
        .read_commit_detached_metadata(commit, gio::Cancellable::NONE)
        .context("reading detached metadata")?
    {
        data(
            &mut b,
            &object_path(commit, "commitmeta"),
            &variant_bytes(&m),
        )?;
    }
    let mut seen = HashSet::new();
    for m in w.dirs.iter().map(|(_, m)| m).chain(&w.extra_dirmeta) {
        if seen.insert(m.clone()) {
            let v = repo.load_variant(ostree::ObjectType::DirMeta, m)?;
            data(&mut b, &object_path(m, "dirmeta"), &variant_bytes(&v))?;
        }
    }
    for t in &w.dirtrees {
        if seen.insert(t.clone()) {
            let v = repo.load_variant(ostree::ObjectType::DirTree, t)?;
            data(&mut b, &object_path(t, "dirtree"), &variant_bytes(&v))?;
        }
    }
    let mut vartmp = false;
    for (p, m) in &w.dirs {
        if p.is_empty() {
            continue;
        }
        vartmp |= p == "var/tmp";
        let v = repo.load_variant(ostree::ObjectType::DirMeta, m)?;
        let dm =
            ostree::DirMetaParsed::from_variant(&v).map_err(|e| anyhow!("dirmeta {m}: {e}"))?;
        dir(&mut b, &tar_path(p), dm.mode, dm.uid, dm.gid)?;
    }
    for (p, e) in super::varview::entries(repo, &w.content)? {
        vartmp |= p == "var/tmp";
        match e {
            super::varview::Entry::Dir { mode, uid, gid } => dir(&mut b, &p, mode, uid, gid)?,
            super::varview::Entry::Link(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                b.append_link(&mut h, &p, &target)
                    .with_context(|| format!("writing the link {p} into a layer"))?;
            }
        }
    }
    if !vartmp {
        dir(&mut b, "var/tmp", 0o1777, 0, 0)?;
    }
    b.into_inner()
        .context("finishing the commit layer")?
        .finish()
}

/// One content layer.
pub fn chunk_layer(out: &OciDir, repo: &ostree::Repo, w: &Walk, chunk: &Chunk) -> Result<Layer> {
    let mut b = tar::Builder::new(out.layer_writer()?);
    b.mode(tar::HeaderMode::Complete);
    repo_structure(&mut b)?;
    let mut xattrs_written = HashSet::new();
    for c in &chunk.objects {
        let (_, paths) = &w.content.objects[c];
        append_content(&mut b, repo, c, paths, &mut xattrs_written)
            .with_context(|| format!("writing content object {c}"))?;
    }
    b.into_inner().context("finishing a layer")?.finish()
}

fn append_content(
    b: &mut tar::Builder<LayerWriter>,
    repo: &ostree::Repo,
    c: &str,
    paths: &[String],
    xattrs_written: &mut HashSet<String>,
) -> Result<()> {
    use sha2::Digest;
    let (input, info, xattrs) = repo.load_file(c, gio::Cancellable::NONE)?;
    let uid = info.attribute_uint32("unix::uid");
    let gid = info.attribute_uint32("unix::gid");
    let mode = info.attribute_uint32("unix::mode");
    let obj = object_path(c, "file");
    if xattrs.n_children() > 0 {
        let xd = variant_bytes(&xattrs);
        let xsum = hex::encode(sha2::Sha256::digest(&xd));
        let xpath = object_path(&xsum, "file-xattrs");
        if xattrs_written.insert(xsum) {
            data(b, &xpath, &xd)?;
        }
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        b.append_link(&mut h, object_path(c, "file-xattrs-link"), &xpath)?;
    }
    let mut h = header(tar::EntryType::Regular, mode, uid, gid);
    let size;
    if let Some(input) = input {
        let mut r = input.into_read();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).context("reading file content")?;
        size = buf.len();
        h.set_size(buf.len() as u64);
        b.append_data(&mut h, &obj, buf.as_slice())?;
    } else {
        let target = info
            .symlink_target()
            .ok_or_else(|| anyhow!("content object {c} is neither a file nor a symlink"))?;
        size = 1;
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, &obj, target)?;
    }
    for p in paths {
        let mut l = h.clone();
        l.set_size(0);
        if size == 0 {
            l.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut l, tar_path(p), std::io::empty())?;
        } else {
            l.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut l, tar_path(p), &obj)?;
        }
    }
    Ok(())
}
