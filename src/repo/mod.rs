//! The OSTree repository: create/open, commit a directory tree with metadata, read
//! commits back. Everything goes through libostree (the `ostree` crate).

pub mod cli;
pub mod diff;
pub mod estimate;
pub mod oci;
pub mod pull;
pub mod tree;

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::os::fd::AsRawFd;
use std::path::Path;

pub use ostree::RepoMode;

/// Metadata keys kiln writes into every commit it makes.
pub mod keys {
    /// The human version string (libostree/rpm-ostree convention).
    pub const VERSION: &str = "version";
    /// The resolved recipe, as JSON.
    pub const RECIPE: &str = "kiln.recipe";
    /// Installed packages, sorted, as `name=version` strings.
    pub const PACKAGES: &str = "kiln.packages";
    /// sha256 over everything that decides the tree's content.
    pub const INPUT_HASH: &str = "kiln.inputhash";
    /// The kiln version that made the commit.
    pub const KILN_VERSION: &str = "kiln.version";
    /// Default kernel arguments from the recipe (`as`).
    pub const KARGS: &str = "kiln.kargs";
    /// Source date epoch used for the build (`t`).
    pub const SOURCE_DATE_EPOCH: &str = "kiln.source-date-epoch";
    /// Prefix for the recipe's free-form metadata.
    pub const USER_PREFIX: &str = "kiln.meta.";
}

/// A typed value for commit metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Str(String),
    StrList(Vec<String>),
    U64(u64),
    Bool(bool),
}

impl MetaValue {
    fn to_variant(&self) -> glib::Variant {
        match self {
            MetaValue::Str(s) => s.to_variant(),
            MetaValue::StrList(v) => v.to_variant(),
            MetaValue::U64(n) => n.to_variant(),
            MetaValue::Bool(b) => b.to_variant(),
        }
    }
}

/// Opens an existing repository.
/// Runs `f` (a libostree pull, with any `AsyncProgress` it reports to) on a main context
/// of its own, pushed as the thread default.
///
/// libostree's pull iterates the calling thread's default main context. With none pushed
/// that is the process-global one, and two pulls on two threads (parallel tests, a caller
/// with worker threads) then wait in `poll` for wakeups the other thread consumed: both
/// hang for good. A fresh context per pull keeps its sources to itself. An
/// `AsyncProgress` binds to the thread-default context when it is created, so create it
/// inside `f`.
pub fn on_own_main_context<T>(f: impl FnOnce() -> T) -> Result<T> {
    let ctx = glib::MainContext::new();
    ctx.with_thread_default(f)
        .map_err(|e| anyhow!("acquiring a main context for libostree: {e}"))
}

pub fn open(path: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repo {}", path.display()))?;
    Ok(repo)
}

/// Opens the repository at `path`, creating it with `mode` when it does not exist.
pub fn open_or_create(path: &Path, mode: RepoMode) -> Result<ostree::Repo> {
    if path.join("config").exists() {
        return open(path);
    }
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating repo directory {}", path.display()))?;
    let repo = ostree::Repo::new_for_path(path);
    repo.create(mode, gio::Cancellable::NONE)
        .with_context(|| format!("creating OSTree repo {} ({mode:?})", path.display()))?;
    Ok(repo)
}

/// Parses a repo mode name as `ostree init --mode` takes it.
pub fn parse_mode(s: &str) -> Result<RepoMode> {
    Ok(match s {
        "bare" => RepoMode::Bare,
        "bare-user" => RepoMode::BareUser,
        "bare-user-only" => RepoMode::BareUserOnly,
        "archive" | "archive-z2" => RepoMode::Archive,
        other => {
            return Err(anyhow!(
                "unknown repo mode {other:?} (bare, bare-user, bare-user-only, archive)"
            ))
        }
    })
}

/// What to commit and how.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The ref to point at the new commit.
    pub ref_: String,
    /// Parent commit; `None` means "the ref's current commit, if any".
    pub parent: Option<String>,
    pub subject: Option<String>,
    /// Commit timestamp (seconds since the epoch).
    pub timestamp: u64,
    /// Extra metadata; written sorted by key.
    pub metadata: Vec<(String, MetaValue)>,
    /// Add `ostree.bootable` / `ostree.linux` (needs a kernel in the tree).
    pub bootable: bool,
}

/// The outcome of a commit.
#[derive(Debug, Clone)]
pub struct CommitResult {
    pub checksum: String,
    pub parent: Option<String>,
    /// Content objects written (new, not deduplicated away).
    pub content_objects_written: u64,
    pub metadata_objects_written: u64,
    pub content_bytes_written: u64,
    /// Files taken from the dev/ino cache (not read, not re-hashed).
    pub devino_hits: u64,
}

/// Commits the directory `dir` to `repo` in one transaction and moves `opts.ref_` to it.
/// The dev/ino cache is used so files hardlinked from a checkout of the same repo are not
/// re-hashed.
pub fn commit_dir(repo: &ostree::Repo, dir: &Path, opts: &CommitOptions) -> Result<CommitResult> {
    let parent = match &opts.parent {
        Some(p) => Some(p.clone()),
        None => resolve(repo, &opts.ref_)?,
    };
    commit_dir_with(repo, dir, opts, parent, None)
}

/// [`commit_dir`] with the parent exactly as given, and optionally libostree's dev/ino
/// cache of a hardlink checkout from `repo`: files still sharing an inode with one of
/// `repo`'s objects are taken by checksum without being read. The caller guarantees that
/// no such file was changed in place (`compose::treecache` checks it).
pub fn commit_dir_with(
    repo: &ostree::Repo,
    dir: &Path,
    opts: &CommitOptions,
    parent: Option<String>,
    devino: Option<&ostree::RepoDevInoCache>,
) -> Result<CommitResult> {
    let cancel = gio::Cancellable::NONE;
    let dirf = std::fs::File::open(dir)
        .with_context(|| format!("opening tree {} for commit", dir.display()))?;
    let tx = repo
        .auto_transaction(cancel)
        .context("starting OSTree transaction")?;
    let mtree = ostree::MutableTree::new();
    let modifier = ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::NONE, None);
    match devino {
        Some(c) => modifier.set_devino_cache(c),
        None => modifier.set_devino_cache(&ostree::RepoDevInoCache::new()),
    }
    repo.write_dfd_to_mtree(dirf.as_raw_fd(), ".", &mtree, Some(&modifier), cancel)
        .with_context(|| format!("writing {} into the repo", dir.display()))?;
    let root = repo
        .write_mtree(&mtree, cancel)
        .context("writing the tree's directory objects")?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("libostree returned a root that is not a RepoFile"))?;

    let dict = glib::VariantDict::new(None);
    let mut md = opts.metadata.clone();
    md.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in &md {
        dict.insert_value(k, &v.to_variant());
    }
    if opts.bootable {
        ostree::commit_metadata_for_bootable(&root, &dict, cancel).with_context(|| {
            format!(
                "finding the kernel in {} (expected usr/lib/modules/$kver/vmlinuz)",
                dir.display()
            )
        })?;
    }
    let metadata = dict.end();
    let checksum = repo
        .write_commit_with_time(
            parent.as_deref(),
            opts.subject.as_deref(),
            None,
            Some(&metadata),
            &root,
            opts.timestamp,
            cancel,
        )
        .context("writing the commit object")?;
    repo.transaction_set_ref(None, &opts.ref_, Some(checksum.as_str()));
    let stats = tx
        .commit(cancel)
        .context("committing the OSTree transaction")?;
    Ok(CommitResult {
        checksum: checksum.to_string(),
        parent,
        content_objects_written: stats.get_content_objects_written() as u64,
        metadata_objects_written: stats.get_metadata_objects_written() as u64,
        content_bytes_written: stats.get_content_bytes_written(),
        devino_hits: stats.get_devino_cache_hits() as u64,
    })
}

/// Resolves a ref or checksum; `None` when the ref does not exist.
pub fn resolve(repo: &ostree::Repo, rev: &str) -> Result<Option<String>> {
    let r = repo
        .resolve_rev(rev, true)
        .with_context(|| format!("resolving {rev:?}"))?;
    Ok(r.map(|s| s.to_string()))
}

/// A commit as kiln reads it back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    pub checksum: String,
    pub parent: Option<String>,
    pub subject: String,
    pub timestamp: u64,
    pub version: Option<String>,
    /// Every metadata key, rendered as JSON.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl CommitInfo {
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.as_str())
    }

    pub fn meta_list(&self, key: &str) -> Vec<String> {
        self.metadata
            .get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Loads a commit by ref or checksum.
pub fn read_commit(repo: &ostree::Repo, rev: &str) -> Result<CommitInfo> {
    let checksum =
        resolve(repo, rev)?.ok_or_else(|| anyhow!("no ref or commit {rev:?} in the repo"))?;
    let (v, _state) = repo
        .load_commit(&checksum)
        .with_context(|| format!("loading commit {checksum}"))?;
    commit_info_from_variant(&checksum, &v)
}

fn commit_info_from_variant(checksum: &str, v: &glib::Variant) -> Result<CommitInfo> {
    // (a{sv} aya(say) s s t ay ay)
    let md = v.child_value(0);
    let mut metadata = serde_json::Map::new();
    for i in 0..md.n_children() {
        let entry = md.child_value(i);
        let key: String = entry.child_value(0).get().unwrap_or_default();
        let val = entry.child_value(1);
        let val = val.as_variant().unwrap_or(val);
        metadata.insert(key, variant_to_json(&val));
    }
    let parent = ostree::commit_get_parent(v).map(|s| s.to_string());
    let subject: String = v.child_value(3).get().unwrap_or_default();
    let timestamp = ostree::commit_get_timestamp(v);
    let version = metadata
        .get(keys::VERSION)
        .and_then(|x| x.as_str())
        .map(String::from);
    Ok(CommitInfo {
        checksum: checksum.to_string(),
        parent,
        subject,
        timestamp,
        version,
        metadata,
    })
}

/// Best-effort conversion of a GVariant into JSON for display and comparisons.
pub fn variant_to_json(v: &glib::Variant) -> serde_json::Value {
    use serde_json::Value;
    if let Some(s) = v.str() {
        return Value::String(s.to_string());
    }
    if let Some(b) = v.get::<bool>() {
        return Value::Bool(b);
    }
    if let Some(n) = v.get::<u64>() {
        return Value::from(n);
    }
    if let Some(n) = v.get::<i64>() {
        return Value::from(n);
    }
    if let Some(n) = v.get::<u32>() {
        return Value::from(n);
    }
    if let Some(n) = v.get::<i32>() {
        return Value::from(n);
    }
    if let Some(list) = v.get::<Vec<String>>() {
        return Value::from(list);
    }
    if v.type_().as_str() == "ay" {
        return Value::String(hex::encode(v.data()));
    }
    if v.is_container() {
        return Value::Array(
            (0..v.n_children())
                .map(|i| variant_to_json(&v.child_value(i)))
                .collect(),
        );
    }
    Value::String(v.print(true).to_string())
}

/// The commit chain of a ref, newest first, as far as the parents are in the repo.
pub fn log(repo: &ostree::Repo, rev: &str, limit: usize) -> Result<Vec<CommitInfo>> {
    let mut out = Vec::new();
    let mut cur =
        Some(resolve(repo, rev)?.ok_or_else(|| anyhow!("no ref or commit {rev:?} in the repo"))?);
    while let Some(c) = cur {
        if out.len() >= limit {
            break;
        }
        let v = match repo.load_variant_if_exists(ostree::ObjectType::Commit, &c)? {
            Some(v) => v,
            None => break,
        };
        let info = commit_info_from_variant(&c, &v)?;
        cur = info.parent.clone();
        out.push(info);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("usr/lib/modules/6.1.0-test")).unwrap();
        std::fs::create_dir_all(dir.join("usr/etc")).unwrap();
        std::fs::write(dir.join("usr/lib/modules/6.1.0-test/vmlinuz"), b"kernel").unwrap();
        std::fs::write(
            dir.join("usr/lib/modules/6.1.0-test/initramfs.img"),
            b"initrd",
        )
        .unwrap();
        std::fs::write(dir.join("usr/etc/hostname"), b"kiln\n").unwrap();
    }

    #[test]
    fn commit_roundtrip_with_metadata_and_parent() {
        let td = tempfile::tempdir().unwrap();
        let repo = open_or_create(&td.path().join("repo"), RepoMode::BareUser).unwrap();
        let t = td.path().join("tree");
        tree(&t);
        let opts = CommitOptions {
            ref_: "test/ref".into(),
            timestamp: 1_700_000_000,
            metadata: vec![
                ("version".into(), MetaValue::Str("1".into())),
                (
                    keys::PACKAGES.into(),
                    MetaValue::StrList(vec!["a=1".into(), "b=2".into()]),
                ),
            ],
            bootable: true,
            ..Default::default()
        };
        let c1 = commit_dir(&repo, &t, &opts).unwrap();
        assert!(c1.parent.is_none());
        let info = read_commit(&repo, "test/ref").unwrap();
        assert_eq!(info.checksum, c1.checksum);
        assert_eq!(info.version.as_deref(), Some("1"));
        assert_eq!(info.timestamp, 1_700_000_000);
        assert_eq!(info.meta_list(keys::PACKAGES), vec!["a=1", "b=2"]);
        assert_eq!(info.meta_str("ostree.linux"), Some("6.1.0-test"));

        std::fs::write(t.join("usr/etc/hostname"), b"changed\n").unwrap();
        let c2 = commit_dir(&repo, &t, &opts).unwrap();
        assert_eq!(c2.parent.as_deref(), Some(c1.checksum.as_str()));
        let l = log(&repo, "test/ref", 10).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].checksum, c1.checksum);
    }

    #[test]
    fn same_tree_same_time_same_checksum() {
        let td = tempfile::tempdir().unwrap();
        let t = td.path().join("tree");
        tree(&t);
        let opts = CommitOptions {
            ref_: "r".into(),
            timestamp: 1,
            parent: Some(String::new()).filter(|s: &String| !s.is_empty()),
            ..Default::default()
        };
        let a = open_or_create(&td.path().join("a"), RepoMode::BareUser).unwrap();
        let b = open_or_create(&td.path().join("b"), RepoMode::Archive).unwrap();
        assert_eq!(
            commit_dir(&a, &t, &opts).unwrap().checksum,
            commit_dir(&b, &t, &opts).unwrap().checksum
        );
    }
}
