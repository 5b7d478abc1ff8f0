//! Tree normalisation for reproducible images (docs/reproducible.md): `mkfs.ext4 -d`
//! copies entries in readdir order and copies file times, so the trees it is given are
//! rebuilt in name order ([`sorted_link_tree`]) with every time at the build epoch
//! ([`clamp_times`]), and the inode change times it cannot be told are set afterwards
//! ([`clamp_ext4_ctimes`]).

use crate::cmd::Cmd;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// Sets the access and modification times of everything under `root` (symlinks
/// themselves, not their targets) to `epoch`, so that `mkfs.ext4 -d`, which copies them,
/// writes the same inodes whatever the wall clock said when the tree was made. Immutable
/// directories (libostree's deployment roots) get their flag cleared for the change and
/// set again.
pub fn clamp_times(root: &Path, epoch: u64) -> Result<()> {
    let epoch = i64::try_from(epoch).context("the build epoch is out of range")?;
    let set = |p: &Path| crate::fstime::set_times(p, Some(epoch), epoch);
    // Children first, then their directory.
    let mut stack = vec![(root.to_path_buf(), false)];
    while let Some((p, visited)) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if md.is_dir() && !visited {
            stack.push((p.clone(), true));
            for e in std::fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
                let e = e.with_context(|| format!("listing {}", p.display()))?;
                stack.push((e.path(), false));
            }
            continue;
        }
        match set(&p) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && md.is_dir() => {
                Cmd::new("chattr").arg("-i").arg(&p).run()?;
                let r = set(&p);
                Cmd::new("chattr").arg("+i").arg(&p).run()?;
                r.with_context(|| format!("setting the times of {}", p.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("setting the times of {}", p.display()))
            }
        }
    }
    Ok(())
}

/// Rebuilds the tree `src` at `dst` (which must not exist) with every directory's entries
/// created in sorted order: regular files as hard links to the same inodes (no data is
/// copied, hard-link groups stay groups), directories and symlinks anew with the same
/// owner and mode. `mkfs.ext4 -d` of bookworm's e2fsprogs (1.47.0) copies entries in
/// `readdir` order, which on the host file system depends on the order files were created
/// (libostree's pulls and checkouts write in parallel); the rebuilt tree's order depends
/// only on the names. `src` and `dst` must be on one file system.
pub fn sorted_link_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    std::fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(src)
        .with_context(|| format!("listing {}", src.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", src.display()))?;
    names.sort();
    for n in names {
        let (s, d) = (src.join(&n), dst.join(&n));
        let m =
            std::fs::symlink_metadata(&s).with_context(|| format!("reading {}", s.display()))?;
        let ft = m.file_type();
        if ft.is_dir() {
            sorted_link_tree(&s, &d)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&s).with_context(|| format!("reading {}", s.display()))?;
            std::os::unix::fs::symlink(&target, &d)
                .with_context(|| format!("creating {}", d.display()))?;
            std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("chown {}", d.display()))?;
        } else {
            std::fs::hard_link(&s, &d)
                .with_context(|| format!("linking {} to {}", s.display(), d.display()))?;
        }
    }
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        .with_context(|| format!("chown {}", dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dst.display()))?;
    Ok(())
}

/// Sets the change and access times of every inode in use of the ext4 image `fs` to
/// `epoch`: `mkfs.ext4 -d` (e2fsprogs 1.47.0) copies each source file's ctime, which no
/// system call can set, so it is the time the image's tree was made. Inodes in use are read from the
/// inode bitmaps (`dumpe2fs`), then changed with one `debugfs -w` script.
pub fn clamp_ext4_ctimes(fs: &Path, epoch: u64, log: &Path) -> Result<()> {
    let dump = Cmd::new("dumpe2fs")
        .arg(fs)
        .read()
        .with_context(|| format!("reading the inode bitmaps of {}", fs.display()))?;
    let used = used_inodes(&dump)?;
    let script = fs.with_extension("ctime.debugfs");
    let mut text = String::new();
    for i in used {
        // atime too: reading a hard-linked file's first name moved the atime mkfs copied
        // for its later names.
        text.push_str(&format!(
            "sif <{i}> ctime {epoch}\nsif <{i}> atime {epoch}\n"
        ));
    }
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    // With E2FSPROGS_FAKE_TIME, libext2fs keeps the superblock's write time as mkfs left
    // it instead of stamping the wall clock.
    let r = Cmd::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(fs)
        .run_logged(log)
        .with_context(|| format!("setting inode change times in {}", fs.display()));
    let _ = std::fs::remove_file(&script);
    r
}

/// Inode numbers in use according to `dumpe2fs` output (`Inodes per group`, then per
/// group `Free inodes: a-b, c`), without the reserved inodes 1 and 3–10.
fn used_inodes(dump: &str) -> Result<Vec<u64>> {
    let per_group: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Inodes per group:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("dumpe2fs printed no `Inodes per group`"))?;
    let mut used = Vec::new();
    let mut group: Option<u64> = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("Group ") {
            group = rest.split(':').next().and_then(|g| g.trim().parse().ok());
            continue;
        }
        let Some(free) = line.trim().strip_prefix("Free inodes:") else {
            continue;
        };
        let Some(g) = group else { continue };
        let (first, last) = (g * per_group + 1, (g + 1) * per_group);
        let mut free_set = Vec::new();
        for part in free.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u64 = a
                .trim()
                .parse()
                .with_context(|| format!("dumpe2fs: {line:?}"))?;
            let b: u64 = b
                .trim()
                .parse()
                .with_context(|| format!("dumpe2fs: {line:?}"))?;
            free_set.push((a, b));
        }
        let mut i = first;
        while i <= last {
            if let Some(&(_, b)) = free_set.iter().find(|(a, b)| *a <= i && i <= *b) {
                i = b + 1;
                continue;
            }
            if i == 2 || i >= 11 {
                used.push(i);
            }
            i += 1;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod ext4_tests {
    use super::*;

    #[test]
    fn used_inodes_from_bitmaps() {
        let dump = "Inodes per group:         16\n\
                    Group 0: (Blocks 0-32767) csum 0xae96\n  Free inodes: 14-16\n\
                    Group 1: (Blocks 32768-65535) [INODE_UNINIT]\n  Free inodes: 17-20, 22-32\n";
        assert_eq!(used_inodes(dump).unwrap(), vec![2, 11, 12, 13, 21]);
    }
}
