//! The "bootstrap" stage: the Debian root of a compose, in the cheapest way that gives the
//! tree a from-scratch bootstrap gives.
//!
//! 1. **Cached**: the tree cache holds a root with the same key (packages, sources,
//!    mirror state, epoch, mmdebstrap, hooks): a hardlink checkout of it.
//! 2. **Packages**: a cached root with the same base (everything but the package
//!    selection and the epoch) differs by a few packages, each safe to install or remove
//!    on its own: only those are installed or removed ([`super::delta`]). A root of the
//!    same family (only the recipe's extra repositories differ) is upgraded there too,
//!    where that equals a fresh bootstrap.
//! 3. **Bootstrap**: mmdebstrap from nothing (with the cached `.deb`s), and the root cached.
//!
//! Whatever made it, the new root is saved into the tree cache and checked out by hard
//! links, so the later stages always run on the same kind of tree.

use super::checks::{check_excluded, check_no_build_paths, check_tree_free_of};
use super::inputs::Inputs;
use super::scratch::Scratch;
use super::treecache::{Checkout, RootInfo, TreeCache};
use super::{bootstrap, delta, epoch as epochs, sources};
use crate::progress::Progress;
use crate::recipe::Recipe;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// Which stages' results came from the cache (`"reused"` in `--json`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reused {
    /// The bootstrapped root (`CACHE/trees`, [`super::treecache`]), same key.
    pub bootstrap: bool,
    /// How the root was made: `"cached"` (same key), `"packages"` (the closest cached
    /// root with only the changed packages installed and removed, [`super::delta`]) or
    /// `"bootstrap"` (mmdebstrap from nothing).
    pub root: &'static str,
    /// For `"packages"`: what changed against which cached root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<PackageDelta>,
    /// Per stage that was not reused, why (`bootstrap`, `initramfs`).
    pub why_not: std::collections::BTreeMap<String, String>,
    /// The initramfs (`CACHE/initramfs`), every input of dracut unchanged.
    pub initramfs: bool,
    /// When dracut ran again although an image built with the same options was kept: the
    /// first of its recorded inputs found changed (a path in the tree).
    pub initramfs_changed: Option<String>,
    /// Files of the tree hard-linked from the tree cache (`CACHE/trees`) instead of
    /// installed or copied.
    pub files_linked: u64,
    /// Files the commit took by checksum from libostree's dev/ino cache, neither read nor
    /// re-hashed (unchanged since the checkout).
    pub files_not_rehashed: u64,
}

/// A root made from a cached one by installing and removing packages.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PackageDelta {
    /// The cached root's key.
    pub from: String,
    /// `name=version` installed (new or upgraded), and names removed, as apt planned
    /// them.
    pub installed: Vec<String>,
    /// `name=old->new` of the installed that were upgraded: the cached root was built
    /// with other contents of the recipe's extra repositories.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgraded: Vec<String>,
    pub removed: Vec<String>,
}

/// The root at `tree` (cached, from a cached root by package changes, or bootstrapped),
/// with the epoch learned when nothing fixes it, and the mirror state and input hash
/// updated to what apt saw. Returns the cache, the checkout and what was reused.
pub(super) fn bootstrap_tree(
    recipe: &Recipe,
    inputs: &mut Inputs,
    work: &Path,
    tree: &Path,
    p: &mut Progress,
) -> Result<(TreeCache, Checkout, Reused)> {
    let cache_dir = inputs.cache_dir.clone();
    let cache = bootstrap::CacheDirs::new(&cache_dir)?;
    let s = p.stage("bootstrap");
    let (tc, dropped) = TreeCache::open(&cache_dir)?;
    let base = bootstrap::base_key(recipe, &inputs.srcs, &inputs.mirror)?;
    let mut reuse = Reused::default();
    let mut notes: Vec<String> = dropped.into_iter().collect();
    let mut co = None;
    if let Some(e) = inputs.pinned {
        let k = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, Some(e))?;
        co = tc.checkout(&k, tree)?;
        if co.is_some() {
            // A root cached by an earlier kiln has no record yet: without one, package
            // changes could never start from it.
            tc.ensure_info(&RootInfo {
                key: k,
                base: base.clone(),
                family: Some(bootstrap::family_key(recipe, &inputs.srcs, &inputs.mirror)?),
                epoch: e,
                packages: recipe.packages.clone(),
                exclude: recipe.exclude_packages.clone(),
            })?;
        }
    }
    if co.is_some() {
        reuse.bootstrap = true;
        reuse.root = "cached";
    } else {
        match from_cached_root(recipe, inputs, &tc, &base, &cache, work, tree)? {
            Ok((c, d)) => {
                notes.push(format!(
                    "bootstrap: built from a cached root by installing {} and removing {} \
                     package(s) (installed: {}; removed: {}{})",
                    d.installed.len(),
                    d.removed.len(),
                    d.installed.join(" "),
                    d.removed.join(" "),
                    if d.upgraded.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; upgraded, the repositories changed: {}",
                            d.upgraded.join(" ")
                        )
                    }
                ));
                reuse.root = "packages";
                reuse.packages = Some(d);
                co = Some(c);
            }
            Err(why) => {
                notes.push(format!("bootstrap: from scratch: {why}"));
                reuse.why_not.insert("bootstrap".into(), why);
                reuse.root = "bootstrap";
                let (c, n) = full(recipe, inputs, &tc, &base, &cache, work, tree)?;
                reuse.bootstrap = n.is_none();
                if reuse.bootstrap {
                    reuse.root = "cached";
                }
                notes.extend(n);
                co = Some(c);
            }
        }
    }
    let co = co.ok_or_else(|| anyhow!("the tree cache lost the root it just saved"))?;
    s.done();
    for n in notes {
        p.note(&n);
    }
    if reuse.bootstrap {
        p.note(&format!(
            "bootstrap: reused the cached root (same packages, sources and mirror state), \
             {} files hard-linked",
            co.files()
        ));
    }
    Ok((tc, co, reuse))
}

/// The root built from the closest cached root by package changes, saved and checked
/// out; `Err(reason)` when that is not equal by construction to a fresh bootstrap.
#[allow(clippy::too_many_arguments)]
fn from_cached_root(
    recipe: &Recipe,
    inputs: &mut Inputs,
    tc: &TreeCache,
    base: &str,
    cache: &bootstrap::CacheDirs,
    work: &Path,
    tree: &Path,
) -> Result<std::result::Result<(Checkout, PackageDelta), String>> {
    let family = bootstrap::family_key(recipe, &inputs.srcs, &inputs.mirror)?;
    let req = delta::Request {
        base,
        family: &family,
        mirror: &inputs.mirror,
        sources: &inputs.srcs,
        packages: &recipe.packages,
        exclude: &recipe.exclude_packages,
        epoch: inputs.pinned,
        debs: &cache.debs,
        work,
        tree,
        log: &inputs.log,
    };
    let d = match delta::build(tc, &req)? {
        delta::Outcome::Done(d) => d,
        delta::Outcome::Fallback(why) => return Ok(Err(why)),
    };
    if inputs.pinned.is_none() {
        let ukey = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, None)?;
        epochs::remember(&inputs.cache_dir, &ukey, d.epoch)?;
        inputs.epoch = d.epoch;
        inputs.pinned = Some(d.epoch);
        inputs.input_hash = inputs.hash(recipe, &inputs.mirror)?;
    }
    check_excluded(recipe, tree)?;
    // The files the cached root holds were searched when it was saved.
    check_no_build_paths(tree, work, Some(&d.co))?;
    let key = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, inputs.pinned)?;
    let info = RootInfo {
        key: key.clone(),
        base: base.to_string(),
        family: Some(family.clone()),
        epoch: inputs.epoch,
        packages: recipe.packages.clone(),
        exclude: recipe.exclude_packages.clone(),
    };
    tc.save(&info, tree, Some(&d.co))?;
    drop(d.co);
    let co = tc
        .checkout(&key, tree)?
        .ok_or_else(|| anyhow!("the tree cache lost the root it just saved"))?;
    Ok(Ok((
        co,
        PackageDelta {
            from: d.from.key.clone(),
            installed: d.installed,
            upgraded: d.upgraded,
            removed: d.removed,
        },
    )))
}

/// The root bootstrapped with mmdebstrap (after learning the epoch when nothing fixes
/// it), or the cached one when the learned epoch's key is cached. Returns the checkout
/// and, when it bootstrapped, a note (`None`: the cached root was used).
fn full(
    recipe: &Recipe,
    inputs: &mut Inputs,
    tc: &TreeCache,
    base: &str,
    cache: &bootstrap::CacheDirs,
    work: &Path,
    tree: &Path,
) -> Result<(Checkout, Option<String>)> {
    let log = inputs.log.clone();
    let mut note = None;
    if inputs.pinned.is_none() {
        note = Some(learn_epoch(recipe, inputs, cache, work)?);
    }
    let fixed_epoch = inputs.pinned;
    let bkey = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, fixed_epoch)?;
    if let Some(co) = tc.checkout(&bkey, tree)? {
        return Ok((co, None));
    }
    // Built in memory when there is room, then copied into the tree cache and checked
    // out at `tree` like a cached root.
    let scratch = Scratch::for_bootstrap()?;
    let root = scratch.path("tree", tree);
    let place = scratch.describe();
    bootstrap::bootstrap(recipe, &inputs.srcs, &root, cache, inputs.epoch, work, &log)
        .with_context(|| format!("full log: {}", log.display()))?;
    // apt may have seen a newer mirror state than the InRelease files fetched above.
    let seen = sources::mirror_state_from_lists(&inputs.srcs, &root.join("var/lib/apt/lists"))?;
    let mut base = base.to_string();
    if seen != inputs.mirror {
        inputs.input_hash = inputs.hash(recipe, &seen)?;
        inputs.mirror = seen;
        base = bootstrap::base_key(recipe, &inputs.srcs, &inputs.mirror)?;
    }
    check_excluded(recipe, &root)?;
    let k = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, fixed_epoch)?;
    // Searched once here; later composes search only the files they add.
    let mut build_paths = vec![work];
    build_paths.extend(scratch.dir());
    check_tree_free_of(&root, &build_paths)?;
    let info = RootInfo {
        key: k.clone(),
        base,
        family: Some(bootstrap::family_key(recipe, &inputs.srcs, &inputs.mirror)?),
        epoch: inputs.epoch,
        packages: recipe.packages.clone(),
        exclude: recipe.exclude_packages.clone(),
    };
    tc.save(&info, &root, None)?;
    drop(scratch);
    let co = tc
        .checkout(&k, tree)?
        .ok_or_else(|| anyhow!("the tree cache lost the root it just saved"))?;
    Ok((
        co,
        Some(note.unwrap_or_else(|| format!("bootstrap: mmdebstrap ran {place}"))),
    ))
}

/// Neither SOURCE_DATE_EPOCH nor the recipe fixes the epoch: installs once to learn the
/// newest changelog date, remembered for next time (docs/reproducible.md). Sets the epoch
/// (and the input hash) when one is found; returns the note to show.
fn learn_epoch(
    recipe: &Recipe,
    inputs: &mut Inputs,
    cache: &bootstrap::CacheDirs,
    work: &Path,
) -> Result<String> {
    let log = &inputs.log;
    let scratch = Scratch::for_bootstrap()?;
    let probe = scratch.path("probe", &work.join("probe"));
    bootstrap::bootstrap(recipe, &inputs.srcs, &probe, cache, inputs.epoch, work, log)
        .with_context(|| format!("full log: {}", log.display()))?;
    let learned = epochs::newest_changelog(&probe)?;
    super::overlay::remove_any(&probe)?;
    drop(scratch);
    let Some(e) = learned else {
        return Ok(
            "no package changelog has a date: building with the current time, so \
                   this build is not reproducible (set SOURCE_DATE_EPOCH)"
                .to_string(),
        );
    };
    let ukey = bootstrap::key(recipe, &inputs.srcs, &inputs.mirror, None)?;
    epochs::remember(&inputs.cache_dir, &ukey, e)?;
    inputs.epoch = e;
    inputs.pinned = Some(e);
    inputs.input_hash = inputs.hash(recipe, &inputs.mirror)?;
    Ok(format!(
        "build epoch: {e}, the newest changelog date of the installed packages \
         (set SOURCE_DATE_EPOCH to choose it)"
    ))
}
