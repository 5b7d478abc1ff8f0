//! Derived images (`podman build` on `FROM` a kiln image) back into a commit: the layers
//! kiln did not write are applied on the base commit's tree as overlay diffs (OCI
//! whiteouts `.wh.NAME`, opaque directories `.wh..wh..opq`, hard links), `etc/` going to
//! `usr/etc/` as in every kiln commit. What a deployment cannot hold is refused, naming
//! the image and the path: device files, anything under `/boot` (the kernel and
//! initramfs live in `/usr/lib/modules/VER/`), content under `/sysroot`, and a tree
//! without `usr/lib/modules/VER/{vmlinuz,initramfs.img}`. Content under `/var`, `/tmp`
//! and `/run` is dropped with a warning, as ostree-ext's importer filters it: `/var` is
//! the machine's (bootc unpacks an image's `/var` only on a first install; kiln deploys to
//! machines whose `/var` already exists) and the others are empty at boot. The commit's
//! parent is the base, its metadata names the image (`ostree.manifest-digest`) and the
//! packages of the derived tree's dpkg database; its time is the image's creation, so
//! importing the same image again gives the same commit.

use crate::error::InputError;
use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// Commit metadata: the manifest digest of the image a commit was made from.
pub const MANIFEST_DIGEST: &str = "ostree.manifest-digest";
/// Commit metadata: the kiln commit a derived image was built on.
pub const DERIVED_FROM: &str = "kiln.derived-from";

/// What applying the derived layers made.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Derived {
    pub commit: String,
    pub base: String,
    /// Files under /var, /tmp and /run the layers had, which the commit does not.
    pub dropped: Vec<String>,
}

/// A tar layer to apply: its digest (for messages) and its uncompressed stream.
pub struct LayerStream {
    pub digest: String,
    pub reader: Box<dyn Read>,
}

struct Apply<'a> {
    repo: &'a ostree::Repo,
    /// How the image is named in errors.
    image: &'a str,
    root: ostree::MutableTree,
    dirmeta: HashMap<(u32, u32, u32), String>,
    dropped: Vec<String>,
}

fn cancel() -> Option<&'static gio::Cancellable> {
    gio::Cancellable::NONE
}

/// Applies `layers` on `base` and commits the result (inside the caller's transaction).
pub fn apply(
    repo: &ostree::Repo,
    image: &str,
    base: &str,
    layers: Vec<LayerStream>,
    manifest_digest: &str,
    created: Option<u64>,
) -> Result<Derived> {
    let root = ostree::MutableTree::from_commit(repo, base)
        .with_context(|| format!("loading the tree of the base commit {base}"))?;
    let mut a = Apply {
        repo,
        image,
        root,
        dirmeta: HashMap::new(),
        dropped: Vec::new(),
    };
    for l in layers {
        a.layer(l.reader)
            .with_context(|| format!("applying layer {} of {image}", l.digest))?;
    }
    a.check_kernel()?;
    let commit = a.commit(base, manifest_digest, created)?;
    if !a.dropped.is_empty() {
        let n = a.dropped.len();
        let shown: Vec<&str> = a.dropped.iter().take(8).map(String::as_str).collect();
        eprintln!(
            "kiln: warning: {image}: {n} file(s) under /var, /tmp or /run are not part of the \
             deployment (a machine's /var is its own; create state at boot with tmpfiles.d): \
             {}{}",
            shown.join(", "),
            if n > shown.len() { ", …" } else { "" }
        );
    }
    Ok(Derived {
        commit,
        base: base.to_string(),
        dropped: a.dropped,
    })
}

/// A tar path as a tree path: no `./`, no trailing `/`, `etc` → `usr/etc`; `None` for
/// the root. `..` and empty components are refused by the caller.
fn tree_path(p: &str) -> Option<String> {
    let p = p.trim_start_matches("./").trim_matches('/');
    if p.is_empty() || p == "." {
        return None;
    }
    Some(match p.split_once('/') {
        _ if p == "etc" => "usr/etc".to_string(),
        Some(("etc", rest)) => format!("usr/etc/{rest}"),
        _ => p.to_string(),
    })
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Apply<'_> {
    fn refuse(&self, path: &str, msg: impl Into<String>) -> anyhow::Error {
        InputError::new(self.image, msg.into())
            .key(format!("/{path}"))
            .into()
    }

    fn layer(&mut self, r: Box<dyn Read>) -> Result<()> {
        let mut ar = tar::Archive::new(r);
        let mut added: HashSet<String> = HashSet::new();
        for e in ar.entries().context("reading the layer's tar stream")? {
            let mut e = e.context("reading the layer's tar stream")?;
            let raw = e
                .path()
                .context("reading a tar path")?
                .to_string_lossy()
                .into_owned();
            if raw.split('/').any(|c| c == "..") {
                return Err(self.refuse(&raw, "a path with `..` in a layer"));
            }
            let Some(path) = tree_path(&raw) else {
                continue;
            };
            let kind = e.header().entry_type();
            if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                return Err(self.refuse(
                    &path,
                    "a device file or fifo in the image; a deployment holds none \
                     (devices come from devtmpfs at boot)",
                ));
            }
            let top = path.split('/').next().unwrap_or_default();
            let (dir, name) = split(&path);
            match top {
                "var" | "tmp" | "run" => {
                    if !kind.is_dir() && !name.starts_with(".wh.") {
                        self.dropped.push(format!("/{path}"));
                    }
                    continue;
                }
                "boot" if !(path == "boot" && kind.is_dir()) => {
                    return Err(self.refuse(
                        &path,
                        "content under /boot in the image; the kernel and initramfs belong \
                         in /usr/lib/modules/VERSION/ (vmlinuz, initramfs.img), where kiln \
                         deploys them from",
                    ));
                }
                "sysroot" if kind.is_dir() => continue,
                "sysroot" => {
                    return Err(self.refuse(
                        &path,
                        "content under /sysroot in a derived layer; /sysroot is the \
                         machine's physical root",
                    ));
                }
                _ => {}
            }
            if name == ".wh..wh..opq" {
                let d = self.dir(dir)?;
                for (n, _) in d
                    .copy_files()
                    .into_iter()
                    .chain(d.copy_subdirs().into_keys().map(|n| (n, String::new())))
                {
                    let full = if dir.is_empty() {
                        n.clone()
                    } else {
                        format!("{dir}/{n}")
                    };
                    if !added.contains(&full) {
                        d.remove(&n, true)
                            .with_context(|| format!("emptying opaque directory /{dir}"))?;
                    }
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                if let Some(d) = self.find_dir(dir) {
                    d.remove(hidden, true)
                        .with_context(|| format!("removing /{dir}/{hidden}"))?;
                }
                continue;
            }
            if kind.is_file() && e.size() == 0 && self.mount_point(&path)? {
                continue;
            }
            self.entry(&mut e, &path)
                .with_context(|| format!("writing /{path}"))?;
            added.insert(path);
        }
        Ok(())
    }

    /// An empty `/etc/{hostname,hosts,resolv.conf}` the base does not have: the mount
    /// point `podman build` (buildah) leaves for the file it binds in during `RUN`.
    fn mount_point(&mut self, path: &str) -> Result<bool> {
        const BOUND: [&str; 3] = ["usr/etc/hostname", "usr/etc/hosts", "usr/etc/resolv.conf"];
        if !BOUND.contains(&path) {
            return Ok(false);
        }
        let (dir, name) = split(path);
        Ok(!matches!(
            self.find_dir(dir).map(|d| d.lookup(name)),
            Some(Ok((Some(_), _)))
        ))
    }

    fn entry(&mut self, e: &mut tar::Entry<Box<dyn Read>>, path: &str) -> Result<()> {
        let h = e.header().clone();
        let kind = h.entry_type();
        let (dir, name) = split(path);
        if kind.is_hard_link() {
            // The link shares its target's object (owner, mode and all).
            let target = e
                .link_name()?
                .ok_or_else(|| anyhow!("a hard link without a target"))?
                .to_string_lossy()
                .into_owned();
            let t = tree_path(&target).unwrap_or_default();
            let (td, tn) = split(&t);
            let Some(Ok((Some(c), _))) = self.find_dir(td).map(|d| d.lookup(tn)) else {
                return Err(self.refuse(
                    path,
                    format!("a hard link to /{t}, which is not a file of the image"),
                ));
            };
            return self.place(dir, name, &c);
        }
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        let perm = h.mode()? & 0o7777;
        let xattrs = xattrs(e)?;
        if kind.is_dir() {
            let meta = self.dirmeta(uid, gid, perm, xattrs.as_ref())?;
            let parent = self.dir(dir)?;
            if let Ok((Some(_), _)) = parent.lookup(name) {
                parent.remove(name, false)?;
            }
            let d = parent.ensure_dir(name)?;
            d.set_metadata_checksum(&meta);
            return Ok(());
        }
        let checksum = if kind.is_symlink() {
            let target = e
                .link_name()?
                .ok_or_else(|| anyhow!("a symlink without a target"))?
                .to_string_lossy()
                .into_owned();
            self.repo
                .write_symlink(None, uid, gid, xattrs.as_ref(), &target, cancel())
                .context("writing a symlink object")?
                .to_string()
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut data = Vec::with_capacity(h.size()? as usize);
            e.read_to_end(&mut data).context("reading file content")?;
            self.repo
                .write_regfile_inline(
                    None,
                    uid,
                    gid,
                    libc::S_IFREG | perm,
                    xattrs.as_ref(),
                    &data,
                    cancel(),
                )
                .context("writing a content object")?
                .to_string()
        } else {
            // PAX/GNU headers are consumed by the tar reader; anything else is not a file.
            return Err(self.refuse(path, format!("a tar entry of type {kind:?}")));
        };
        self.place(dir, name, &checksum)
    }

    /// Makes `dir/name` the content object `checksum` (replacing a directory there).
    fn place(&mut self, dir: &str, name: &str, checksum: &str) -> Result<()> {
        let parent = self.dir(dir)?;
        if let Ok((_, Some(_))) = parent.lookup(name) {
            parent.remove(name, false)?;
        }
        parent.replace_file(name, checksum)?;
        Ok(())
    }

    /// The directory at `path`, if there is one.
    fn find_dir(&self, path: &str) -> Option<ostree::MutableTree> {
        let mut d = self.root.clone();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            d = match d.lookup(c) {
                Ok((_, Some(sub))) => sub,
                _ => return None,
            };
        }
        Some(d)
    }

    /// The directory at `path`, created (0755 root) where missing or a file.
    fn dir(&mut self, path: &str) -> Result<ostree::MutableTree> {
        let mut d = self.root.clone();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            d = match d.lookup(c) {
                Ok((_, Some(sub))) => sub,
                other => {
                    if let Ok((Some(_), _)) = other {
                        d.remove(c, false)?;
                    }
                    let meta = self.dirmeta(0, 0, 0o755, None)?;
                    let sub = d
                        .ensure_dir(c)
                        .with_context(|| format!("creating directory {c} of /{path}"))?;
                    sub.set_metadata_checksum(&meta);
                    sub
                }
            };
        }
        Ok(d)
    }

    fn dirmeta(
        &mut self,
        uid: u32,
        gid: u32,
        perm: u32,
        xattrs: Option<&glib::Variant>,
    ) -> Result<String> {
        if xattrs.is_none() {
            if let Some(c) = self.dirmeta.get(&(uid, gid, perm)) {
                return Ok(c.clone());
            }
        }
        let info = gio::FileInfo::new();
        info.set_file_type(gio::FileType::Directory);
        info.set_attribute_uint32("unix::uid", uid);
        info.set_attribute_uint32("unix::gid", gid);
        info.set_attribute_uint32("unix::mode", libc::S_IFDIR | perm);
        let v = ostree::create_directory_metadata(&info, xattrs);
        let c = self
            .repo
            .write_metadata(ostree::ObjectType::DirMeta, None, &v, cancel())
            .context("writing a dirmeta object")?
            .to_string();
        if xattrs.is_none() {
            self.dirmeta.insert((uid, gid, perm), c.clone());
        }
        Ok(c)
    }

    /// Some `usr/lib/modules/VER` has `vmlinuz` and `initramfs.img`.
    fn check_kernel(&mut self) -> Result<()> {
        let mut found = false;
        let mut vers: Vec<(String, ostree::MutableTree)> = self
            .find_dir("usr/lib/modules")
            .map(|m| m.copy_subdirs().into_iter().collect())
            .unwrap_or_default();
        vers.sort_by(|a, b| a.0.cmp(&b.0));
        for (ver, d) in vers {
            let files = d.copy_files();
            match (
                files.contains_key("vmlinuz"),
                files.contains_key("initramfs.img"),
            ) {
                (true, true) => found = true,
                (true, false) => {
                    return Err(self.refuse(
                        &format!("usr/lib/modules/{ver}/initramfs.img"),
                        format!(
                            "kernel {ver} has no initramfs; a derived image that installs \
                             a kernel must run dracut for it in the Containerfile"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if !found {
            return Err(self.refuse(
                "usr/lib/modules",
                "no kernel (usr/lib/modules/VERSION/vmlinuz with initramfs.img): the \
                 image cannot boot",
            ));
        }
        Ok(())
    }

    fn read_file(&mut self, path: &str) -> Result<Option<String>> {
        let (dir, name) = split(path);
        let Some(Ok((Some(c), _))) = self.find_dir(dir).map(|d| d.lookup(name)) else {
            return Ok(None);
        };
        let (input, _, _) = self
            .repo
            .load_file(&c, cancel())
            .with_context(|| format!("reading /{path}"))?;
        let mut s = String::new();
        if let Some(i) = input {
            i.into_read()
                .read_to_string(&mut s)
                .with_context(|| format!("reading /{path}"))?;
        }
        Ok(Some(s))
    }

    fn commit(&mut self, base: &str, digest: &str, created: Option<u64>) -> Result<String> {
        let (bv, _) = self
            .repo
            .load_commit(base)
            .with_context(|| format!("loading commit {base}"))?;
        let dict = glib::VariantDict::new(Some(&bv.child_value(0)));
        for k in [
            crate::repo::keys::INPUT_HASH,
            "ostree.linux",
            "ostree.bootable",
        ] {
            dict.remove(k);
        }
        dict.insert_value(MANIFEST_DIGEST, &digest.to_variant());
        dict.insert_value(DERIVED_FROM, &base.to_variant());
        let status = format!("{}/status", crate::compose::layout::DPKG_DB);
        if let Some(text) = self.read_file(&status)? {
            dict.insert_value(crate::repo::keys::PACKAGES, &packages(&text).to_variant());
        }
        let root = self
            .repo
            .write_mtree(&self.root, cancel())
            .context("writing the derived tree's directory objects")?
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("libostree returned a root that is not a RepoFile"))?;
        ostree::commit_metadata_for_bootable(&root, &dict, cancel())
            .context("finding the derived tree's kernel")?;
        let time = created.unwrap_or_else(|| ostree::commit_get_timestamp(&bv));
        let c = self
            .repo
            .write_commit_with_time(
                Some(base),
                Some(&format!("Derived image {digest}")),
                None,
                Some(&dict.end()),
                &root,
                time,
                cancel(),
            )
            .context("writing the derived commit")?;
        Ok(c.to_string())
    }
}

/// `user.`/`security.` xattrs of an entry (PAX `SCHILY.xattr.NAME`), as ostree's
/// `a(ayay)` with NUL-terminated names; `None` when there are none.
fn xattrs(e: &mut tar::Entry<Box<dyn Read>>) -> Result<Option<glib::Variant>> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(exts) = e.pax_extensions().context("reading PAX headers")? {
        for x in exts {
            let x = x.context("reading a PAX header")?;
            if let Some(name) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let mut n = name.to_vec();
                n.push(0);
                v.push((n, x.value_bytes().to_vec()));
            }
        }
    }
    v.sort();
    Ok((!v.is_empty()).then(|| v.to_variant()))
}

/// `name=version` of every installed package in a dpkg status file, sorted.
pub fn packages(status: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let (mut pkg, mut ver, mut installed) = (None, None, false);
        for l in stanza.lines() {
            if let Some(v) = l.strip_prefix("Package: ") {
                pkg = Some(v.trim());
            } else if let Some(v) = l.strip_prefix("Version: ") {
                ver = Some(v.trim());
            } else if let Some(v) = l.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(p), Some(v), true) = (pkg, ver, installed) {
            out.push(format!("{p}={v}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_paths_map_to_tree_paths() {
        assert_eq!(tree_path("./etc/apt/x").as_deref(), Some("usr/etc/apt/x"));
        assert_eq!(tree_path("etc/").as_deref(), Some("usr/etc"));
        assert_eq!(tree_path("etcetera/x").as_deref(), Some("etcetera/x"));
        assert_eq!(tree_path("usr/bin/jq").as_deref(), Some("usr/bin/jq"));
        assert_eq!(tree_path("./"), None);
    }

    #[test]
    fn installed_packages_from_status() {
        let s = "Package: jq\nStatus: install ok installed\nVersion: 1.6\n\n\
                 Package: gone\nStatus: deinstall ok config-files\nVersion: 2\n\n\
                 Package: a\nStatus: install ok installed\nVersion: 3:1.0-1\n";
        assert_eq!(packages(s), ["a=3:1.0-1", "jq=1.6"]);
    }
}
