//! The tree cache: bootstrapped roots kept as commits of a private `bare` OSTree repo
//! (`CACHE/trees`), restored by a hardlink checkout, and the composed tree committed
//! back through libostree's dev/ino cache so files that no stage touched are neither
//! copied nor re-hashed.
//!
//! - **Save** (after a fresh mmdebstrap): the root is committed with `CONSUME` (files are
//!   adopted into the repo, not copied), device nodes, FIFOs and sockets removed (`/dev`
//!   gets the namespace's own nodes at every chroot run, and the layout empties it).
//!   The fresh root is then checked out like a cached one, so a compose from an empty
//!   cache and one from a warm cache run the later stages on the same kind of tree.
//! - **Checkout**: hard links to the repo's objects, with the dev/ino → checksum map kept
//!   for the commit. Every file's inode, ctime, mode, owner, size and mtime are noted.
//! - **Copy-on-write by hand**: kiln's own stages never write into an existing file (they
//!   unlink first: `layout::write_file`); postprocess scripts are arbitrary, so before
//!   they run every shared file is broken out ([`TreeCache::break_links`]).
//! - **Check** before the commit: any file still sharing an inode with the repo whose
//!   ctime moved and whose mode, owner, size or mtime differ was changed in place. Then
//!   the compose commits without the dev/ino cache (reading every file, so its result is
//!   right) and the whole tree cache is deleted: it held the changed bytes.
//!   A marker (`kiln-in-use`) is written before the checkout and removed after the check;
//!   a compose that died in between leaves it, and the next one starts from an empty
//!   tree cache rather than trusting it.
//! - **Commit**: into this repo with the dev/ino cache, then pulled (objects it lacks
//!   only) into the output repo. The commit object is the same as one written straight
//!   into the output repo: same tree, metadata, parent and timestamp.

use crate::repo::{self, CommitOptions, CommitResult};
use anyhow::{Context, Result};
use ostree::prelude::*;
use ostree::{gio, glib};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const DIR: &str = "trees";
const IN_USE: &str = "kiln-in-use";
const USED: &str = "kiln-used";
/// What each cached root was bootstrapped from ([`RootInfo`], JSON per key).
const INFO: &str = "kiln-info";
/// The last composed tree (its new objects: initramfs, kiln binary, overlay files).
const COMPOSED_REF: &str = "kiln/composed";
/// Bootstrapped roots kept (least recently used beyond this are pruned).
const KEEP: usize = 2;

fn bootstrap_ref(key: &str) -> String {
    format!("kiln/bootstrap/{key}")
}

pub struct TreeCache {
    repo: ostree::Repo,
    dir: PathBuf,
}

/// A hardlink checkout of a cached root.
pub struct Checkout {
    devino: ostree::RepoDevInoCache,
    stamps: HashMap<u64, Stamp>,
}

impl Checkout {
    /// Files (and symlinks) the checkout hard-linked.
    pub fn files(&self) -> u64 {
        self.stamps.len() as u64
    }

    /// The regular files of `tree` that share no inode with the cache: what the stages
    /// after the checkout wrote.
    pub fn unshared_files(&self, tree: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(tree, &mut |p, md| {
            if md.is_file() && !(md.nlink() > 1 && self.stamps.contains_key(&md.ino())) {
                out.push(p.to_path_buf());
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }
}

/// What a cached root was bootstrapped from: the package-independent part of its key
/// ([`super::bootstrap::base_key`]), the epoch mmdebstrap ran with, and the recipe's
/// package selection. Package-level reuse ([`super::delta`]) starts from the root with
/// the same base and the closest selection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootInfo {
    pub key: String,
    pub base: String,
    /// [`super::bootstrap::family_key`] (records written before it existed have none).
    #[serde(default)]
    pub family: Option<String>,
    pub epoch: u64,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
}

impl RootInfo {
    /// Packages in one selection and not the other.
    pub fn distance(&self, packages: &[String]) -> usize {
        let a: std::collections::BTreeSet<&String> = self.packages.iter().collect();
        let b: std::collections::BTreeSet<&String> = packages.iter().collect();
        a.symmetric_difference(&b).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Self {
        Stamp {
            ctime: (md.ctime(), md.ctime_nsec()),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
        }
    }

    /// Changed apart from ctime (which links, unlinks and renames move too).
    fn content_or_meta_differs(&self, o: &Stamp) -> bool {
        (self.mode, self.uid, self.gid, self.size, self.mtime)
            != (o.mode, o.uid, o.gid, o.size, o.mtime)
    }
}

impl TreeCache {
    /// Opens (or creates) `CACHE/trees`. Returns a note when a marker showed that a
    /// compose died between checkout and check, and the cache was dropped for it.
    pub fn open(cache_dir: &Path) -> Result<(Self, Option<String>)> {
        let dir = cache_dir.join(DIR);
        let mut note = None;
        if dir.join(IN_USE).exists() {
            super::overlay::remove_any(&dir)?;
            note = Some(
                "tree cache: a compose stopped before checking its hardlinked tree; the \
                 cache was dropped (the root is bootstrapped again)"
                    .to_string(),
            );
        }
        let repo = repo::open_or_create(&dir, repo::RepoMode::Bare)?;
        Ok((TreeCache { repo, dir }, note))
    }

    /// Commits a freshly bootstrapped `tree` as the root `info.key`, consuming it (the
    /// directory is removed; its files are adopted when it is on the cache's file system,
    /// else copied), and prunes the least recently used roots. `from` is the
    /// checkout the tree was made from, if any: its unchanged files are taken by checksum.
    pub fn save(&self, info: &RootInfo, tree: &Path, from: Option<&Checkout>) -> Result<()> {
        let key = info.key.as_str();
        let cancel = gio::Cancellable::NONE;
        // libostree refuses them before any commit filter sees them.
        remove_special_files(tree)?;
        // Every cached file has mtime 0, however it got into the repo (adopted files keep
        // theirs, copied ones get 0): dracut keeps the times of what it copies (clamped to
        // its own script's), so the initramfs would otherwise depend on where the root
        // was built and on which of two equal files the commit met first.
        zero_mtimes(tree)?;
        // Files are adopted into the repo (`CONSUME`: linked, not copied) when they are on
        // its file system; a root built on tmpfs ([`super::scratch`]) is copied.
        let same_fs = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
        let flags = if same_fs(tree).with_context(|| format!("stat {}", tree.display()))?
            == same_fs(&self.dir).with_context(|| format!("stat {}", self.dir.display()))?
        {
            ostree::RepoCommitModifierFlags::CONSUME
        } else {
            ostree::RepoCommitModifierFlags::NONE
        };
        let modifier = ostree::RepoCommitModifier::new(flags, None);
        if let Some(co) = from {
            modifier.set_devino_cache(&co.devino);
        }
        let dirf = std::fs::File::open(tree)
            .with_context(|| format!("opening {} to cache it", tree.display()))?;
        let tx = self
            .repo
            .auto_transaction(cancel)
            .context("starting a tree cache transaction")?;
        let mtree = ostree::MutableTree::new();
        self.repo
            .write_dfd_to_mtree(dirf.as_raw_fd(), ".", &mtree, Some(&modifier), cancel)
            .with_context(|| format!("caching {}", tree.display()))?;
        let root = self
            .repo
            .write_mtree(&mtree, cancel)
            .context("writing the cached root's directories")?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
        let c = self
            .repo
            .write_commit_with_time(None, Some(key), None, None, &root, 0, cancel)
            .context("writing the cached root's commit")?;
        self.repo
            .transaction_set_ref(None, &bootstrap_ref(key), Some(c.as_str()));
        tx.commit(cancel)
            .context("committing the tree cache transaction")?;
        drop(dirf);
        super::overlay::remove_any(tree)?;
        self.write_info(info)?;
        self.mark_used(key)?;
        self.prune_old()
    }

    /// Writes the record of the cached root `info.key` when it has none (a root saved
    /// before records existed).
    pub fn ensure_info(&self, info: &RootInfo) -> Result<()> {
        if self.info_path(&info.key).exists() {
            return Ok(());
        }
        self.write_info(info)
    }

    fn info_path(&self, key: &str) -> PathBuf {
        self.dir.join(INFO).join(format!("{key}.json"))
    }

    fn write_info(&self, info: &RootInfo) -> Result<()> {
        let text = serde_json::to_vec(info).context("encoding the cached root's record")?;
        super::layout::write_file(&self.info_path(&info.key), &text, 0o644)
    }

    /// The cached root with base `base` (or, when there is none, of family `family`: the
    /// recipe's extra repositories differ), the same `exclude` list and the package
    /// selection closest to `packages` (fewest packages in one and not the other; the
    /// most recently used on a tie).
    pub fn closest(
        &self,
        base: &str,
        family: &str,
        packages: &[String],
        exclude: &[String],
    ) -> Result<Option<RootInfo>> {
        let d = self.dir.join(INFO);
        let rd = match std::fs::read_dir(&d) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        let mut best: Option<((bool, usize), std::time::SystemTime, RootInfo)> = None;
        for e in rd.flatten() {
            // A record whose root was pruned, or that cannot be read, is no candidate.
            let Ok(text) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(info) = serde_json::from_slice::<RootInfo>(&text) else {
                continue;
            };
            let used = self.dir.join(USED).join(&info.key);
            let Ok(t) = std::fs::metadata(&used).and_then(|m| m.modified()) else {
                continue;
            };
            let same_family = info.family.as_deref() == Some(family);
            if (info.base != base && !same_family) || info.exclude != exclude {
                continue;
            }
            let dist = (info.base != base, info.distance(packages));
            let better = match &best {
                None => true,
                Some((bd, bt, _)) => dist < *bd || (dist == *bd && t > *bt),
            };
            if better {
                best = Some((dist, t, info));
            }
        }
        Ok(best.map(|b| b.2))
    }

    fn mark_used(&self, key: &str) -> Result<()> {
        let d = self.dir.join(USED);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let p = d.join(key);
        super::layout::write_file(&p, b"", 0o644)
    }

    /// The directory the tree cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops the roots beyond [`KEEP`] (least recently used first) and their objects.
    fn prune_old(&self) -> Result<()> {
        let d = self.dir.join(USED);
        let mut used: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&d)
            .with_context(|| format!("listing {}", d.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let t = e.metadata().ok()?.modified().ok()?;
                Some((t, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        used.sort();
        used.reverse();
        for (_, key) in used.into_iter().skip(KEEP) {
            self.repo
                .set_ref_immediate(None, &bootstrap_ref(&key), None, gio::Cancellable::NONE)
                .with_context(|| format!("dropping cached root {key}"))?;
            super::overlay::remove_any(&d.join(&key))?;
            super::overlay::remove_any(&self.dir.join(INFO).join(format!("{key}.json")))?;
        }
        self.repo
            .prune(ostree::RepoPruneFlags::REFS_ONLY, 0, gio::Cancellable::NONE)
            .context("pruning the tree cache")?;
        Ok(())
    }

    /// Checks out the root cached for `key` at `tree` (which must not exist) by hard
    /// links. `None` when there is none.
    pub fn checkout(&self, key: &str, tree: &Path) -> Result<Option<Checkout>> {
        let Some(commit) = repo::resolve(&self.repo, &bootstrap_ref(key))? else {
            return Ok(None);
        };
        super::layout::write_file(&self.dir.join(IN_USE), b"", 0o644)?;
        let devino = ostree::RepoDevInoCache::new();
        let opts = ostree::RepoCheckoutAtOptions {
            mode: ostree::RepoCheckoutMode::None,
            devino_to_csum_cache: Some(devino.clone()),
            ..Default::default()
        };
        self.repo
            .checkout_at(
                Some(&opts),
                libc::AT_FDCWD,
                tree,
                &commit,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("checking out the cached root {key}"))?;
        self.mark_used(key)?;
        let mut stamps = HashMap::new();
        walk(tree, &mut |_, md| {
            // Only inodes the repo holds too: they stay allocated for the whole compose,
            // so their numbers cannot be reused by files the stages create. (libostree
            // copies some files, e.g. past the link limit; those are the tree's own.)
            if md.nlink() > 1 {
                stamps.insert(md.ino(), Stamp::of(md));
            }
            Ok(())
        })?;
        Ok(Some(Checkout { devino, stamps }))
    }

    /// Breaks every file of `tree` that shares its inode with anything (the cache's
    /// objects) out into its own copy: postprocess scripts may write into any file.
    pub fn break_links(tree: &Path, scratch: &Path, log: &Path) -> Result<()> {
        let copy = scratch.join("tree-copy");
        crate::cmd::Cmd::new("cp")
            .args(["-a", "--preserve=all"])
            .arg(tree)
            .arg(&copy)
            .run_logged(log)
            .with_context(|| format!("copying {} for the postprocess scripts", tree.display()))?;
        super::overlay::remove_any(tree)?;
        std::fs::rename(&copy, tree)
            .with_context(|| format!("renaming {} to {}", copy.display(), tree.display()))
    }

    /// The files of `tree` that still share an inode with the cache and were changed in
    /// place since the checkout (relative paths).
    pub fn changed_in_place(co: &Checkout, tree: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(tree, &mut |p, md| {
            if let Some(s) = co.stamps.get(&md.ino()) {
                let now = Stamp::of(md);
                if now.ctime != s.ctime && now.content_or_meta_differs(s) {
                    out.push(p.strip_prefix(tree).unwrap_or(p).to_path_buf());
                }
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    /// Commits `tree` into the cache repo through the checkout's dev/ino cache, then
    /// copies the commit into `out` and moves `opts.ref_` there to it.
    pub fn commit(
        &self,
        co: &Checkout,
        tree: &Path,
        out: &ostree::Repo,
        opts: &CommitOptions,
    ) -> Result<CommitResult> {
        let inner = CommitOptions {
            ref_: COMPOSED_REF.to_string(),
            ..opts.clone()
        };
        let res = repo::commit_dir_with(
            &self.repo,
            tree,
            &inner,
            opts.parent.clone(),
            Some(&co.devino),
        )?;
        let pull = glib::VariantDict::new(None);
        pull.insert_value("refs", &vec![res.checksum.clone()].to_variant());
        pull.insert_value("depth", &0i32.to_variant());
        pull.insert_value("gpg-verify", &false.to_variant());
        pull.insert_value("gpg-verify-summary", &false.to_variant());
        repo::on_own_main_context(|| {
            out.pull_with_options(
                &format!("file://{}", self.dir.display()),
                &pull.end(),
                None,
                gio::Cancellable::NONE,
            )
        })?
        .with_context(|| format!("copying commit {} from the tree cache", res.checksum))?;
        out.set_ref_immediate(
            None,
            &opts.ref_,
            Some(res.checksum.as_str()),
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("moving {} to {}", opts.ref_, res.checksum))?;
        Ok(res)
    }

    /// The tree was checked and found intact: the marker goes.
    pub fn release(&self) -> Result<()> {
        super::overlay::remove_any(&self.dir.join(IN_USE))
    }

    /// The tree cache held bytes a stage changed: all of it goes.
    pub fn discard(&self) -> Result<()> {
        super::overlay::remove_any(&self.dir)
    }
}

/// Removes device nodes, FIFOs and sockets below `dir`.
fn remove_special_files(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if md.is_dir() {
            remove_special_files(&p)?;
        } else if !md.is_file() && !md.file_type().is_symlink() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Sets the mtime of every regular file and symlink below `dir` that has another to 0
/// (the time libostree gives the objects it writes).
fn zero_mtimes(dir: &Path) -> Result<()> {
    walk(dir, &mut |p, md| {
        if md.mtime() == 0 && md.mtime_nsec() == 0 {
            return Ok(());
        }
        crate::fstime::set_times(p, None, 0)
            .with_context(|| format!("setting the mtime of {}", p.display()))
    })
}

/// Every regular file and symlink below `dir`, with its metadata (not following links).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<()>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if md.is_dir() {
            walk(&p, f)?;
        } else if md.is_file() || md.file_type().is_symlink() {
            f(&p, &md)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn info(key: &str) -> RootInfo {
        RootInfo {
            key: key.into(),
            base: "b".into(),
            family: Some("f".into()),
            epoch: 1,
            packages: vec!["a".into(), "b".into()],
            exclude: vec![],
        }
    }

    fn tree(t: &Path) {
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::create_dir_all(t.join("dev")).unwrap();
        for i in 0..20 {
            std::fs::write(t.join(format!("usr/bin/tool{i}")), format!("tool {i}")).unwrap();
        }
        std::fs::write(t.join("etc/conf"), "a=1\n").unwrap();
        std::fs::set_permissions(t.join("usr/bin/tool1"), PermissionsExt::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("tool0", t.join("usr/bin/link")).unwrap();
        let c = std::ffi::CString::new(t.join("dev/fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn saved_roots_check_out_as_hardlinks_and_in_place_changes_are_found() {
        let d = tempfile::tempdir().unwrap();
        let (tc, note) = TreeCache::open(d.path()).unwrap();
        assert!(note.is_none());
        let t = d.path().join("t");
        tree(&t);
        tc.save(&info("k1"), &t, None).unwrap();
        assert!(!t.exists(), "the fresh root is consumed");
        assert!(tc.checkout("nope", &t).unwrap().is_none());
        let co = tc.checkout("k1", &t).unwrap().unwrap();
        let md = std::fs::metadata(t.join("usr/bin/tool3")).unwrap();
        assert!(md.nlink() >= 2, "a hard link to the cache's object");
        assert_eq!(
            std::fs::metadata(t.join("usr/bin/tool1")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert!(t.join("dev").is_dir() && !t.join("dev/fifo").exists());
        assert_eq!(
            std::fs::read_link(t.join("usr/bin/link")).unwrap(),
            Path::new("tool0")
        );
        // Unlinking, renaming and replacing are not changes in place.
        std::fs::remove_file(t.join("usr/bin/tool4")).unwrap();
        std::fs::rename(t.join("usr/bin/tool5"), t.join("usr/bin/tool5b")).unwrap();
        crate::compose::layout::write_file(&t.join("etc/conf"), b"a=2\n", 0o644).unwrap();
        assert!(TreeCache::changed_in_place(&co, &t).unwrap().is_empty());
        assert_eq!(co.unshared_files(&t).unwrap(), vec![t.join("etc/conf")]);
        // A write into a shared file, or a chmod of one, is.
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(t.join("usr/bin/tool6"))
                .unwrap();
            f.write_all(b"!").unwrap();
        }
        std::fs::set_permissions(t.join("usr/bin/tool7"), PermissionsExt::from_mode(0o700))
            .unwrap();
        assert_eq!(
            TreeCache::changed_in_place(&co, &t).unwrap(),
            vec![
                PathBuf::from("usr/bin/tool6"),
                PathBuf::from("usr/bin/tool7")
            ]
        );
        // The marker stays until released; a later open drops a cache left marked.
        drop(tc);
        let (tc, note) = TreeCache::open(d.path()).unwrap();
        assert!(note.is_some());
        assert!(tc.checkout("k1", &d.path().join("t2")).unwrap().is_none());
    }

    #[test]
    fn the_closest_root_of_the_same_base_is_found() {
        let d = tempfile::tempdir().unwrap();
        let (tc, _) = TreeCache::open(d.path()).unwrap();
        let t = d.path().join("t");
        let pk = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        tree(&t);
        let mut one = info("one");
        one.packages = pk(&["a"]);
        tc.save(&one, &t, None).unwrap();
        tree(&t);
        let mut two = info("two");
        two.packages = pk(&["a", "b", "c"]);
        tc.save(&two, &t, None).unwrap();
        let got =
            |p: &[&str], base: &str| tc.closest(base, "g", &pk(p), &[]).unwrap().map(|i| i.key);
        assert_eq!(got(&["a", "d"], "b").as_deref(), Some("one"));
        assert_eq!(got(&["a", "b", "c", "d"], "b").as_deref(), Some("two"));
        assert_eq!(got(&["a"], "other base"), None);
        assert!(tc
            .closest("b", "g", &pk(&["a"]), &pk(&["x"]))
            .unwrap()
            .is_none());
        // Another base of the same family is a candidate, after every root of the base.
        let fam = |p: &[&str], base: &str| tc.closest(base, "f", &pk(p), &[]).unwrap();
        assert_eq!(fam(&["a"], "b2").map(|i| i.key).as_deref(), Some("one"));
        assert_eq!(
            fam(&["a", "b", "c"], "b").map(|i| i.key).as_deref(),
            Some("two")
        );
        // Pruned roots are no candidates (two are kept).
        tree(&t);
        let mut three = info("three");
        three.packages = pk(&["z"]);
        tc.save(&three, &t, None).unwrap();
        assert_ne!(got(&["a"], "b").as_deref(), Some("one"));
        assert_eq!(got(&["a", "b"], "b").as_deref(), Some("two"));
    }

    #[test]
    fn broken_out_files_no_longer_share_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let (tc, _) = TreeCache::open(d.path()).unwrap();
        let t = d.path().join("t");
        tree(&t);
        tc.save(&info("k"), &t, None).unwrap();
        let co = tc.checkout("k", &t).unwrap().unwrap();
        let log = d.path().join("log");
        TreeCache::break_links(&t, d.path(), &log).unwrap();
        assert_eq!(
            std::fs::metadata(t.join("usr/bin/tool3")).unwrap().nlink(),
            1
        );
        assert_eq!(
            std::fs::metadata(t.join("usr/bin/tool1")).unwrap().mode() & 0o7777,
            0o4755
        );
        std::fs::write(t.join("usr/bin/tool3"), "changed").unwrap();
        assert!(TreeCache::changed_in_place(&co, &t).unwrap().is_empty());
        tc.release().unwrap();
        let t2 = d.path().join("t2");
        tc.checkout("k", &t2).unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(t2.join("usr/bin/tool3")).unwrap(),
            "tool 3"
        );
    }

    #[test]
    fn commits_through_the_cache_equal_direct_commits() {
        let d = tempfile::tempdir().unwrap();
        let (tc, _) = TreeCache::open(d.path()).unwrap();
        let t = d.path().join("t");
        tree(&t);
        tc.save(&info("k"), &t, None).unwrap();
        let co = tc.checkout("k", &t).unwrap().unwrap();
        crate::compose::layout::write_file(&t.join("etc/new"), b"new\n", 0o600).unwrap();
        let out = repo::open_or_create(&d.path().join("out"), repo::RepoMode::BareUser).unwrap();
        let direct =
            repo::open_or_create(&d.path().join("direct"), repo::RepoMode::Archive).unwrap();
        let opts = CommitOptions {
            ref_: "os/x".into(),
            timestamp: 1_700_000_000,
            ..Default::default()
        };
        let a = tc.commit(&co, &t, &out, &opts).unwrap();
        assert!(a.devino_hits >= 19, "{} files not re-hashed", a.devino_hits);
        let b = repo::commit_dir(&direct, &t, &opts).unwrap();
        assert_eq!(a.checksum, b.checksum);
        assert_eq!(
            repo::resolve(&out, "os/x").unwrap().as_deref(),
            Some(a.checksum.as_str())
        );
        let st = std::process::Command::new("ostree")
            .arg(format!("--repo={}", d.path().join("out").display()))
            .args(["fsck", "-q"])
            .status()
            .unwrap();
        assert!(st.success(), "the output repo holds every object");
    }
}
