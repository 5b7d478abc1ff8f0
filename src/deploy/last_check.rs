//! The record of the last automatic update run (`/var/lib/kiln/last-check.json`): written
//! by [`super::agent`], shown by `kiln status`.

use crate::updates::Mode;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the status file in /var/lib/kiln.
pub const LAST_CHECK: &str = "last-check.json";

/// The result of one automatic run, as stored in `last-check.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastCheck {
    /// Seconds since the epoch.
    pub time: u64,
    pub time_utc: String,
    pub mode: Mode,
    /// `off`, `upToDate`, `available`, `staged`, `deployed` or `error`.
    pub result: String,
    pub refspec: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub to_version: Option<String>,
    /// `none`, `requested` (kiln asked systemd to reboot) or `waitingForWindow`.
    pub reboot: String,
    pub error: Option<String>,
    /// Where the policy came from.
    pub policy: Option<String>,
}

/// Where `/var/lib/kiln` of stateroot `os` is: the running system's /var on a booted
/// host, the stateroot's var directory in a sysroot directory.
pub fn state_dir(sysroot: &Path, os: &str) -> PathBuf {
    if super::is_booted_host(sysroot) {
        PathBuf::from("/var/lib/kiln")
    } else {
        sysroot.join("ostree/deploy").join(os).join("var/lib/kiln")
    }
}

/// The last automatic run of stateroot `os`, if any.
pub fn last_check(sysroot: &Path, os: &str) -> Option<LastCheck> {
    let text = std::fs::read_to_string(state_dir(sysroot, os).join(LAST_CHECK)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the record (temp file + rename).
pub(crate) fn save(sysroot: &Path, os: &str, rec: &LastCheck) -> Result<()> {
    let dir = state_dir(sysroot, os);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(rec).context("serializing the check result")?;
    let p = dir.join(LAST_CHECK);
    let tmp = dir.join(format!(".{LAST_CHECK}.tmp"));
    std::fs::write(&tmp, text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("renaming into {}", p.display()))
}
