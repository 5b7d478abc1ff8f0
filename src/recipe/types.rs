//! The resolved recipe: what compose consumes. Paths here are absolute (resolved against
//! the file that declared them); lists are merged and de-duplicated.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recipe {
    /// Short name of the system (`base`).
    pub name: String,
    /// OSTree ref the commit goes to (`kiln/bookworm/x86_64/base`).
    #[serde(rename = "ref")]
    pub ref_: String,
    /// Version template; `{date}` (YYYYMMDD from the build epoch) and `{serial}` (0, 1, …
    /// among this ref's commits of the same date) are expanded.
    pub version: String,
    /// Debian suite.
    pub suite: String,
    /// Mirror URL; `None` means the host's apt sources.
    pub mirror: Option<String>,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub exclude_packages: Vec<String>,
    /// Globs (relative to the tree root) removed after postprocess.
    pub remove_files: Vec<String>,
    /// Overlay directories, in the order they are copied.
    pub overlays: Vec<PathBuf>,
    /// Scripts run in the tree (chroot, no network), in order.
    pub postprocess: Vec<PathBuf>,
    pub units: Units,
    /// Automatic updates (`[updates]`); off by default.
    #[serde(default)]
    pub updates: crate::updates::Updates,
    /// What makes a boot good (`[health]`).
    #[serde(default)]
    pub health: crate::updates::Health,
    /// Default kernel arguments for deployments of this commit.
    pub kernel_args: Vec<String>,
    /// Extra dracut modules added to the initramfs (besides `ostree`).
    pub dracut_modules: Vec<String>,
    /// Free-form commit metadata (`kiln.meta.KEY`).
    pub metadata: BTreeMap<String, String>,
    /// Fixed build epoch, unless `SOURCE_DATE_EPOCH` overrides it.
    pub source_date_epoch: Option<u64>,
    /// Extra apt repositories (`[[repositories]]`), besides the Debian archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<Repository>,
    /// Every file that contributed to this recipe (main file, includes, fragments), in
    /// the order they were merged.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Units {
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    pub mask: Vec<String>,
}

/// An extra apt repository (a vendor's): one `deb` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Repository {
    pub uri: String,
    /// A suite, or a flat repository's directory ending in `/` (`./`).
    pub suite: String,
    /// Empty for a flat repository.
    #[serde(default)]
    pub components: Vec<String>,
    /// The keyring the repository's `InRelease` must be signed with (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<PathBuf>,
    /// No signature check at all (`[trusted=yes]`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted: bool,
}

impl Repository {
    pub fn is_flat(&self) -> bool {
        self.suite.ends_with('/')
    }
}

impl Recipe {
    /// What is allowed but unsafe, to be shown wherever the recipe is used.
    pub fn warnings(&self) -> Vec<String> {
        self.repositories
            .iter()
            .filter(|r| r.trusted)
            .map(|r| {
                format!(
                    "repository {} {} is trusted = true: its packages are installed without \
                     any signature check",
                    r.uri, r.suite
                )
            })
            .collect()
    }
}
