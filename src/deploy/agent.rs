//! `kiln upgrade --auto`, which `kiln-upgrade.service` runs from `kiln-upgrade.timer`:
//! follows the deployment's update policy ([`crate::updates`]): check, stage or apply the
//! newest commit of the booted ref, reboot as the policy says, and record the result in
//! `/var/lib/kiln/last-check.json` ([`super::last_check`]) for `kiln status`.

use super::follow::upgrade;
use super::last_check::{save, LastCheck};
use super::ops;
use super::upgrade::{UpgradeOptions, UpgradeOutcome};
use crate::updates::{read_policy, Mode, Reboot, Updates, POLICY_OVERRIDE_PATH, POLICY_PATH};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The policy of the running (booted) deployment, else of the next boot's: the
/// deployment's `/etc/kiln/updates.toml` when present, else its `/usr/lib/kiln/updates.toml`.
fn find_policy(sysroot: &Path, os: &str) -> Result<Option<(PathBuf, Updates)>> {
    let host = ops::status(sysroot)?;
    let d = host
        .status
        .booted
        .clone()
        .or(host.status.default.clone())
        .filter(|d| d.stateroot == os)
        .or_else(|| {
            host.status
                .deployments
                .iter()
                .find(|d| d.stateroot == os && !d.staged)
                .cloned()
        });
    let Some(d) = d else {
        bail!(
            "no deployment of stateroot {os:?} in {}: nothing to update",
            sysroot.display()
        );
    };
    let root = if d.booted {
        PathBuf::from("/")
    } else {
        sysroot.join(&d.path)
    };
    for rel in [POLICY_OVERRIDE_PATH, POLICY_PATH] {
        let p = root.join(rel);
        if p.is_file() {
            return Ok(Some((p.clone(), read_policy(&p)?)));
        }
    }
    Ok(None)
}

/// `kiln upgrade --auto`: follows the deployment's policy, records the result, and
/// reboots when the policy says so (only on a booted host). `now` is seconds since the
/// epoch (the clock, except in tests).
pub fn run_auto(sysroot: &Path, os: &str, now: u64) -> Result<LastCheck> {
    let policy = find_policy(sysroot, os);
    let mut rec = LastCheck {
        time: now,
        time_utc: super::status::format_utc(now),
        mode: Mode::Off,
        result: "off".into(),
        refspec: None,
        from: None,
        to: None,
        to_version: None,
        reboot: "none".into(),
        error: None,
        policy: None,
    };
    let (path, pol) = match policy {
        Ok(Some(x)) => x,
        Ok(None) => {
            rec.error =
                Some("the deployment has no update policy (usr/lib/kiln/updates.toml)".into());
            save(sysroot, os, &rec)?;
            return Ok(rec);
        }
        Err(e) => {
            rec.result = "error".into();
            rec.error = Some(format!("{e:#}"));
            save(sysroot, os, &rec)?;
            return Err(e);
        }
    };
    rec.policy = Some(path.display().to_string());
    rec.mode = pol.mode;
    if pol.mode == Mode::Off {
        save(sysroot, os, &rec)?;
        return Ok(rec);
    }
    let res = upgrade(
        sysroot,
        os,
        &UpgradeOptions {
            repo: None,
            check: pol.mode == Mode::Check,
            allow_downgrade: false,
            quiet: false,
            containers_dir: None,
        },
    );
    let deployed = match res {
        Err(e) => {
            rec.result = "error".into();
            rec.error = Some(format!("{e:#}"));
            save(sysroot, os, &rec)?;
            return Err(e);
        }
        Ok(UpgradeOutcome::UpToDate {
            refspec,
            checksum,
            version,
        }) => {
            rec.result = "upToDate".into();
            rec.refspec = Some(refspec);
            rec.to = Some(checksum);
            rec.to_version = version;
            false
        }
        Ok(UpgradeOutcome::Available {
            refspec,
            from,
            to,
            to_version,
            ..
        }) => {
            rec.result = "available".into();
            rec.refspec = Some(refspec);
            rec.from = Some(from);
            rec.to = Some(to);
            rec.to_version = to_version;
            false
        }
        Ok(UpgradeOutcome::Deployed {
            refspec,
            from,
            outcome,
            ..
        }) => {
            rec.result = if outcome.staged { "staged" } else { "deployed" }.into();
            rec.refspec = Some(refspec);
            rec.from = Some(from);
            rec.to = Some(outcome.commit);
            rec.to_version = outcome.version;
            true
        }
    };
    // A pending update from an earlier run also waits for the window.
    let pending = deployed || pending_update(sysroot)?;
    if pol.mode == Mode::Apply && pending {
        let reboot_now = match pol.reboot {
            Reboot::Never => false,
            Reboot::Immediate => true,
            Reboot::Window => pol
                .window
                .as_ref()
                .map(|w| w.contains(now))
                .unwrap_or(false),
        };
        rec.reboot = match (pol.reboot, reboot_now) {
            (Reboot::Never, _) => "none".into(),
            (_, true) => "requested".into(),
            (_, false) => "waitingForWindow".into(),
        };
        save(sysroot, os, &rec)?;
        if reboot_now && super::is_booted_host(sysroot) {
            crate::cmd::Cmd::new("systemctl")
                .arg("reboot")
                .run()
                .context("asking systemd to reboot into the update")?;
        }
        return Ok(rec);
    }
    save(sysroot, os, &rec)?;
    Ok(rec)
}

/// True when the next boot is not the running deployment (an update waits for a reboot).
fn pending_update(sysroot: &Path) -> Result<bool> {
    let host = ops::status(sysroot)?;
    Ok(host.status.deployments.iter().any(|d| d.pending)
        && (host.status.booted.is_some() || host.status.staged.is_some()))
}
