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
/// The unit that gives a FleetLock slot back once a boot is good (enabled by compose when
/// `strategy = "fleetlock"`).
pub const STEADY_UNIT: &str = "kiln-fleetlock-steady.service";
const STEADY_PATH: &str = "usr/lib/systemd/system/kiln-fleetlock-steady.service";
const STEADY_TEXT: &str =
    include_str!("../overlays/base/usr/lib/systemd/system/kiln-fleetlock-steady.service");
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

/// How `mode = "apply"` decides that this machine may reboot now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// As soon as `reboot` allows.
    #[default]
    Immediate,
    /// Only with a reboot slot from a FleetLock server (`[updates.fleetlock]`), so at
    /// most K machines of a group are down at once (src/fleetlock/, docs/updating.md).
    Fleetlock,
}

/// `[updates.fleetlock]`: the FleetLock server and this machine's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Fleetlock {
    /// The server's base URL (`http://fleetlock.example:3333`); the agent posts to
    /// `URL/v1/pre-reboot` and `URL/v1/steady-state`.
    #[serde(deserialize_with = "checked::url")]
    pub url: String,
    #[serde(default = "default_group", deserialize_with = "checked::group")]
    pub group: String,
}

fn default_group() -> String {
    "default".into()
}

/// Values of a policy file checked by [`crate::validate`]'s rules while it is read, so a
/// bad one is reported with the file's line and column.
mod checked {
    use serde::{Deserialize, Deserializer};

    pub fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        crate::validate::url(&s, crate::validate::Schemes::Http)
            .map_err(serde::de::Error::custom)?;
        Ok(s)
    }

    pub fn group<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        crate::validate::lock_group(&s).map_err(serde::de::Error::custom)?;
        Ok(s)
    }
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
    /// Boots a new deployment gets before GRUB falls back to the previous one
    /// (`None`: [`crate::deploy::bootcount::DEFAULT_TRIES`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    pub strategy: Strategy,
    pub fleetlock: Option<Fleetlock>,
}

impl Updates {
    /// The tries a new deployment gets.
    pub fn tries(&self) -> u32 {
        self.tries
            .unwrap_or(crate::deploy::bootcount::DEFAULT_TRIES)
            .min(crate::deploy::bootcount::MAX_TRIES)
    }
}

/// Where the health policy lives inside a tree.
pub const HEALTH_PATH: &str = "usr/lib/kiln/health.toml";
/// Seconds a boot has to become good when the recipe says nothing.
pub const DEFAULT_HEALTH_TIMEOUT: u64 = 300;

/// The `[health]` table of a recipe: what makes a boot good (docs/updating.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Health {
    /// Units that must be active.
    pub required_units: Vec<String>,
    /// Seconds the boot has to get there (written as `"300s"`).
    #[serde(with = "duration_str")]
    pub timeout: u64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            required_units: Vec::new(),
            timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

/// Writes the health policy into a tree (compose, for every recipe).
pub fn write_health_to_tree(health: &Health, root: &Path) -> Result<()> {
    let text = format!(
        "# Written by kiln compose from the recipe's [health] table (docs/updating.md).\n{}",
        toml::to_string(health).context("serializing the health policy")?
    );
    write_file(&root.join(HEALTH_PATH), &text)
}

/// Reads a tree's health policy; the defaults when it has none.
pub fn read_health(root: &Path) -> Result<Health> {
    let p = root.join(HEALTH_PATH);
    if !p.is_file() {
        return Ok(Health::default());
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(toml::from_str(&text)
        .map_err(|e| crate::error::InputError::new(p.display().to_string(), e.to_string()))?)
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

impl Updates {
    /// What is wrong with the strategy given the other keys (the recipe and a policy file
    /// share this check).
    pub fn strategy_error(&self) -> Option<String> {
        match (self.strategy, &self.fleetlock) {
            (Strategy::Fleetlock, None) => Some(
                "strategy = \"fleetlock\" needs [updates.fleetlock] with the server's url".into(),
            ),
            (Strategy::Immediate, Some(_)) => Some(
                "[updates.fleetlock] is set but strategy is not \"fleetlock\"; set \
                 strategy = \"fleetlock\" or remove it"
                    .into(),
            ),
            (Strategy::Fleetlock, Some(_))
                if self.mode != Mode::Apply || self.reboot == Reboot::Never =>
            {
                Some(
                    "strategy = \"fleetlock\" coordinates reboots: it needs mode = \"apply\" \
                     and reboot = \"immediate\" or \"window\""
                        .into(),
                )
            }
            _ => None,
        }
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
    for (rel, text) in [
        (SERVICE_PATH, SERVICE_UNIT),
        (TIMER_PATH, TIMER_UNIT),
        (STEADY_PATH, STEADY_TEXT),
    ] {
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
    let u: Updates = toml::from_str(&text).map_err(|e| {
        let ie = crate::error::InputError::new(p.display().to_string(), e.message().trim());
        match e.span() {
            Some(sp) => {
                let (l, c) = crate::error::line_col(&text, sp.start);
                ie.at(l, c)
            }
            None => ie,
        }
    })?;
    let bad = |m: String| crate::error::InputError::new(p.display().to_string(), m);
    if let Some(w) = &u.window {
        parse_time_of_day(&w.start).map_err(bad)?;
    }
    if let Some(m) = u.strategy_error() {
        return Err(bad(m).into());
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
    fn policy_file_values_are_checked_with_their_line() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("updates.toml");
        let cases = [
            ("mode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n[fleetlock]\nurl = \"ftp://x\"\n", ":5:"),
            ("mode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://x\"\ngroup = \"a b\"\n", ":6:"),
            ("strategy = \"sometimes\"\n", ":1:"),
            ("mode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n", "needs [updates.fleetlock]"),
            ("mode = \"stage\"\nstrategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://x\"\n", "needs mode = \"apply\""),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let e = read_policy(&p).unwrap_err();
            let ie = e
                .downcast_ref::<crate::error::InputError>()
                .expect("an InputError");
            assert!(format!("{ie}").contains(want), "{text}: {ie}");
        }
        std::fs::write(&p, "mode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://127.0.0.1:3333\"\n").unwrap();
        let u = read_policy(&p).unwrap();
        assert_eq!(u.fleetlock.unwrap().group, "default");
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
            strategy: Strategy::Fleetlock,
            fleetlock: Some(Fleetlock {
                url: "http://fleetlock.example:3333".into(),
                group: "workers".into(),
            }),
            tries: Some(4),
        };
        write_to_tree(&u, td.path()).unwrap();
        assert_eq!(u.tries(), 4);
        let h = Health {
            required_units: vec!["web.service".into()],
            timeout: 60,
        };
        assert_eq!(read_health(td.path()).unwrap(), Health::default());
        write_health_to_tree(&h, td.path()).unwrap();
        assert_eq!(read_health(td.path()).unwrap(), h);
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
