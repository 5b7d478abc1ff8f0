//! Checks of a composed root: no excluded package installed, no build path left in any
//! file; and the installed package list they and the commit metadata read.

use super::treecache::Checkout;
use crate::recipe::Recipe;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `name=version` of every installed package, sorted.
pub fn installed_packages(admindir: &Path) -> Result<Vec<String>> {
    let out = crate::cmd::Cmd::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}=${Version}\n"])
        .read()
        .context("listing the tree's installed packages")?;
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("ii"))
        .filter_map(|l| l.split('\t').nth(1).map(String::from))
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

pub fn check_excluded(recipe: &Recipe, tree: &Path) -> Result<()> {
    if recipe.exclude_packages.is_empty() {
        return Ok(());
    }
    let pkgs = installed_packages(&tree.join("var/lib/dpkg"))?;
    let bad: Vec<&String> = recipe
        .exclude_packages
        .iter()
        .filter(|x| pkgs.iter().any(|p| p.split('=').next() == Some(x.as_str())))
        .collect();
    if !bad.is_empty() {
        bail!(
            "exclude-packages: {} got installed anyway (essential packages cannot be excluded)",
            bad.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Fails when the work directory's path appears in any file of the tree — or, given the
/// checkout, in any file not shared with the tree cache (a cached root was searched for
/// its own build's path before it was saved, and cannot hold this one's, made after it).
pub fn check_no_build_paths(tree: &Path, work: &Path, co: Option<&Checkout>) -> Result<()> {
    let Some(co) = co else {
        return grep_build_paths(&[work], &[tree.to_path_buf()], "-rlsF");
    };
    let files = co.unshared_files(tree)?;
    for chunk in files.chunks(500) {
        grep_build_paths(&[work], chunk, "-lsF")?;
    }
    Ok(())
}

/// Fails when any of `build_paths` appears in any file of `tree`.
pub fn check_tree_free_of(tree: &Path, build_paths: &[&Path]) -> Result<()> {
    grep_build_paths(build_paths, &[tree.to_path_buf()], "-rlsF")
}

fn grep_build_paths(patterns: &[&Path], paths: &[PathBuf], flags: &str) -> Result<()> {
    let mut c = crate::cmd::Cmd::new("grep").arg(flags);
    for p in patterns {
        c = c.arg("-e").arg(p.as_os_str());
    }
    let r = c.arg("--").args(paths).run();
    match r {
        Ok(out) => {
            let s = out.stdout_str();
            let shown: Vec<String> = patterns.iter().map(|p| p.display().to_string()).collect();
            bail!("build paths ({}) left in the tree:\n{s}", shown.join(", "))
        }
        Err(e) => match e.downcast_ref::<crate::cmd::CmdError>() {
            Some(c) if c.status == "exit status 1" => Ok(()),
            _ => Err(e).context("searching the tree for build paths"),
        },
    }
}
