//! The boot-counting state on disk and the memory of rejected deployments: what
//! [`super::bootcount`] decides, written. The trial lives in GRUB's environment block on
//! the boot partition ([`super::bootcount::env_path`]); the rejections and the last failed
//! check in `/var/lib/kiln` (shared by every deployment of the stateroot), each written
//! whole (temp file + fsync + rename).

use super::bootcount::{self, Trial};
use super::safety;
use anyhow::{Context, Result};
use ostree::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Written once this boot is marked good ([`super::health`]).
pub const BOOT_GOOD: &str = "/run/kiln/boot-good";
/// The rejected commits, in `/var/lib/kiln`.
pub const REJECTED: &str = "rejected.json";
/// The last failed health check (read back when the rollback entry boots).
pub const LAST_FAILURE: &str = "health-failure.json";

/// Why a boot was not good.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The failing unit or check script, if one is known.
    pub unit: Option<String>,
    /// One line.
    pub reason: String,
    /// The last lines it logged.
    pub log: Vec<String>,
}

/// A failed health check, as the failing boot recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailedBoot {
    /// [`bootcount::key`] of the deployment that failed.
    pub deployment: String,
    pub time: u64,
    pub failure: Failure,
}

/// A deployment abandoned by automatic rollback (or rejected by hand).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub commit: String,
    pub version: Option<String>,
    /// Seconds since the epoch.
    pub time: u64,
    pub time_utc: String,
    #[serde(flatten)]
    pub failure: Failure,
}

/// `rejected.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rejections {
    pub rejected: Vec<Rejection>,
}

impl Rejections {
    pub fn contains(&self, commit: &str) -> bool {
        self.rejected.iter().any(|r| r.commit == commit)
    }
    /// Adds or replaces the record of `r.commit`.
    pub fn add(&mut self, r: Rejection) {
        self.rejected.retain(|x| x.commit != r.commit);
        self.rejected.push(r);
    }
    /// Removes `commit` (or every commit starting with it); true when one was there.
    pub fn forget(&mut self, commit: &str) -> bool {
        let n = self.rejected.len();
        self.rejected.retain(|x| !x.commit.starts_with(commit));
        n != self.rejected.len()
    }
}

/// Writes `data` at `path` whole (temp, fsync, rename, fsync of the directory).
fn write_whole(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("state file without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::write_atomic(path, data)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// The rejected commits of stateroot `os` (none when the file is missing or unreadable).
pub fn rejections(sysroot: &Path, os: &str) -> Rejections {
    let p = super::last_check::state_dir(sysroot, os).join(REJECTED);
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn save_rejections(sysroot: &Path, os: &str, r: &Rejections) -> Result<()> {
    let p = super::last_check::state_dir(sysroot, os).join(REJECTED);
    let text = serde_json::to_string_pretty(r).context("serializing the rejections")?;
    write_whole(&p, text.as_bytes())?;
    safety::point("trial:rejections-written");
    Ok(())
}

/// The last failed boot recorded for stateroot `os`.
pub fn last_failure(sysroot: &Path, os: &str) -> Option<FailedBoot> {
    let p = super::last_check::state_dir(sysroot, os).join(LAST_FAILURE);
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

pub fn save_last_failure(sysroot: &Path, os: &str, f: &FailedBoot) -> Result<()> {
    let p = super::last_check::state_dir(sysroot, os).join(LAST_FAILURE);
    let text = serde_json::to_string_pretty(f).context("serializing the failed check")?;
    write_whole(&p, text.as_bytes())?;
    safety::point("trial:failure-written");
    Ok(())
}

/// The trial in the sysroot's GRUB environment block.
pub fn read(sysroot: &Path) -> Result<Trial> {
    Ok(bootcount::read_env(&bootcount::env_path(sysroot))?.trial())
}

/// Writes the trial and makes it durable for GRUB (which does not replay the ext4
/// journal: /boot is checkpointed on a booted host).
pub fn write(sysroot: &Path, t: &Trial) -> Result<()> {
    let p = bootcount::env_path(sysroot);
    bootcount::write_trial(&p, t).with_context(|| {
        format!(
            "writing the boot-counting state {} (docs/updating.md)",
            p.display()
        )
    })?;
    safety::flush_boot(sysroot);
    safety::point("trial:env-written");
    Ok(())
}

/// The tries a deployment's tree gives a new deployment: `tries` of its
/// `/etc/kiln/updates.toml`, else of `/usr/lib/kiln/updates.toml`, else
/// [`bootcount::DEFAULT_TRIES`].
pub fn tries_of_tree(root: &Path) -> u32 {
    for rel in [
        crate::updates::POLICY_OVERRIDE_PATH,
        crate::updates::POLICY_PATH,
    ] {
        if let Ok(u) = crate::updates::read_policy(&root.join(rel)) {
            if u.tries.is_some() {
                return u.tries();
            }
        }
    }
    bootcount::DEFAULT_TRIES
}

/// Starts the trial of a new deployment `d` (deploy and upgrade call it after the tree is
/// written and before its boot entries become the default; for a staged deployment,
/// before the finalization at shutdown).
pub(crate) fn start(
    sysroot: &ostree::Sysroot,
    d: &ostree::Deployment,
    fallback: bool,
) -> Result<()> {
    let Some(path) = sysroot.path().path() else {
        return Ok(());
    };
    let root = path.join(sysroot.deployment_dirpath(d).as_str());
    let t = bootcount::on_deploy(
        &bootcount::key(d.csum().as_str(), d.deployserial()),
        tries_of_tree(&root),
        fallback,
    );
    write(&path, &t)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rej(c: &str) -> Rejection {
        Rejection {
            commit: c.into(),
            version: None,
            time: 1,
            time_utc: String::new(),
            failure: Failure {
                unit: Some("web.service".into()),
                reason: "web.service is failed".into(),
                log: vec!["boom".into()],
            },
        }
    }

    #[test]
    fn rejections_add_replace_forget_and_persist() {
        let td = tempfile::tempdir().unwrap();
        let os = "kiln";
        assert_eq!(rejections(td.path(), os), Rejections::default());
        let mut r = Rejections::default();
        r.add(rej("aaaa"));
        r.add(rej("bbbb"));
        r.add(rej("aaaa"));
        assert_eq!(r.rejected.len(), 2);
        assert!(r.contains("aaaa") && !r.contains("cccc"));
        save_rejections(td.path(), os, &r).unwrap();
        let back = rejections(td.path(), os);
        assert_eq!(back, r);
        let text = std::fs::read_to_string(
            super::super::last_check::state_dir(td.path(), os).join(REJECTED),
        )
        .unwrap();
        assert!(text.contains("\"unit\": \"web.service\""), "{text}");
        let mut back = back;
        assert!(back.forget("bb"));
        assert!(!back.forget("cc"));
        assert_eq!(back.rejected.len(), 1);
    }

    #[test]
    fn trial_round_trip_and_tries_from_the_tree() {
        let td = tempfile::tempdir().unwrap();
        assert_eq!(read(td.path()).unwrap(), Trial::none());
        write(td.path(), &Trial::new("k.0", 3)).unwrap();
        assert_eq!(read(td.path()).unwrap(), Trial::new("k.0", 3));
        assert_eq!(tries_of_tree(td.path()), bootcount::DEFAULT_TRIES);
        let u = crate::updates::Updates {
            tries: Some(5),
            ..Default::default()
        };
        crate::updates::write_to_tree(&u, td.path()).unwrap();
        assert_eq!(tries_of_tree(td.path()), 5);
    }
}
