//! `kiln upgrade --auto`, which `kiln-upgrade.service` runs from `kiln-upgrade.timer`:
//! follows the deployment's update policy ([`crate::updates`]): check, stage or apply the
//! newest commit of the booted ref, reboot as the policy says, and record the result in
//! `/var/lib/kiln/last-check.json` ([`super::last_check`]) for `kiln status`.

use super::follow::upgrade;
use super::last_check::{save, LastCheck};
use super::ops;
use super::upgrade::{UpgradeOptions, UpgradeOutcome};
use crate::fleetlock::client as fl;
use crate::updates::{
    read_policy, Mode, Reboot, Strategy, Updates, POLICY_OVERRIDE_PATH, POLICY_PATH,
};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How `kiln upgrade --auto` runs.
#[derive(Debug, Clone, Default)]
pub struct AutoOptions {
    /// Seconds since the epoch (the clock, except in tests).
    pub now: u64,
    /// Run this program instead of `systemctl reboot`, and also for a sysroot that is not
    /// the booted host (which is otherwise never rebooted): lets a test or an outer
    /// orchestrator record or perform the reboot.
    pub reboot_command: Option<PathBuf>,
}

/// How long one run waits for a FleetLock slot before it gives up until the next run.
const SLOT_PATIENCE: Duration = Duration::from_secs(3600);

/// The policy of the running (booted) deployment, else of the next boot's: the
/// deployment's `/etc/kiln/updates.toml` when present, else its `/usr/lib/kiln/updates.toml`.
/// Also returns the deployment's root (`/` when booted).
fn find_policy(sysroot: &Path, os: &str) -> Result<(PathBuf, Option<(PathBuf, Updates)>)> {
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
            let pol = read_policy(&p)?;
            return Ok((root, Some((p, pol))));
        }
    }
    Ok((root, None))
}

/// `kiln upgrade --auto`: follows the deployment's policy, records the result, and
/// reboots when the policy says so (only on a booted host, or with a reboot command).
pub fn run_auto(sysroot: &Path, os: &str, opts: &AutoOptions) -> Result<LastCheck> {
    let now = opts.now;
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
    let (root, (path, pol)) = match policy {
        Ok((root, Some(x))) => (root, x),
        Ok((_, None)) => {
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
            skip: super::trial::rejections(sysroot, os)
                .rejected
                .into_iter()
                .map(|r| r.commit)
                .collect(),
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
        Ok(UpgradeOutcome::Rejected {
            refspec,
            checksum,
            version,
        }) => {
            rec.result = "rejected".into();
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
        return reboot_as_policy_says(sysroot, os, &root, &pol, opts, rec);
    }
    save(sysroot, os, &rec)?;
    Ok(rec)
}

/// An update waits for a reboot: reboot now, in the window, or never as the policy says;
/// with `strategy = "fleetlock"` only holding a slot, after the pre-reboot hooks.
fn reboot_as_policy_says(
    sysroot: &Path,
    os: &str,
    root: &Path,
    pol: &Updates,
    opts: &AutoOptions,
    mut rec: LastCheck,
) -> Result<LastCheck> {
    let in_window = |t: u64| pol.window.as_ref().map(|w| w.contains(t)).unwrap_or(false);
    let reboot_now = match pol.reboot {
        Reboot::Never => false,
        Reboot::Immediate => true,
        Reboot::Window => in_window(opts.now),
    };
    rec.reboot = match (pol.reboot, reboot_now) {
        (Reboot::Never, _) => "none".into(),
        (_, true) => "requested".into(),
        (_, false) => "waitingForWindow".into(),
    };
    let can_reboot = opts.reboot_command.is_some() || super::is_booted_host(sysroot);
    if !(reboot_now && can_reboot) {
        save(sysroot, os, &rec)?;
        return Ok(rec);
    }
    if let (Strategy::Fleetlock, Some(cfg)) = (pol.strategy, &pol.fleetlock) {
        let state = super::last_check::state_dir(sysroot, os);
        let started = Instant::now();
        let window = pol.reboot == Reboot::Window;
        let keep_trying = move || {
            let now = opts.now + started.elapsed().as_secs();
            started.elapsed() < SLOT_PATIENCE && (!window || in_window(now))
        };
        if let Err((what, why)) = take_slot(root, cfg, &state, opts.now, &keep_trying) {
            rec.reboot = what.into();
            rec.error = Some(why);
            save(sysroot, os, &rec)?;
            return Ok(rec);
        }
    }
    save(sysroot, os, &rec)?;
    let cmd = match &opts.reboot_command {
        Some(c) => crate::cmd::Cmd::new(c),
        None => crate::cmd::Cmd::new("systemctl").arg("reboot"),
    };
    cmd.run()
        .context("asking systemd to reboot into the update")?;
    Ok(rec)
}

/// Takes a FleetLock slot (retrying with backoff while `keep_trying`), records it, then
/// runs the pre-reboot hooks; a failing hook gives the slot back and cancels the reboot.
/// The slot comes first so that hooks which drain a node run on at most K machines.
/// On failure: the `reboot` value for the record and why.
fn take_slot(
    root: &Path,
    cfg: &crate::updates::Fleetlock,
    state: &Path,
    now: u64,
    keep_trying: &dyn Fn() -> bool,
) -> std::result::Result<(), (&'static str, String)> {
    let fail = |e: anyhow::Error| ("waitingForSlot", format!("{e:#}"));
    let id = fl::lock_id_of(root).map_err(fail)?;
    let client = fl::Client::new(cfg, &id).map_err(fail)?;
    eprintln!(
        "kiln: asking {} for a reboot slot in group {:?} as {id}",
        cfg.url, cfg.group
    );
    fl::with_backoff("asking for a reboot slot", keep_trying, || {
        client.pre_reboot()
    })
    .map_err(|why| {
        (
            "waitingForSlot",
            format!("no reboot slot from {}: {why}", cfg.url),
        )
    })?;
    let slot = fl::Slot {
        url: cfg.url.clone(),
        group: cfg.group.clone(),
        id,
        taken: now,
    };
    fl::save_slot(state, &slot).map_err(fail)?;
    if let Err(e) = fl::run_hooks(root, &fl::PRE_REBOOT_DIRS) {
        let why = format!("a pre-reboot hook failed, reboot cancelled: {e:#}");
        let back = fl::with_backoff(
            "giving the slot back",
            &fl::until(Instant::now() + Duration::from_secs(60)),
            || client.steady_state(),
        );
        if back.is_ok() {
            let _ = fl::forget_slot(state);
        }
        return Err(("cancelledByHook", why));
    }
    Ok(())
}

/// What the steady-state step did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SteadyState {
    /// False when the deployment's policy does not use FleetLock (nothing to do).
    pub fleetlock: bool,
    pub group: Option<String>,
    pub id: Option<String>,
    /// Post-boot hooks run.
    pub hooks: usize,
}

/// `kiln fleetlock steady-state`, run by kiln-fleetlock-steady.service after
/// kiln-health.service: once the boot is marked good (`boot_good` exists), gives this
/// machine's slot back (`/v1/steady-state`, idempotent, so it is sent on every good boot),
/// then runs the post-boot hooks. Retries with backoff for up to `patience`.
pub fn run_steady_state(
    sysroot: &Path,
    os: &str,
    boot_good: &Path,
    patience: Duration,
) -> Result<SteadyState> {
    let (root, policy) = find_policy(sysroot, os)?;
    let mut out = SteadyState {
        fleetlock: false,
        group: None,
        id: None,
        hooks: 0,
    };
    let Some((_, pol)) = policy else {
        return Ok(out);
    };
    let (Strategy::Fleetlock, Some(cfg)) = (pol.strategy, &pol.fleetlock) else {
        return Ok(out);
    };
    if !boot_good.exists() {
        bail!(
            "the boot is not marked good ({} does not exist): the reboot slot stays held",
            boot_good.display()
        );
    }
    let id = fl::lock_id_of(&root)?;
    let client = fl::Client::new(cfg, &id)?;
    fl::with_backoff(
        "reporting steady state",
        &fl::until(Instant::now() + patience),
        || client.steady_state(),
    )
    .map_err(|why| anyhow::anyhow!("giving the reboot slot back to {}: {why}", cfg.url))?;
    fl::forget_slot(&super::last_check::state_dir(sysroot, os))?;
    out.fleetlock = true;
    out.group = Some(cfg.group.clone());
    out.id = Some(id);
    out.hooks = fl::run_hooks(&root, &fl::POST_BOOT_DIRS)?;
    Ok(out)
}

/// True when the next boot is not the running deployment (an update waits for a reboot).
fn pending_update(sysroot: &Path) -> Result<bool> {
    let host = ops::status(sysroot)?;
    Ok(host.status.deployments.iter().any(|d| d.pending)
        && (host.status.booted.is_some() || host.status.staged.is_some()))
}
