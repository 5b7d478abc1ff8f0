//! A commit's tree read without a checkout (`repo.read_commit` and file queries): what a
//! path is on a system deployed from the commit. Symlinks are followed inside the tree
//! (never on the host), and `/etc` is read from `/usr/etc`, where kiln's layout keeps it
//! and from where libostree makes each deployment's /etc.

use anyhow::{Context, Result};
use ostree::gio;
use ostree::prelude::*;

/// What a path is in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The root of one commit's tree.
pub struct CommitTree {
    repo: ostree::Repo,
    root: gio::File,
    /// The commit's checksum.
    pub commit: String,
}

/// Symlinks followed while resolving one path (Linux's limit).
const MAX_LINKS: usize = 40;

impl CommitTree {
    /// Opens `rev` (a ref or checksum) of `repo`.
    pub fn open(repo: &ostree::Repo, rev: &str) -> Result<CommitTree> {
        let (root, commit) = repo
            .read_commit(rev, gio::Cancellable::NONE)
            .with_context(|| format!("reading commit {rev}"))?;
        Ok(CommitTree {
            repo: repo.clone(),
            root,
            commit: commit.to_string(),
        })
    }

    fn query(&self, rel: &[String]) -> Option<(Kind, Option<String>)> {
        let f = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.resolve_relative_path(rel.join("/"))
        };
        let info = f
            .query_info(
                "standard::type,standard::symlink-target",
                gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
                gio::Cancellable::NONE,
            )
            .ok()?;
        let kind = match info.file_type() {
            gio::FileType::Regular => Kind::File,
            gio::FileType::Directory => Kind::Dir,
            gio::FileType::SymbolicLink => Kind::Symlink,
            _ => Kind::Other,
        };
        let target = info
            .symlink_target()
            .map(|t| t.to_string_lossy().into_owned());
        Some((kind, target))
    }

    /// Where absolute `path` (as on the deployed system) is in the commit and what it is;
    /// `None` when it does not exist there. Symlinks on the way are followed, the last one
    /// only with `follow_last`.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Option<(String, Kind)> {
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        let mut at: Vec<String> = Vec::new();
        let mut links = 0;
        let mut kind = Kind::Dir;
        while let Some(c) = todo.pop() {
            if c == ".." {
                at.pop();
                continue;
            }
            at.push(c);
            if at.len() == 1 && at[0] == "etc" {
                at = vec!["usr".into(), "etc".into()];
            }
            let (k, target) = self.query(&at)?;
            kind = k;
            if k == Kind::Symlink && (follow_last || !todo.is_empty()) {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = target?;
                at.pop();
                if target.starts_with('/') {
                    at.clear();
                }
                todo.extend(components(&target).into_iter().rev());
            } else if k != Kind::Dir && !todo.is_empty() {
                return None;
            }
        }
        Some((format!("/{}", at.join("/")), kind))
    }

    /// The content of the regular file at absolute `path` (symlinks followed).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let (p, kind) = self.resolve(path, true)?;
        if kind != Kind::File {
            return None;
        }
        // Through the object's checksum: GIO's load_contents wants a file input stream,
        // which a repo file's stream is not.
        let f = self
            .root
            .resolve_relative_path(p.trim_start_matches('/'))
            .downcast::<ostree::RepoFile>()
            .ok()?;
        f.ensure_resolved().ok()?;
        let (stream, _, _) = self
            .repo
            .load_file(&f.checksum(), gio::Cancellable::NONE)
            .ok()?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stream?.into_read(), &mut buf).ok()?;
        Some(buf)
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_through_links_and_etc() {
        let td = tempfile::tempdir().unwrap();
        let t = td.path().join("t");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::create_dir_all(t.join("usr/etc/ssh")).unwrap();
        std::fs::write(t.join("usr/bin/dash"), "#!").unwrap();
        std::fs::write(t.join("usr/etc/ssh/sshd_config"), "Port 22\n").unwrap();
        std::os::unix::fs::symlink("dash", t.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/../etc", t.join("usr/cfg")).unwrap();
        let repo = crate::repo::open_or_create(&td.path().join("repo"), ostree::RepoMode::BareUser)
            .unwrap();
        crate::repo::commit_dir(
            &repo,
            &t,
            &crate::repo::CommitOptions {
                ref_: "t".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let tree = CommitTree::open(&repo, "t").unwrap();
        assert_eq!(
            tree.resolve("/bin/sh", true),
            Some(("/usr/bin/dash".into(), Kind::File))
        );
        assert_eq!(
            tree.resolve("/bin/sh", false),
            Some(("/usr/bin/sh".into(), Kind::Symlink))
        );
        assert_eq!(
            tree.resolve("/etc/ssh/sshd_config", true).unwrap().0,
            "/usr/etc/ssh/sshd_config"
        );
        assert_eq!(
            tree.read("/usr/cfg/ssh/sshd_config").as_deref(),
            Some(&b"Port 22\n"[..])
        );
        assert_eq!(tree.resolve("/etc/motd", true), None);
        assert_eq!(tree.resolve("/usr/bin/dash/x", true), None);
    }
}
