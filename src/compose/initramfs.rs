//! Kernel and initramfs where libostree looks for them:
//! `usr/lib/modules/$kver/{vmlinuz,initramfs.img}`.
//!
//! dracut runs in the tree (chroot, no network) with `--no-hostonly --reproducible` and
//! the `ostree` module plus the recipe's extra modules; `SOURCE_DATE_EPOCH` fixes the
//! timestamps inside the image.

use super::chroot;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Finds the one kernel in the tree: a `usr/lib/modules/$kver` directory with a matching
/// `boot/vmlinuz-$kver` (or already a `usr/lib/modules/$kver/vmlinuz`).
pub fn find_kernel(tree: &Path) -> Result<String> {
    let mods = tree.join("usr/lib/modules");
    let mut found = Vec::new();
    if mods.is_dir() {
        for e in std::fs::read_dir(&mods).with_context(|| format!("listing {}", mods.display()))? {
            let e = e.with_context(|| format!("listing {}", mods.display()))?;
            let k = e.file_name().to_string_lossy().into_owned();
            if tree.join("boot").join(format!("vmlinuz-{k}")).exists()
                || mods.join(&k).join("vmlinuz").exists()
            {
                found.push(k);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no kernel in the tree (no usr/lib/modules/$kver with boot/vmlinuz-$kver): add a \
             kernel package such as linux-image-cloud-amd64 to the recipe's packages"
        ),
        _ => bail!(
            "more than one kernel in the tree ({}): an OSTree commit carries exactly one",
            found.join(", ")
        ),
    }
}

/// Builds the initramfs and puts the kernel next to it. Returns the kernel version.
pub fn build(tree: &Path, extra_modules: &[String], epoch: u64, log: &Path) -> Result<String> {
    let kver = find_kernel(tree)?;
    let moddir = tree.join("usr/lib/modules").join(&kver);
    let vmlinuz = moddir.join("vmlinuz");
    let boot_k = tree.join("boot").join(format!("vmlinuz-{kver}"));
    if !vmlinuz.exists() {
        std::fs::copy(&boot_k, &vmlinuz)
            .with_context(|| format!("copying {} to {}", boot_k.display(), vmlinuz.display()))?;
    }
    if !tree.join("usr/bin/dracut").exists() {
        bail!("dracut is not installed in the tree: add `dracut` to the recipe's packages");
    }
    let mut modules = vec!["ostree".to_string()];
    for m in extra_modules {
        if !modules.contains(m) {
            modules.push(m.clone());
        }
    }
    let add = modules.join(" ");
    let out = format!("/usr/lib/modules/{kver}/initramfs.img");
    chroot::run_logged(
        tree,
        &[
            "dracut",
            "--no-hostonly",
            "--reproducible",
            "--no-hostonly-cmdline",
            "--add",
            &add,
            "-f",
            &out,
            &kver,
        ],
        &[("SOURCE_DATE_EPOCH", epoch.to_string())],
        log,
    )
    .with_context(|| format!("building the initramfs with dracut (modules: {add})"))?;
    // dracut skips a module it cannot install with only a warning; a missing module must
    // not go unnoticed.
    let listing = chroot::read(tree, &["lsinitrd", "-m", &out], &[])
        .context("listing the initramfs's dracut modules with lsinitrd")?;
    let have: Vec<&str> = listing.lines().map(str::trim).collect();
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !have.contains(&m.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "dracut left out module(s) {} (see the dracut output in {}); a module usually \
             needs packages in the tree (e.g. ignition needs dracut-network and curl)",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            log.display()
        );
    }
    // Debian's kernel/initramfs in /boot are not used by OSTree (the layout empties /boot).
    Ok(kver)
}
