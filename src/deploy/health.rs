//! `kiln health check`, what `kiln-health.service` runs at every boot: judges the boot
//! (multi-user reached, the `[health]` required units active, every check script in
//! `/usr/lib/kiln/health.d/` and `/etc/kiln/health.d/` exiting 0, within the timeout) and
//! carries out [`super::bootcount`]'s verdict: mark the boot good, reboot so GRUB counts,
//! or reject the deployment and roll back. Contract (others order after the service):
//! it exits 0 only once this boot is marked good, and `/run/kiln/boot-good` then exists.

use super::bootcount::{self, Before, Facts, Trial, Verdict};
use super::trial::{self, FailedBoot, Failure, Rejection};
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use super::trial::BOOT_GOOD;
/// Check scripts shipped in the image, then the administrator's.
pub const CHECK_DIRS: [&str; 2] = ["/usr/lib/kiln/health.d", "/etc/kiln/health.d"];
/// Lines of log kept with a failure.
const LOG_LINES: usize = 20;

/// The boot's facts from the booted sysroot (`/`). `None` when nothing is booted from it.
fn facts(sysroot: &Path) -> Result<Option<(Facts, super::status::Host)>> {
    let host = super::ops::status(sysroot)?;
    let Some(b) = host.status.booted.clone() else {
        return Ok(None);
    };
    let first = host.status.deployments.iter().find(|d| !d.staged);
    let Some(d) = first else {
        return Ok(None);
    };
    let f = Facts {
        booted: bootcount::key(&b.checksum, b.deploy_serial),
        default: bootcount::key(&d.checksum, d.deploy_serial),
        has_rollback: host.status.deployments.iter().filter(|d| !d.staged).count() > 1,
        trial: trial::read(sysroot)?,
    };
    Ok(Some((f, host)))
}

/// The last `n` journal lines of `unit` in this boot.
fn journal_tail(unit: &str, n: usize) -> Vec<String> {
    Cmd::new("journalctl")
        .args(["-b", "--no-pager", "-o", "cat", "-n"])
        .arg(n.to_string())
        .arg("-u")
        .arg(unit)
        .read()
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

fn unit_state(unit: &str) -> String {
    // `systemctl is-active` exits non-zero for every state but active; `show` does not.
    Cmd::new("systemctl")
        .args(["show", "--property=ActiveState", "--value", unit])
        .read()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn unit_failure(unit: &str, state: &str) -> Failure {
    Failure {
        unit: Some(unit.to_string()),
        reason: format!("{unit} is {state}"),
        log: journal_tail(unit, LOG_LINES),
    }
}

/// Waits until multi-user.target and every unit in `units` are active; fails on the first
/// one that failed, or at `deadline`.
fn wait_units(units: &[String], deadline: Instant) -> Result<(), Failure> {
    let mut all = vec!["multi-user.target".to_string()];
    all.extend(units.iter().cloned());
    loop {
        let mut waiting = None;
        for u in &all {
            let st = unit_state(u);
            match st.as_str() {
                "active" => {}
                "failed" => return Err(unit_failure(u, &st)),
                "inactive" if u != "multi-user.target" && Instant::now() >= deadline => {
                    return Err(unit_failure(u, &st))
                }
                _ => waiting = Some((u.clone(), st)),
            }
        }
        let Some((u, st)) = waiting else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(unit_failure(&u, &format!("{st} (timed out)")));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The check scripts: executables in [`CHECK_DIRS`] by file name (a script in /etc
/// replaces the one of the same name in /usr/lib), in name order.
pub fn check_scripts(dirs: &[&Path]) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut by_name = std::collections::BTreeMap::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let exec = std::fs::metadata(&p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if exec {
                by_name.insert(e.file_name(), p);
            }
        }
    }
    by_name.into_values().collect()
}

/// Runs each script (with what is left of the timeout); the first failure.
fn run_scripts(scripts: &[PathBuf], deadline: Instant) -> Result<(), Failure> {
    for s in scripts {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let r = Cmd::new("timeout").arg(left.to_string()).arg(s).run();
        if let Err(e) = r {
            let text = format!("{e:#}");
            let log: Vec<String> = text.lines().map(String::from).collect();
            let from = log.len().saturating_sub(LOG_LINES);
            return Err(Failure {
                unit: Some(s.display().to_string()),
                reason: format!("health check {} failed", s.display()),
                log: log[from..].to_vec(),
            });
        }
    }
    Ok(())
}

/// Judges this boot's health: `Ok` when good.
pub fn judge_boot(health: &crate::updates::Health) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(health.timeout);
    wait_units(&health.required_units, deadline)?;
    let dirs: Vec<&Path> = CHECK_DIRS.iter().map(Path::new).collect();
    run_scripts(&check_scripts(&dirs), deadline)
}

fn reject(
    sysroot: &Path,
    os: &str,
    host: &super::status::Host,
    key: &str,
    f: Failure,
) -> Result<()> {
    let d = host
        .status
        .deployments
        .iter()
        .find(|d| bootcount::key(&d.checksum, d.deploy_serial) == key);
    let Some(d) = d else { return Ok(()) };
    let same_commit_elsewhere = host
        .status
        .deployments
        .iter()
        .any(|o| !o.staged && o.checksum == d.checksum && o.deploy_serial != d.deploy_serial);
    if same_commit_elsewhere {
        // Another deployment of the same commit stays (a kernel-argument change went
        // wrong): not the commit's fault; nothing to remember.
        return Ok(());
    }
    let mut r = trial::rejections(sysroot, os);
    let now = trial::now();
    r.add(Rejection {
        commit: d.checksum.clone(),
        version: d.version.clone(),
        time: now,
        time_utc: super::status::format_utc(now),
        failure: f,
    });
    trial::save_rejections(sysroot, os, &r)
}

/// What the rollback entry booted by GRUB says about the abandoned deployment.
fn abandoned_reason(sysroot: &Path, os: &str, key: &str, tries: u32) -> Failure {
    match trial::last_failure(sysroot, os) {
        Some(f) if f.deployment == key => f.failure,
        _ => Failure {
            unit: None,
            reason: format!(
                "it did not reach a good boot in {tries} tries (kernel panic, initramfs \
                 failure, hang or power loss: no health check finished)"
            ),
            log: Vec::new(),
        },
    }
}

fn reboot() -> Result<()> {
    Cmd::new("systemctl")
        .arg("reboot")
        .run()
        .context("asking systemd to reboot")?;
    Ok(())
}

fn mark_good_file() -> Result<()> {
    let p = Path::new(BOOT_GOOD);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(p, format!("{}\n", trial::now())).with_context(|| format!("writing {BOOT_GOOD}"))
}

/// Marks the booted deployment good: its trial ends, a rejection of its commit is
/// forgotten, [`BOOT_GOOD`] is written.
pub fn mark_good(sysroot: &Path, os: &str) -> Result<()> {
    let Some((f, host)) = facts(sysroot)? else {
        bail!(
            "no booted deployment in {}: nothing to mark good",
            sysroot.display()
        );
    };
    if f.trial.pending.is_some()
        && (f.trial.is_pending(&f.booted) || !f.trial.is_pending(&f.default))
    {
        let _l = super::Locked::open(sysroot)?;
        trial::write(sysroot, &Trial::none())?;
    }
    if let Some(b) = &host.status.booted {
        let mut r = trial::rejections(sysroot, os);
        if r.forget(&b.checksum) {
            trial::save_rejections(sysroot, os, &r)?;
        }
    }
    mark_good_file()
}

/// The outcome of `kiln health check`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckOutcome {
    pub good: bool,
    /// `good`, `reboot`, `rollback` or `failed`.
    pub verdict: String,
    /// A deployment abandoned before the checks ran (GRUB booted the rollback entry).
    pub abandoned: Option<String>,
    pub failure: Option<Failure>,
}

/// `kiln health check`: the whole boot judgement (see the module doc).
pub fn check(sysroot: &Path, os: &str, health: &crate::updates::Health) -> Result<CheckOutcome> {
    let Some((f, host)) = facts(sysroot)? else {
        bail!(
            "no booted deployment in {}: nothing to judge",
            sysroot.display()
        );
    };
    let mut abandoned = None;
    let f = match bootcount::before_checks(&f) {
        Before::Nothing => f,
        Before::ClearStale => {
            let _l = super::Locked::open(sysroot)?;
            trial::write(sysroot, &Trial::none())?;
            Facts {
                trial: Trial::none(),
                ..f
            }
        }
        Before::Abandon { rejected } => {
            let why = abandoned_reason(sysroot, os, &rejected, f.trial.tries.unwrap_or(0));
            reject(sysroot, os, &host, &rejected, why)?;
            super::ops::rollback(sysroot)?;
            trial::write(sysroot, &Trial::none())?;
            abandoned = Some(rejected);
            let Some((f, _)) = facts(sysroot)? else {
                bail!("the booted deployment vanished");
            };
            f
        }
    };
    let result = judge_boot(health);
    let verdict = bootcount::judge(&f, result.is_ok());
    let failure = result.err();
    let name = match &verdict {
        Verdict::Good { clear } => {
            if *clear {
                mark_good(sysroot, os)?;
            } else {
                mark_good_file()?;
            }
            "good"
        }
        Verdict::Reboot => {
            let fb = FailedBoot {
                deployment: f.booted.clone(),
                time: trial::now(),
                failure: failure.clone().unwrap_or_default(),
            };
            trial::save_last_failure(sysroot, os, &fb)?;
            reboot()?;
            "reboot"
        }
        Verdict::RejectAndRollback => {
            reject(
                sysroot,
                os,
                &host,
                &f.booted,
                failure.clone().unwrap_or_default(),
            )?;
            super::ops::rollback(sysroot)?;
            trial::write(sysroot, &Trial::none())?;
            reboot()?;
            "rollback"
        }
        Verdict::Fail => "failed",
    };
    Ok(CheckOutcome {
        good: matches!(verdict, Verdict::Good { .. }),
        verdict: name.into(),
        abandoned,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_name_etc_replaces_usr() {
        use std::os::unix::fs::PermissionsExt;
        let td = tempfile::tempdir().unwrap();
        let (usr, etc) = (td.path().join("usr"), td.path().join("etc"));
        for (d, n, mode) in [
            (&usr, "20-b", 0o755),
            (&usr, "10-a", 0o755),
            (&usr, "30-notexec", 0o644),
            (&etc, "20-b", 0o755),
        ] {
            std::fs::create_dir_all(d).unwrap();
            let p = d.join(n);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let s = check_scripts(&[&usr, &etc, &td.path().join("missing")]);
        assert_eq!(s, vec![usr.join("10-a"), etc.join("20-b")]);
    }

    #[test]
    fn a_failing_script_is_named_with_its_output() {
        use std::os::unix::fs::PermissionsExt;
        let td = tempfile::tempdir().unwrap();
        let (ok, bad) = (td.path().join("ok"), td.path().join("bad"));
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::write(&bad, "#!/bin/sh\necho disk full >&2\nexit 3\n").unwrap();
        for p in [&ok, &bad] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let later = Instant::now() + Duration::from_secs(30);
        assert_eq!(run_scripts(std::slice::from_ref(&ok), later), Ok(()));
        let f = run_scripts(&[ok, bad.clone()], later).unwrap_err();
        assert_eq!(f.unit.as_deref(), Some(bad.to_str().unwrap()));
        assert!(f.log.iter().any(|l| l.contains("disk full")), "{f:?}");
    }
}
