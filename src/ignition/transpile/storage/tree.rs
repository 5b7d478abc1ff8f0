//! `storage.trees`: local directories copied in as files and links.

use crate::ignition::source::{KeyPath, TreeSrc};
use crate::ignition::transpile::resource::data_url;
use crate::ignition::transpile::{owner_group, owner_user, terr, Ctx, LOCAL_MAX, R};
use ignition_config::v3_3 as ign;
use std::path::{Component, Path, PathBuf};

/// Where a tree's symlink `link` (relative to the tree root) with target `target` points,
/// relative to the tree root, or `None` when it leaves the tree (absolute, or more `..`
/// than it is deep).
fn link_in_tree(link: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<std::ffi::OsString> = link
        .parent()
        .map(|d| {
            d.components()
                .map(|c| c.as_os_str().to_os_string())
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// A local directory copied in. The walk never follows a symlink: the root must lie inside
/// the files directory ([`crate::validate::path_in_dir`]); a symlink inside the tree
/// becomes an Ignition link with the same target, and must point inside the tree (a
/// relative target that stays within it), since a link out of the tree would name a host
/// path outside the files directory (use `[[storage.links]]` for a link to an absolute
/// path on the target). Regular files are read without blocking; FIFOs, sockets and
/// devices are refused.
pub(super) fn tree(
    ctx: &Ctx,
    t: &TreeSrc,
    key: &KeyPath,
    files: &mut Vec<ign::File>,
    links: &mut Vec<ign::Link>,
) -> R<()> {
    let kl = key.k("local");
    let root = ctx.local_path(&t.local, &kl)?;
    let dest = t.path.clone().unwrap_or_else(|| "/".into());
    if !dest.starts_with('/') {
        return Err(terr(
            &key.k("path"),
            format!("path {dest:?} must be absolute"),
        ));
    }
    let meta = std::fs::symlink_metadata(&root).map_err(|e| {
        terr(
            &kl,
            format!("cannot read local tree {}: {e}", root.display()),
        )
    })?;
    if !meta.is_dir() {
        return Err(terr(&kl, format!("{} is not a directory", root.display())));
    }
    let mut stack = vec![root.clone()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| terr(&kl, format!("reading {}: {e}", dir.display())))?;
        for e in rd {
            let e = e.map_err(|e| terr(&kl, format!("reading {}: {e}", dir.display())))?;
            let p = e.path();
            // DirEntry::file_type does not follow symlinks.
            let ft = e
                .file_type()
                .map_err(|er| terr(&kl, format!("{}: {er}", p.display())))?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                entries.push((p, ft));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, ft) in entries {
        let rel = p.strip_prefix(&root).unwrap_or(&p);
        let rel_s = rel
            .to_str()
            .ok_or_else(|| terr(&kl, format!("{} is not a UTF-8 path", p.display())))?;
        let target_path = format!("{}/{}", dest.trim_end_matches('/'), rel_s);
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&p).map_err(|e| terr(&kl, format!("{}: {e}", p.display())))?;
            if link_in_tree(rel, &target).is_none() {
                return Err(terr(
                    &kl,
                    format!(
                        "the symlink {rel_s} in the tree points to {}, outside the tree: a \
                         tree's links must stay inside it (for a link to an absolute path on \
                         the target, use [[storage.links]])",
                        target.display()
                    ),
                ));
            }
            let target = target.to_str().ok_or_else(|| {
                terr(
                    &kl,
                    format!("the target of the symlink {rel_s} is not UTF-8"),
                )
            })?;
            links.push(ign::Link {
                target: Some(target.to_string()),
                overwrite: t.overwrite,
                user: owner_user(&t.user),
                group: owner_group(&t.group),
                ..ign::Link::new(target_path)
            });
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let f = crate::validate::open_regular(&p).map_err(|m| terr(&kl, m))?;
            let exec = f
                .metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            drop(f);
            let data =
                crate::validate::read_regular_file(&p, LOCAL_MAX).map_err(|m| terr(&kl, m))?;
            let (url, comp) = data_url(&data, true);
            files.push(ign::File {
                contents: Some(ign::Resource {
                    source: Some(url),
                    compression: comp,
                    ..Default::default()
                }),
                mode: Some(if exec { 0o755 } else { 0o644 }),
                overwrite: t.overwrite,
                user: owner_user(&t.user),
                group: owner_group(&t.group),
                ..ign::File::new(target_path)
            });
        } else {
            return Err(terr(
                &kl,
                format!(
                    "{rel_s} in the tree is {}: a tree holds only files, directories and \
                     symlinks",
                    crate::validate::file_kind(ft)
                ),
            ));
        }
    }
    Ok(())
}
