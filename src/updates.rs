//! Automatic updates: the recipe's `[updates]` policy, written into the tree as
//! `/usr/lib/kiln/updates.toml` (plus a timer drop-in for the random delay), and
//! `kiln upgrade --auto`, which `kiln-upgrade.service` runs from `kiln-upgrade.timer`:
//! check, stage or apply the newest commit of the booted ref, reboot as the policy says,
//! and record the result in `/var/lib/kiln/last-check.json` for `kiln status`.

use crate::deploy::ops::{self, UpgradeOptions, UpgradeOutcome};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the policy lives inside a tree.
pub const POLICY_PATH: &str = "usr/lib/kiln/updates.toml";
/// An administrator's override in the deployment's /etc.
pub const POLICY_OVERRIDE_PATH: &str = "etc/kiln/updates.toml";
/// The timer compose enables when updates are not off.
pub const TIMER: &str = "kiln-upgrade.timer";
/// Drop-in compose writes for the recipe's random delay.
pub const TIMER_DROPIN: &str = "usr/lib/systemd/system/kiln-upgrade.timer.d/10-recipe.conf";
const SERVICE_PATH: &str = "usr/lib/systemd/system/kiln-upgrade.service";
const TIMER_PATH: &str = "usr/lib/systemd/system/kiln-upgrade.timer";
const SERVICE_UNIT: &str =
    include_str!("../overlays/base/usr/lib/systemd/system/kiln-upgrade.service");
const TIMER_UNIT: &str = include_str!("../overlays/base/usr/lib/systemd/system/kiln-upgrade.timer");
/// Name of the status file in /var/lib/kiln.
pub const LAST_CHECK: &str = "last-check.json";

/// What the timer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing (the timer is not enabled).
    #[default]
    Off,
    /// Look for a newer commit and record it; change nothing.
    Check,
    /// Download and stage the newer commit; it is used at the next reboot, whenever that
    /// happens (kiln does not reboot).
    Stage,
    /// Stage, then reboot as `reboot` says.
    Apply,
}

/// When `mode = "apply"` reboots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reboot {
    #[default]
    Never,
    Immediate,
    /// Only inside the maintenance window.
    Window,
}

/// A weekly maintenance window (UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Window {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM`, UTC.
    pub start: String,
    /// Seconds (written as a duration string, `"7200s"`, like the recipe).
    #[serde(with = "duration_str")]
    pub length: u64,
}

/// The `[updates]` table of a recipe, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Updates {
    pub mode: Mode,
    pub reboot: Reboot,
    pub window: Option<Window>,
    /// Seconds the timer waits at random before each run (RandomizedDelaySec).
    #[serde(with = "duration_str")]
    pub random_delay: u64,
}

/// Seconds as the recipe writes durations (`"90s"`), so a resolved recipe shown by
/// `kiln recipe show` reads back as a recipe.
mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v}s"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `HH:MM` into minutes after midnight.
pub fn parse_time_of_day(s: &str) -> Result<u32, String> {
    let err = || format!("{s:?} is not a time of day: expected HH:MM (UTC), e.g. \"02:30\"");
    let (h, m) = s.split_once(':').ok_or_else(err)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(err());
    }
    let h: u32 = h.parse().map_err(|_| err())?;
    let m: u32 = m.parse().map_err(|_| err())?;
    if h > 23 || m > 59 {
        return Err(err());
    }
    Ok(h * 60 + m)
}

/// Parses a time span: `90s`, `30min`, `2h`, `1h30min`, `1d`. Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let err = || {
        format!("{s:?} is not a duration: expected a number with a unit (s, min, h, d), e.g. \"30min\" or \"2h\"")
    };
    let mut total = 0u64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let mult = match &rest[..unit_len] {
            "s" => 1,
            "min" | "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(err()),
        };
        rest = rest[unit_len..].trim_start();
        total = total
            .checked_add(n.checked_mul(mult).ok_or_else(err)?)
            .ok_or_else(err)?;
    }
    Ok(total)
}

impl Window {
    /// True when `now` (seconds since the epoch, UTC) is inside the window. A window may
    /// run past midnight into the next day.
    pub fn contains(&self, now: u64) -> bool {
        let Ok(start) = parse_time_of_day(&self.start) else {
            return false;
        };
        let day = now / 86400;
        // 1970-01-01 was a Thursday (index 3 from Monday).
        for back in 0..=(self.length / 86400 + 1) {
            let Some(d) = day.checked_sub(back) else {
                continue;
            };
            let name = DAYS[((d + 3) % 7) as usize];
            if !self.days.iter().any(|x| x == name) {
                continue;
            }
            let open = d * 86400 + u64::from(start) * 60;
            if now >= open && now < open + self.length {
                return true;
            }
        }
        false
    }
}

/// Writes the policy into a tree (compose calls this for every recipe): the policy file
/// always (mode off included, so `kiln upgrade --auto` reports "off" instead of guessing),
/// and the timer drop-in with the random delay.
pub fn write_to_tree(updates: &Updates, root: &Path) -> Result<()> {
    let text = format!(
        "# Written by kiln compose from the recipe's [updates] table (docs/updating.md).\n\
         # Override on a machine with /etc/kiln/updates.toml.\n{}",
        toml::to_string(updates).context("serializing the update policy")?
    );
    let p = root.join(POLICY_PATH);
    write_file(&p, &text)?;
    // The units themselves come with overlays/base; a recipe without that overlay gets
    // the same files here.
    for (rel, text) in [(SERVICE_PATH, SERVICE_UNIT), (TIMER_PATH, TIMER_UNIT)] {
        let p = root.join(rel);
        if !p.exists() {
            write_file(&p, text)?;
        }
    }
    let dropin = root.join(TIMER_DROPIN);
    write_file(
        &dropin,
        &format!(
            "# Written by kiln compose from the recipe's updates.random-delay.\n[Timer]\nRandomizedDelaySec={}\n",
            updates.random_delay
        ),
    )?;
    Ok(())
}

fn write_file(p: &Path, text: &str) -> Result<()> {
    let dir = p.parent().context("path without parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
}

/// Reads a policy file.
pub fn read_policy(p: &Path) -> Result<Updates> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let u: Updates = toml::from_str(&text)
        .map_err(|e| crate::error::InputError::new(p.display().to_string(), e.to_string()))?;
    if let Some(w) = &u.window {
        parse_time_of_day(&w.start)
            .map_err(|m| crate::error::InputError::new(p.display().to_string(), m))?;
    }
    Ok(u)
}

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
    if crate::deploy::is_booted_host(sysroot) {
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
        time_utc: crate::deploy::status::format_utc(now),
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
    let res = ops::upgrade(
        sysroot,
        os,
        &UpgradeOptions {
            repo: None,
            check: pol.mode == Mode::Check,
            allow_downgrade: false,
            quiet: false,
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
        if reboot_now && crate::deploy::is_booted_host(sysroot) {
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

fn save(sysroot: &Path, os: &str, rec: &LastCheck) -> Result<()> {
    let dir = state_dir(sysroot, os);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(rec).context("serializing the check result")?;
    let p = dir.join(LAST_CHECK);
    let tmp = dir.join(format!(".{LAST_CHECK}.tmp"));
    std::fs::write(&tmp, text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("renaming into {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30min"), Ok(1800));
        assert_eq!(parse_duration("1h30min"), Ok(5400));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert!(parse_duration("2 hours").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_time_of_day("02:30"), Ok(150));
        assert!(parse_time_of_day("24:00").is_err());
        assert!(parse_time_of_day("2:30").is_err());
    }

    #[test]
    fn window_contains() {
        // 2023-11-18 was a Saturday; 1700265600 = 2023-11-18 00:00 UTC.
        let sat = 1_700_265_600u64;
        let w = Window {
            days: vec!["sat".into()],
            start: "23:00".into(),
            length: 7200,
        };
        assert!(!w.contains(sat + 22 * 3600));
        assert!(w.contains(sat + 23 * 3600));
        // Runs past midnight into Sunday.
        assert!(w.contains(sat + 86400 + 1800));
        assert!(!w.contains(sat + 86400 + 3600));
        // Not on Friday.
        assert!(!w.contains(sat - 86400 + 23 * 3600 + 60));
    }

    #[test]
    fn policy_roundtrip_through_tree() {
        let td = tempfile::tempdir().unwrap();
        let u = Updates {
            mode: Mode::Apply,
            reboot: Reboot::Window,
            window: Some(Window {
                days: vec!["sun".into()],
                start: "03:00".into(),
                length: 3600,
            }),
            random_delay: 900,
        };
        write_to_tree(&u, td.path()).unwrap();
        assert_eq!(read_policy(&td.path().join(POLICY_PATH)).unwrap(), u);
        let d = std::fs::read_to_string(td.path().join(TIMER_DROPIN)).unwrap();
        assert!(d.contains("RandomizedDelaySec=900"), "{d}");
        let svc = std::fs::read_to_string(td.path().join(SERVICE_PATH)).unwrap();
        assert!(
            svc.contains("ExecStart=/usr/bin/kiln upgrade --auto"),
            "{svc}"
        );
        assert!(td.path().join(TIMER_PATH).is_file());
    }
}
