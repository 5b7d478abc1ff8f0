//! Overlays: directory trees copied over the root, in the recipe's order.
//!
//! Modes are kept (including setuid/sticky bits), symlinks are copied as symlinks, owners
//! become root:root (overlays usually come from a checkout owned by a user). A directory in
//! the overlay merges into the tree's directory — also when the tree has a symlink there
//! that points to a directory inside the tree (e.g. merged-/usr `lib -> usr/lib`). A file
//! replaces whatever the tree has at that path.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Copies every overlay into `tree`, in order. Returns the number of files written.
pub fn apply(overlays: &[PathBuf], tree: &Path) -> Result<u64> {
    let mut n = 0;
    for o in overlays {
        if !o.is_dir() {
            bail!("overlay {} is not a directory", o.display());
        }
        n += copy_dir(o, tree, tree).with_context(|| format!("copying overlay {}", o.display()))?;
    }
    Ok(n)
}

fn copy_dir(src: &Path, dst: &Path, tree: &Path) -> Result<u64> {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("listing {}", src.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let s = e.path();
        let d = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&s).with_context(|| format!("stat {}", s.display()))?;
        let ft = md.file_type();
        if ft.is_dir() {
            let target = match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => d.clone(),
                Ok(m) if m.file_type().is_symlink() => match resolve_dir_link(&d, tree)? {
                    Some(t) => t,
                    None => {
                        remove_any(&d)?;
                        make_dir(&d)?;
                        d.clone()
                    }
                },
                Ok(_) => {
                    remove_any(&d)?;
                    make_dir(&d)?;
                    d.clone()
                }
                Err(_) => {
                    make_dir(&d)?;
                    d.clone()
                }
            };
            n += copy_dir(&s, &target, tree)?;
            set_meta(&target, md.mode() & 0o7777)?;
        } else if ft.is_symlink() {
            let link =
                std::fs::read_link(&s).with_context(|| format!("readlink {}", s.display()))?;
            remove_any(&d)?;
            std::os::unix::fs::symlink(&link, &d)
                .with_context(|| format!("creating symlink {}", d.display()))?;
            chown_root(&d)?;
            n += 1;
        } else if ft.is_file() {
            remove_any(&d)?;
            std::fs::copy(&s, &d)
                .with_context(|| format!("copying {} to {}", s.display(), d.display()))?;
            set_meta(&d, md.mode() & 0o7777)?;
            n += 1;
        } else {
            bail!(
                "{}: overlays may hold only files, directories and symlinks",
                s.display()
            );
        }
    }
    Ok(n)
}

/// A symlink at `link` (inside `tree`) that leads to a directory inside the tree: that
/// directory. Absolute targets are taken relative to the tree root, never the host's.
fn resolve_dir_link(link: &Path, tree: &Path) -> Result<Option<PathBuf>> {
    let mut cur = link.to_path_buf();
    for _ in 0..16 {
        let m = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if m.is_dir() {
            return Ok(Some(cur));
        }
        if !m.file_type().is_symlink() {
            return Ok(None);
        }
        let t = std::fs::read_link(&cur).with_context(|| format!("readlink {}", cur.display()))?;
        let base = if t.is_absolute() {
            tree.to_path_buf()
        } else {
            cur.parent().unwrap_or(tree).to_path_buf()
        };
        let joined = normalize(&base.join(t.strip_prefix("/").unwrap_or(&t)));
        if !joined.starts_with(tree) {
            return Ok(None);
        }
        cur = joined;
    }
    Ok(None)
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn make_dir(d: &Path) -> Result<()> {
    std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))
}

pub(crate) fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

fn set_meta(p: &Path, mode: u32) -> Result<()> {
    chown_root(p)?;
    // chown clears setuid/setgid, so the mode comes after it.
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, p.display()))
}

fn chown_root(p: &Path) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(0), Some(0))
        .with_context(|| format!("chown root:root {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn overlays_merge_in_order_keep_modes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
        symlink("usr/lib", tree.join("lib")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/motd"), "old").unwrap();

        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("etc")).unwrap();
        std::fs::create_dir_all(a.join("lib/x")).unwrap();
        std::fs::write(a.join("etc/motd"), "from a").unwrap();
        std::fs::write(a.join("lib/x/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(a.join("lib/x/tool"), PermissionsExt::from_mode(0o4755)).unwrap();
        symlink("../usr/lib/x/tool", a.join("etc/tool-link")).unwrap();
        let b = d.path().join("b");
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::fs::write(b.join("etc/motd"), "from b").unwrap();

        let n = apply(&[a, b], &tree).unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/motd")).unwrap(),
            "from b"
        );
        // Went through the lib -> usr/lib link, which stays a link.
        assert!(std::fs::symlink_metadata(tree.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        let m = std::fs::metadata(tree.join("usr/lib/x/tool")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(tree.join("etc/tool-link")).unwrap(),
            Path::new("../usr/lib/x/tool")
        );
    }

    #[test]
    fn absolute_links_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/share")).unwrap();
        symlink("/usr/share", tree.join("share")).unwrap();
        assert_eq!(
            resolve_dir_link(&tree.join("share"), &tree).unwrap(),
            Some(tree.join("usr/share"))
        );
        symlink("/nonexistent-on-purpose", tree.join("x")).unwrap();
        assert_eq!(resolve_dir_link(&tree.join("x"), &tree).unwrap(), None);
    }

    #[test]
    fn missing_overlay_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = apply(&[d.path().join("nope")], d.path()).unwrap_err();
        assert!(format!("{e}").contains("nope"));
    }
}
