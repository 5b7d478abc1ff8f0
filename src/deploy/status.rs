//! `kiln status`: the deployments of a sysroot as a typed, serializable `Host`
//! (schema `kiln/v1`, documented in docs/updating.md).

use anyhow::Result;

use serde::Serialize;
use std::path::Path;

/// Schema identifier of `kiln status --json`. Bump on incompatible changes.
pub const API_VERSION: &str = "kiln/v1";

/// The whole answer of `kiln status --json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub spec: HostSpec,
    pub status: HostStatus,
}

/// What the sysroot is set to follow: the next boot's stateroot, origin and kernel args.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    pub sysroot: String,
    pub stateroot: Option<String>,
    pub refspec: Option<String>,
    pub kernel_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// The deployment the running system booted (only when the sysroot is `/` on a
    /// booted OSTree system).
    pub booted: Option<DeploymentStatus>,
    /// A deployment staged to be finalized at shutdown.
    pub staged: Option<DeploymentStatus>,
    /// The first deployment in boot order (what boots next unless one is staged).
    pub default: Option<DeploymentStatus>,
    /// The deployment `kiln rollback` would make the next boot.
    pub rollback: Option<DeploymentStatus>,
    /// Every deployment, in boot order; `index` is what `kiln pin N` takes.
    pub deployments: Vec<DeploymentStatus>,
    /// The last run of `kiln upgrade --auto` (from /var/lib/kiln/last-check.json).
    pub last_update_check: Option<super::last_check::LastCheck>,
    /// Commits abandoned by automatic rollback, with the reason (from
    /// /var/lib/kiln/rejected.json); the update agent never stages them again.
    pub rejected: Vec<super::trial::Rejection>,
    /// On a booted host: whether this boot was marked good (`/run/kiln/boot-good`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_good: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    pub index: usize,
    pub stateroot: String,
    pub checksum: String,
    pub deploy_serial: i32,
    pub version: Option<String>,
    /// The origin's `refspec` (`[remote:]ref`, or a checksum for a fixed commit).
    pub refspec: Option<String>,
    /// Commit timestamp, seconds since the epoch (UTC).
    pub timestamp: Option<u64>,
    pub booted: bool,
    pub staged: bool,
    /// Used on the next boot and not the running deployment.
    pub pending: bool,
    pub default: bool,
    pub rollback: bool,
    pub pinned: bool,
    /// Kernel arguments of its boot entry, without libostree's own `ostree=`.
    pub kernel_args: Vec<String>,
    /// Deployment directory, relative to the sysroot.
    pub path: String,
    /// Boots left before GRUB falls back, while the deployment is on trial (not yet
    /// marked good); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
}

/// Builds the status of the sysroot at `path` from an already loaded sysroot.
pub(crate) fn host_from(sysroot: &ostree::Sysroot, path: &Path) -> Result<Host> {
    let deployments = sysroot.deployments();
    let booted = sysroot.booted_deployment();
    let roles = Roles::of(&deployments, booted.as_ref());
    let repo = sysroot.repo();
    let trial = super::trial::read(path).unwrap_or_default();
    let mut list = Vec::with_capacity(deployments.len());
    for (i, d) in deployments.iter().enumerate() {
        let csum = d.csum().to_string();
        let (version, timestamp) = match crate::repo::read_commit(&repo, &csum) {
            Ok(info) => (info.version, Some(info.timestamp)),
            Err(_) => (None, None),
        };
        let is_booted = booted.as_ref().map(|b| b.equal(d)).unwrap_or(false);
        list.push(DeploymentStatus {
            index: i,
            stateroot: d.osname().to_string(),
            checksum: csum,
            deploy_serial: d.deployserial(),
            version,
            refspec: refspec_of(d).or_else(|| image_of(d)),
            timestamp,
            booted: is_booted,
            staged: d.is_staged(),
            pending: roles.next_boot == Some(i) && !is_booted,
            default: roles.default == Some(i),
            rollback: roles.rollback == Some(i),
            pinned: d.is_pinned(),
            kernel_args: kargs_of(d),
            path: sysroot.deployment_dirpath(d).to_string(),
            tries_left: trial
                .is_pending(&super::bootcount::key(d.csum().as_str(), d.deployserial()))
                .then(|| trial.left()),
        });
    }
    let pick = |i: Option<usize>| i.map(|i| list[i].clone());
    let next = roles.next_boot.map(|i| &list[i]);
    let spec = HostSpec {
        sysroot: path.display().to_string(),
        stateroot: next.map(|d| d.stateroot.clone()),
        refspec: next.and_then(|d| d.refspec.clone()),
        kernel_args: next.map(|d| d.kernel_args.clone()).unwrap_or_default(),
    };
    let status = HostStatus {
        booted: list.iter().find(|d| d.booted).cloned(),
        staged: list.iter().find(|d| d.staged).cloned(),
        default: pick(roles.default),
        rollback: pick(roles.rollback),
        last_update_check: spec
            .stateroot
            .as_deref()
            .and_then(|os| super::last_check::last_check(path, os)),
        rejected: spec
            .stateroot
            .as_deref()
            .map(|os| super::trial::rejections(path, os).rejected)
            .unwrap_or_default(),
        boot_good: super::is_booted_host(path).then(|| Path::new(super::trial::BOOT_GOOD).exists()),
        deployments: list,
    };
    Ok(Host {
        api_version: API_VERSION,
        kind: "Host",
        spec,
        status,
    })
}

/// Positions (in `sysroot.deployments()`) of the deployments with a role.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Roles {
    /// First non-staged deployment.
    pub default: Option<usize>,
    /// Staged deployment if any, else the default.
    pub next_boot: Option<usize>,
    /// What `kiln rollback` makes the next boot: with a staged deployment, the default
    /// (the staged one is dropped); otherwise the second non-staged deployment of the
    /// default's stateroot.
    pub rollback: Option<usize>,
}

impl Roles {
    pub(crate) fn of(
        deployments: &[ostree::Deployment],
        _booted: Option<&ostree::Deployment>,
    ) -> Roles {
        let staged = deployments.iter().position(|d| d.is_staged());
        let default = deployments.iter().position(|d| !d.is_staged());
        let rollback = match (staged, default) {
            (Some(_), Some(d)) => Some(d),
            (None, Some(d)) => {
                let os = deployments[d].osname();
                deployments
                    .iter()
                    .enumerate()
                    .skip(d + 1)
                    .find(|(_, x)| !x.is_staged() && x.osname() == os)
                    .map(|(i, _)| i)
            }
            _ => None,
        };
        Roles {
            default,
            next_boot: staged.or(default),
            rollback,
        }
    }
}

/// The origin's refspec of a deployment.
pub(crate) fn refspec_of(d: &ostree::Deployment) -> Option<String> {
    d.origin()
        .and_then(|o| o.string("origin", "refspec").ok())
        .map(|s| s.to_string())
}

/// The origin key naming the container image a deployment follows (ostree-ext's).
pub const IMAGE_ORIGIN_KEY: &str = "container-image-reference";

/// The image a deployment follows, if any.
pub fn image_of(d: &ostree::Deployment) -> Option<String> {
    d.origin()
        .and_then(|o| o.string("origin", IMAGE_ORIGIN_KEY).ok())
        .map(|s| s.to_string())
}

/// Kernel arguments of a deployment's boot entry, without `ostree=`.
pub(crate) fn kargs_of(d: &ostree::Deployment) -> Vec<String> {
    d.bootconfig()
        .and_then(|b| b.get("options"))
        .map(|o| {
            o.split_whitespace()
                .filter(|a| !a.starts_with("ostree="))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix timestamp.
pub fn format_utc(ts: u64) -> String {
    let days = (ts / 86400) as i64;
    let secs = ts % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Human-readable status, one block per deployment.
pub fn render_text(host: &Host) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let deps = &host.status.deployments;
    if deps.is_empty() {
        let _ = writeln!(s, "No deployments in {}.", host.spec.sysroot);
        return s;
    }
    let _ = writeln!(s, "Deployments in {} (next boot first):", host.spec.sysroot);
    for d in deps {
        let mut marks = Vec::new();
        for (on, name) in [
            (d.staged, "staged"),
            (d.default, "default"),
            (d.booted, "booted"),
            (d.pending, "pending"),
            (d.rollback, "rollback"),
            (d.pinned, "pinned"),
        ] {
            if on {
                marks.push(name);
            }
        }
        let bullet = if d.booted { '●' } else { ' ' };
        let _ = writeln!(
            s,
            "{bullet} {}: {} {}{}",
            d.index,
            d.stateroot,
            d.version.as_deref().unwrap_or("(no version)"),
            if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            }
        );
        let _ = writeln!(s, "      commit: {}.{}", d.checksum, d.deploy_serial);
        let _ = writeln!(
            s,
            "      origin: {}",
            d.refspec.as_deref().unwrap_or("(none)")
        );
        if let Some(ts) = d.timestamp {
            let _ = writeln!(s, "   timestamp: {}", format_utc(ts));
        }
        let _ = writeln!(s, "       kargs: {}", d.kernel_args.join(" "));
        if let Some(t) = d.tries_left {
            let _ = writeln!(s, "       trial: {t} boot(s) left before falling back");
        }
    }
    if let Some(g) = host.status.boot_good {
        let _ = writeln!(
            s,
            "This boot: {}",
            if g { "good" } else { "not (yet) marked good" }
        );
    }
    for r in &host.status.rejected {
        let _ = writeln!(
            s,
            "Rejected: {} {} on {}: {}",
            r.commit,
            r.version.as_deref().unwrap_or("(no version)"),
            r.time_utc,
            r.failure.reason
        );
        for l in r.failure.log.iter().rev().take(5).rev() {
            let _ = writeln!(s, "    {l}");
        }
    }
    if let Some(c) = &host.status.last_update_check {
        let _ = writeln!(
            s,
            "Last automatic update check: {} (mode {:?}): {}{}{}",
            c.time_utc,
            c.mode,
            c.result,
            c.to_version
                .as_deref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default(),
            c.error
                .as_deref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
