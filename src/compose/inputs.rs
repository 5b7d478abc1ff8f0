//! What a compose is built from, gathered before any work (`pipeline::gather_inputs`)
//! and updated by the bootstrap stage ([`super::root`]).

use super::{inputhash, sources};
use crate::recipe::Recipe;
use crate::repo;
use anyhow::Result;
use std::path::PathBuf;

/// Everything the no-change decision and the later stages need, found before any
/// download but InRelease.
pub struct Inputs {
    pub(super) cache_dir: PathBuf,
    pub(super) repo: ostree::Repo,
    pub(super) srcs: Vec<sources::AptSource>,
    /// The mirror state (InRelease hashes), updated to what apt saw at bootstrap.
    pub(super) mirror: Vec<String>,
    pub(super) rjson: serde_json::Value,
    /// The bytes that go into the tree as usr/bin/kiln, and their sha256.
    pub(super) kiln_tree_bin: Vec<u8>,
    pub(super) kiln_sha: String,
    pub(super) kiln_version: String,
    /// The epoch everything is built with.
    pub(super) epoch: u64,
    /// The epoch when known before bootstrap: fixed, or remembered for this package set.
    pub(super) pinned: Option<u64>,
    pub(super) input_hash: String,
    pub(super) previous: Option<String>,
    pub(super) history: Vec<repo::CommitInfo>,
    pub(super) log: PathBuf,
}

impl Inputs {
    /// The input hash of `recipe` with `mirror` as the mirror state.
    pub(super) fn hash(&self, recipe: &Recipe, mirror: &[String]) -> Result<String> {
        inputhash::compute(&inputhash::Inputs {
            recipe_json: &self.rjson,
            overlays: &recipe.overlays,
            postprocess: &recipe.postprocess,
            keyrings: &self
                .srcs
                .iter()
                .filter_map(|s| s.keyring.as_ref().map(|k| k.1.clone()))
                .collect::<Vec<_>>(),
            kiln_sha256: &self.kiln_sha,
            kiln_version: &self.kiln_version,
            fixed_epoch: self.pinned,
            mirror_state: mirror,
        })
    }
}
