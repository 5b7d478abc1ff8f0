//! `kiln upgrade` for whatever the next boot follows: an OSTree ref (on a remote or in a
//! local repo, [`super::upgrade`]) or a container image ([`super::image`]).

use super::upgrade::{next_boot, UpgradeOptions, UpgradeOutcome};
use anyhow::Result;
use std::path::Path;

/// Upgrades the next boot of `os` from what its origin names.
pub fn upgrade(path: &Path, os: &str, opts: &UpgradeOptions) -> Result<UpgradeOutcome> {
    super::ensure_initialized(path)?;
    if !opts.check {
        super::require_root(path, "upgrading")?;
    }
    let image = {
        let ro = super::load_readonly(path)?;
        next_boot(&ro, path, os)
            .ok()
            .as_ref()
            .and_then(super::status::image_of)
    };
    match image {
        Some(i) => super::image::upgrade(path, os, &i, opts, opts.containers_dir.as_deref()),
        None => super::upgrade::upgrade(path, os, opts),
    }
}
