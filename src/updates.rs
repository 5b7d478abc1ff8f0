//! The update policy: the recipe's `[updates]` table, written into the tree as
//! `/usr/lib/kiln/updates.toml` (plus a timer drop-in for the random delay) and read back
//! on the machine. A leaf: the agent that follows it (`kiln upgrade --auto`) is
//! [`crate::deploy::agent`].

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    // Never write into an existing file: it may be a hard link into the tree cache.
    crate::compose::overlay::remove_any(p)?;
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
