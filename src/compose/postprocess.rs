//! After the overlays: systemd unit presets, postprocess scripts (chroot, no network) and
//! `remove-files`.

use super::chroot;
use crate::cmd::Cmd;
use crate::recipe::Units;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Name of the preset file kiln writes (sorts before Debian's `90-systemd.preset`, so the
/// recipe wins).
pub const PRESET_FILE: &str = "usr/lib/systemd/system-preset/20-kiln.preset";

/// Writes the recipe's presets and applies them: `enable`/`disable` lines in
/// [`PRESET_FILE`], then `systemctl --root preset` of exactly those units (a full
/// `preset-all` would also enable every unit Debian leaves disabled, as Debian ships no
/// `disable *` default), then `systemctl --root mask`.
pub fn apply_units(units: &Units, tree: &Path, log: &Path) -> Result<()> {
    if units.enable.is_empty() && units.disable.is_empty() && units.mask.is_empty() {
        return Ok(());
    }
    let mut text = String::from("# Written by kiln from the recipe's [units].\n");
    for u in &units.enable {
        text.push_str(&format!("enable {u}\n"));
    }
    for u in units.disable.iter().chain(&units.mask) {
        text.push_str(&format!("disable {u}\n"));
    }
    let p = tree.join(PRESET_FILE);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    super::layout::write_file(&p, text.as_bytes(), 0o644)?;
    let root = format!("--root={}", tree.display());
    let named: Vec<&String> = units.enable.iter().chain(&units.disable).collect();
    if !named.is_empty() {
        Cmd::new("systemctl")
            .arg(&root)
            .args(["preset", "--preset-mode=full"])
            .args(&named)
            .run_logged(log)
            .context("applying unit presets (units.enable / units.disable)")?;
    }
    if !units.mask.is_empty() {
        Cmd::new("systemctl")
            .arg(&root)
            .arg("mask")
            .args(&units.mask)
            .run_logged(log)
            .context("masking units (units.mask)")?;
    }
    Ok(())
}

/// Runs each script in the tree, in order: copied to `/tmp/kiln-postprocess`, executed by
/// `chroot` in new mount, network and PID namespaces (no network, no stray daemons), with a
/// clean environment holding `SOURCE_DATE_EPOCH` and `KILN_RECIPE_NAME`. Scripts with a
/// `#!` line use their interpreter from the tree; others run with `/bin/sh`.
pub fn run_scripts(
    scripts: &[PathBuf],
    tree: &Path,
    recipe_name: &str,
    epoch: u64,
    log: &Path,
) -> Result<()> {
    for s in scripts {
        let mut body = Vec::new();
        crate::validate::open_regular(s)
            .map_err(anyhow::Error::msg)
            .and_then(|mut f| Ok(std::io::Read::read_to_end(&mut f, &mut body)?))
            .with_context(|| format!("reading postprocess script {}", s.display()))?;
        let inside = "tmp/kiln-postprocess";
        let dst = tree.join(inside);
        std::fs::create_dir_all(tree.join("tmp")).context("creating the tree's /tmp")?;
        std::fs::write(&dst, &body).with_context(|| format!("writing {}", dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dst.display()))?;
        let path = format!("/{inside}");
        let argv: Vec<&str> = if body.starts_with(b"#!") {
            vec![path.as_str()]
        } else {
            vec!["/bin/sh", "-e", path.as_str()]
        };
        let env = [
            ("SOURCE_DATE_EPOCH", epoch.to_string()),
            ("KILN_RECIPE_NAME", recipe_name.to_string()),
        ];
        let r = chroot::run_logged(tree, &argv, &env, log)
            .with_context(|| format!("postprocess script {} failed", s.display()));
        let _ = std::fs::remove_file(&dst);
        r?;
    }
    Ok(())
}

/// Removes every path matching one of `globs` (relative to the tree root), with the
/// matching rules of [`crate::recipe::glob`] (the ones docs/recipes.md describes): the
/// tree is walked segment by segment, `**` descends into real directories only, so
/// symlinks are removed, never followed. Returns how many paths were removed.
pub fn remove_files(globs: &[String], tree: &Path) -> Result<usize> {
    let mut n = 0;
    for g in globs {
        let pat = g.trim_start_matches('/');
        let parts: Vec<&str> = pat.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() || parts.iter().any(|p| *p == ".." || *p == ".") {
            bail!("remove-files: {g:?} must be a path inside the tree (no `..`, not empty)");
        }
        let mut hits = Vec::new();
        walk_glob(tree, &parts, &mut hits)?;
        hits.sort();
        hits.dedup();
        for h in hits {
            if h == tree {
                bail!("remove-files: {g:?} would remove the whole tree");
            }
            if std::fs::symlink_metadata(&h).is_ok() {
                super::overlay::remove_any(&h)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn walk_glob(dir: &Path, parts: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(());
    };
    if *first == "**" {
        if rest.is_empty() {
            // A trailing `**` also matches zero segments: the directory reached so far.
            out.push(dir.to_path_buf());
        }
        // Zero directories...
        walk_glob(dir, rest, out)?;
        // ...or one more real directory (symlinks are not followed).
        for e in read_sorted(dir)? {
            let p = dir.join(&e);
            if is_real_dir(&p) {
                walk_glob(&p, parts, out)?;
            }
        }
        return Ok(());
    }
    let literal = !first.contains(['*', '?', '[']);
    let names = if literal {
        if std::fs::symlink_metadata(dir.join(first)).is_ok() {
            vec![first.to_string()]
        } else {
            vec![]
        }
    } else {
        read_sorted(dir)?
            .into_iter()
            .filter(|n| crate::recipe::glob::matches(first, n))
            .collect()
    };
    for n in names {
        let p = dir.join(&n);
        if rest.is_empty() {
            out.push(p);
        } else if is_real_dir(&p) {
            walk_glob(&p, rest, out)?;
        }
    }
    Ok(())
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

fn read_sorted(dir: &Path) -> Result<Vec<String>> {
    if !is_real_dir(dir) {
        return Ok(vec![]);
    }
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_globs_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("usr/share/doc/a")).unwrap();
        std::fs::create_dir_all(t.join("usr/share/man/man1")).unwrap();
        std::fs::write(t.join("usr/share/doc/a/changelog.gz"), "x").unwrap();
        std::fs::write(t.join("usr/share/doc/a/copyright"), "x").unwrap();
        std::fs::write(t.join("usr/share/man/man1/ls.1.gz"), "x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.gz"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("usr/share/link")).unwrap();

        let n = remove_files(&["usr/share/**/*.gz".into(), "usr/share/man/**".into()], t).unwrap();
        assert_eq!(n, 3); // changelog.gz, ls.1.gz, man/
        assert!(t.join("usr/share/doc/a/copyright").exists());
        assert!(!t.join("usr/share/doc/a/changelog.gz").exists());
        assert!(!t.join("usr/share/man").exists());
        assert!(outside.path().join("keep.gz").exists());
        assert!(remove_files(&["../x".into()], t).is_err());
        assert!(remove_files(&["**".into()], t).is_err());
        assert!(t.join("usr").exists());
    }
}
