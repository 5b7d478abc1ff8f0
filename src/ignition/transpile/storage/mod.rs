//! The `storage` section. Files, directories and links are built here; local trees,
//! disks, filesystems (with their mount units), LUKS volumes and RAID arrays each in a
//! file of their own, as in the validator.

mod disks;
mod filesystems;
mod luks;
mod raid;
mod tree;

pub use filesystems::systemd_escape_path;

use super::resource::{chk_resource, resource, resources};
use super::{chk, chk_owner, opt_vec, owner_group, owner_user, terr, Ctx, R};
use crate::ignition::source::{KeyPath, StorageSrc};
use crate::validate::abs_path;
use ignition_config::v3_3 as ign;

/// `units`: the names of the config's own systemd units (a filesystem at /var may come
/// with its own mount unit).
pub(super) fn check(st: &StorageSrc, units: &[&str], ks: &KeyPath) -> R<()> {
    for (i, f) in st.files.iter().enumerate() {
        let kf = ks.k("files").i(i);
        chk(&kf.k("path"), abs_path(&f.path))?;
        chk_owner(&f.user, &kf.k("user"))?;
        chk_owner(&f.group, &kf.k("group"))?;
        if let Some(c) = &f.contents {
            chk_resource(c, &kf.k("contents"))?;
        }
        for (j, a) in f.append.iter().enumerate() {
            chk_resource(a, &kf.k("append").i(j))?;
        }
    }
    for (i, d) in st.directories.iter().enumerate() {
        let kd = ks.k("directories").i(i);
        chk(&kd.k("path"), abs_path(&d.path))?;
        chk_owner(&d.user, &kd.k("user"))?;
        chk_owner(&d.group, &kd.k("group"))?;
    }
    for (i, l) in st.links.iter().enumerate() {
        let kl = ks.k("links").i(i);
        chk(&kl.k("path"), abs_path(&l.path))?;
        if l.target.is_empty() || l.target.contains('\0') {
            return Err(terr(
                &kl.k("target"),
                "a link needs a target (no NUL bytes)",
            ));
        }
        chk_owner(&l.user, &kl.k("user"))?;
        chk_owner(&l.group, &kl.k("group"))?;
    }
    for (i, t) in st.trees.iter().enumerate() {
        let kt = ks.k("trees").i(i);
        if let Some(p) = &t.path {
            chk(&kt.k("path"), abs_path(p))?;
        }
        chk_owner(&t.user, &kt.k("user"))?;
        chk_owner(&t.group, &kt.k("group"))?;
    }
    disks::check(&st.disks, &ks.k("disks"))?;
    filesystems::check(&st.filesystems, &ks.k("filesystems"))?;
    filesystems::check_var_mounted(&st.filesystems, units, &ks.k("filesystems"))?;
    luks::check(&st.luks, &ks.k("luks"))?;
    raid::check(&st.raid, &ks.k("raid"))
}

/// The section (None when empty) and the mount units its filesystems ask for.
pub(super) fn build(
    ctx: &Ctx,
    st: &StorageSrc,
    ks: &KeyPath,
) -> R<(Option<ign::Storage>, Vec<ign::Unit>)> {
    let mut files = files(ctx, st, ks)?;
    let directories = directories(st);
    let mut links = links(st);
    for (i, t) in st.trees.iter().enumerate() {
        tree::tree(ctx, t, &ks.k("trees").i(i), &mut files, &mut links)?;
    }
    let disks = disks::build(&st.disks);
    let (filesystems, mount_units) = filesystems::build(&st.filesystems, &ks.k("filesystems"))?;
    let luks = luks::build(ctx, &st.luks, &ks.k("luks"))?;
    let raid = raid::build(&st.raid);
    let storage = ign::Storage {
        files: opt_vec(files),
        directories: opt_vec(directories),
        links: opt_vec(links),
        disks: opt_vec(disks),
        filesystems: opt_vec(filesystems),
        luks: opt_vec(luks),
        raid: opt_vec(raid),
    };
    let storage = (storage != ign::Storage::default()).then_some(storage);
    Ok((storage, mount_units))
}

fn files(ctx: &Ctx, st: &StorageSrc, ks: &KeyPath) -> R<Vec<ign::File>> {
    let mut files = Vec::new();
    for (i, f) in st.files.iter().enumerate() {
        let kf = ks.k("files").i(i);
        let contents = f
            .contents
            .as_ref()
            .map(|c| resource(ctx, c, &kf.k("contents"), true))
            .transpose()?;
        let append = resources(ctx, &f.append, &kf.k("append"), true)?;
        files.push(ign::File {
            contents,
            append: opt_vec(append),
            mode: f.mode.map(|m| m.0 as i64),
            overwrite: f.overwrite,
            user: owner_user(&f.user),
            group: owner_group(&f.group),
            ..ign::File::new(f.path.clone())
        });
    }
    Ok(files)
}

fn directories(st: &StorageSrc) -> Vec<ign::Directory> {
    st.directories
        .iter()
        .map(|d| ign::Directory {
            mode: d.mode.map(|m| m.0 as i64),
            overwrite: d.overwrite,
            user: owner_user(&d.user),
            group: owner_group(&d.group),
            ..ign::Directory::new(d.path.clone())
        })
        .collect()
}

fn links(st: &StorageSrc) -> Vec<ign::Link> {
    st.links
        .iter()
        .map(|l| ign::Link {
            target: Some(l.target.clone()),
            hard: l.hard,
            overwrite: l.overwrite,
            user: owner_user(&l.user),
            group: owner_group(&l.group),
            ..ign::Link::new(l.path.clone())
        })
        .collect()
}
