//! Boot counting: the state machine of a deployment on trial, and the GRUB environment
//! block it lives in. Pure: no I/O here except [`read_env`] / [`write_env`].
//!
//! State (GRUB's `/grub/grubenv` on the boot partition, two variables kiln owns):
//! `kiln_pending` = the key ([`key`]: `<commit>.<deployserial>`) of the deployment on
//! trial, `kiln_tries` = the boots it has left. No `kiln_pending`, or one naming another
//! deployment than the default boot entry: nothing is on trial, GRUB boots the default.
//!
//! Transitions (docs/updating.md has the table):
//! - deploy/stage a new deployment over an existing one ([`on_deploy`]): pending = new,
//!   tries = N, written before the new boot entries become the default;
//! - GRUB ([`grub_step`], the script [`grub_script_head`] + [`grub_script_entry`]): when
//!   pending = the default entry and tries ≥ 1, tries − 1 is saved (`save_env`) and the
//!   default boots; when tries are spent (0, or unreadable) the rollback entry boots;
//! - the health check of the booted system ([`judge`]): good → nothing on trial; bad with
//!   tries left → reboot; bad with tries spent, or booted into the rollback entry because
//!   they were spent → the pending deployment is rejected (remembered), the rollback
//!   becomes the default, nothing on trial.
//!
//! Power loss: the block is 1024 bytes and everything kiln writes fits in its first
//! 512-byte sector, so GRUB's in-place rewrite (one 2-sector write) cannot tear a value:
//! the second sector is `#` padding before and after. Linux writes a whole new file (temp,
//! fsync, rename) that GRUB reads only once /boot is checkpointed
//! ([`super::safety::flush_boot`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Size of a GRUB environment block.
pub const ENV_SIZE: usize = 1024;
/// Its first line.
pub const ENV_HEADER: &str = "# GRUB Environment Block\n";
/// The deployment on trial.
pub const VAR_PENDING: &str = "kiln_pending";
/// Boots it has left.
pub const VAR_TRIES: &str = "kiln_tries";
/// Where GRUB reads the block: relative to the boot partition (GRUB's `$root`).
pub const GRUB_ENV_PATH: &str = "/grub/grubenv";
/// The most tries a recipe may give (GRUB has no arithmetic: the script enumerates).
pub const MAX_TRIES: u32 = 9;
/// Kernel arguments a boot on trial gets (GRUB appends `$kiln_trial_kargs` to the default
/// entry's): a kernel panic reboots after 10 s, an initramfs failure reboots instead of
/// waiting in an emergency shell. Only on trial: a first boot whose Ignition fails stops in
/// the emergency shell as before.
pub const TRIAL_KARGS: &str = "panic=10 rd.shell=0 rd.emergency=reboot";
/// The variable holding them.
pub const VAR_TRIAL_KARGS: &str = "kiln_trial_kargs";
/// Tries a new deployment gets when the recipe says nothing.
pub const DEFAULT_TRIES: u32 = 3;
/// The part of the block kiln keeps its variables in (see the module doc).
const FIRST_SECTOR: usize = 512;

/// The key of a deployment: what `kiln_pending` holds and the menu compares.
pub fn key(commit: &str, deployserial: i32) -> String {
    format!("{commit}.{deployserial}")
}

/// `boot/grub/grubenv` of a sysroot (on a booted host: /boot/grub/grubenv).
pub fn env_path(sysroot: &Path) -> PathBuf {
    sysroot
        .join("boot")
        .join(GRUB_ENV_PATH.trim_start_matches('/'))
}

/// What the block says about a trial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trial {
    pub pending: Option<String>,
    /// `None`: missing or not a number (counts as spent for the pending deployment).
    pub tries: Option<u32>,
}

impl Trial {
    /// Nothing on trial.
    pub fn none() -> Trial {
        Trial::default()
    }
    pub fn new(key: &str, tries: u32) -> Trial {
        Trial {
            pending: Some(key.to_string()),
            tries: Some(tries),
        }
    }
    /// True when `key` is the deployment on trial.
    pub fn is_pending(&self, key: &str) -> bool {
        self.pending.as_deref() == Some(key)
    }
    /// Boots left for the pending deployment (unreadable = 0).
    pub fn left(&self) -> u32 {
        self.tries.filter(|t| *t <= MAX_TRIES).unwrap_or(0)
    }
}

/// A GRUB environment block: `name=value` lines in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// Parses a block the way GRUB does (unknown lines and padding are skipped). A block
    /// without the header is not one: empty.
    pub fn parse(data: &[u8]) -> Env {
        let text = String::from_utf8_lossy(data);
        if !text.starts_with(ENV_HEADER) {
            return Env::default();
        }
        let vars = text[ENV_HEADER.len()..]
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env { vars }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (`Some`) or removes (`None`) a variable, keeping the others in place.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        match (self.vars.iter().position(|(k, _)| k == name), value) {
            (Some(i), Some(v)) => self.vars[i].1 = v.to_string(),
            (Some(i), None) => {
                self.vars.remove(i);
            }
            (None, Some(v)) => self.vars.push((name.to_string(), v.to_string())),
            (None, None) => {}
        }
    }

    pub fn trial(&self) -> Trial {
        Trial {
            pending: self
                .get(VAR_PENDING)
                .filter(|v| !v.is_empty())
                .map(String::from),
            tries: self.get(VAR_TRIES).and_then(|v| v.parse().ok()),
        }
    }

    pub fn set_trial(&mut self, t: &Trial) {
        self.set(VAR_PENDING, t.pending.as_deref());
        let tries = t.tries.map(|n| n.to_string());
        self.set(VAR_TRIES, t.pending.as_ref().and(tries.as_deref()));
    }

    /// The 1024-byte block. kiln's variables first, so that they sit in the first sector;
    /// fails when they would not.
    pub fn render(&self) -> Result<Vec<u8>> {
        let mut s = String::from(ENV_HEADER);
        let ours = |k: &str| k == VAR_PENDING || k == VAR_TRIES;
        let ordered = self
            .vars
            .iter()
            .filter(|(k, _)| ours(k))
            .chain(self.vars.iter().filter(|(k, _)| !ours(k)));
        for (i, (k, v)) in ordered.enumerate() {
            if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
                bail!("grubenv: cannot store the variable {k:?}={v:?}");
            }
            s.push_str(&format!("{k}={v}\n"));
            if i < 2 && ours(k) && s.len() > FIRST_SECTOR {
                bail!("grubenv: kiln's variables do not fit its first sector");
            }
        }
        if s.len() > ENV_SIZE {
            bail!(
                "grubenv: {} bytes of variables do not fit {ENV_SIZE}",
                s.len()
            );
        }
        let mut b = s.into_bytes();
        b.resize(ENV_SIZE, b'#');
        Ok(b)
    }
}

/// The block at `path`; an empty one when it is missing (nothing on trial).
pub fn read_env(path: &Path) -> Result<Env> {
    match std::fs::read(path) {
        Ok(d) => Ok(Env::parse(&d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Env::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the block at `path` whole: temp file, fsync, rename, fsync of the directory.
/// The caller checkpoints /boot afterwards on a booted host.
pub fn write_env(path: &Path, env: &Env) -> Result<()> {
    let data = env.render()?;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::write_atomic(path, &data)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Sets the trial in the block at `path`, keeping other variables.
pub fn write_trial(path: &Path, t: &Trial) -> Result<()> {
    let mut env = read_env(path)?;
    if env.trial() == *t && path.exists() {
        return Ok(());
    }
    env.set_trial(t);
    write_env(path, &env)
}

/// The trial a deploy starts: the new deployment `new` on trial with `tries` boots, when
/// there is a deployment to fall back to; else nothing on trial (a first deployment, or a
/// sysroot without a rollback entry, boots as it is).
pub fn on_deploy(new: &str, tries: u32, has_fallback: bool) -> Trial {
    if has_fallback && tries > 0 {
        Trial::new(new, tries.min(MAX_TRIES))
    } else {
        Trial::none()
    }
}

/// What GRUB boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Default,
    Rollback,
}

/// GRUB's step at boot, as the generated script runs it: which entry boots and the trial
/// it saves first (`None`: no write). `has_rollback`: the menu has a second entry.
pub fn grub_step(t: &Trial, default_key: &str, has_rollback: bool) -> (Boot, Option<Trial>) {
    if !has_rollback || !t.is_pending(default_key) {
        return (Boot::Default, None);
    }
    match t.tries {
        Some(n) if (1..=MAX_TRIES).contains(&n) => {
            (Boot::Default, Some(Trial::new(default_key, n - 1)))
        }
        _ => (Boot::Rollback, None),
    }
}

/// What the booted system knows when it judges its boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The booted deployment's key.
    pub booted: String,
    /// The default (first) deployment's key.
    pub default: String,
    /// A deployment other than the default exists (what a rollback would boot).
    pub has_rollback: bool,
    pub trial: Trial,
}

/// What the booted system does, decided before its own health is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    Nothing,
    /// GRUB booted the rollback entry because the pending (default) deployment's tries
    /// are spent: reject it, make the booted deployment the default, clear the trial.
    Abandon {
        rejected: String,
    },
    /// The block names a deployment that is not the default (an old trial, or one whose
    /// deploy never became the default): clear it.
    ClearStale,
}

/// The step before the checks run.
pub fn before_checks(f: &Facts) -> Before {
    let Some(p) = &f.trial.pending else {
        return Before::Nothing;
    };
    if *p != f.default {
        return Before::ClearStale;
    }
    if f.booted != f.default && f.trial.left() == 0 {
        return Before::Abandon {
            rejected: f.default.clone(),
        };
    }
    // Booted the default on trial, or the rollback chosen by hand with tries left.
    Before::Nothing
}

/// The verdict on a boot once its checks ran. The facts are those after [`before_checks`]
/// was carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Mark the boot good; `clear`: the booted deployment was on trial (clear the trial and
    /// any rejection of its commit).
    Good { clear: bool },
    /// On trial with tries left: reboot, GRUB counts.
    Reboot,
    /// On trial, tries spent: reject the booted deployment, make the rollback the default,
    /// clear the trial, reboot.
    RejectAndRollback,
    /// Not on trial (or nothing to fall back to): the check fails; no reboot (a known-good
    /// deployment is not abandoned, and no reboot loop).
    Fail,
}

pub fn judge(f: &Facts, healthy: bool) -> Verdict {
    let on_trial = f.booted == f.default && f.trial.is_pending(&f.booted);
    match (healthy, on_trial) {
        (true, clear) => Verdict::Good { clear },
        (false, false) => Verdict::Fail,
        (false, true) if !f.has_rollback => Verdict::Fail,
        (false, true) if f.trial.left() > 0 => Verdict::Reboot,
        (false, true) => Verdict::RejectAndRollback,
    }
}

/// A word GRUB takes literally (keys are hex, `.` and digits).
fn check_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

/// The menu's head for a default entry with key `default_key` and a rollback entry: loads
/// the trial and, when the default's tries are spent, makes the rollback the default.
pub fn grub_script_head(default_key: &str) -> String {
    if !check_key(default_key) {
        return String::new();
    }
    let mut s = format!(
        "# Boot counting (kiln, docs/updating.md): {VAR_PENDING} names the deployment on\n\
         # trial, {VAR_TRIES} its boots left; spent tries boot the rollback entry.\n\
         set {VAR_PENDING}=\"\"\nset {VAR_TRIES}=\"\"\n\
         if [ -f {GRUB_ENV_PATH} ]; then\n  \
         load_env -f {GRUB_ENV_PATH} {VAR_PENDING} {VAR_TRIES}\nfi\n\
         if [ \"${VAR_PENDING}\" = \"{default_key}\" ]; then\n  set default=1\n"
    );
    for n in 1..=MAX_TRIES {
        let kw = if n == 1 { "if" } else { "elif" };
        s.push_str(&format!(
            "  {kw} [ \"${VAR_TRIES}\" = \"{n}\" ]; then set default=0\n"
        ));
    }
    s.push_str(&format!(
        "  fi\nfi\nexport {VAR_PENDING}\nexport {VAR_TRIES}\n"
    ));
    s
}

/// The start of the default entry's body: takes one try (saved) before the kernel loads.
/// Chosen by hand with tries spent, it boots without a write.
pub fn grub_script_entry(default_key: &str) -> String {
    if !check_key(default_key) {
        return String::new();
    }
    let mut s = format!(
        "  set {VAR_TRIAL_KARGS}=\"\"\n  if [ \"${VAR_PENDING}\" = \"{default_key}\" ]; then\n"
    );
    for n in (1..=MAX_TRIES).rev() {
        let kw = if n == MAX_TRIES { "if" } else { "elif" };
        s.push_str(&format!(
            "    {kw} [ \"${VAR_TRIES}\" = \"{n}\" ]; then\n      set {VAR_TRIES}={}\n      \
             save_env -f {GRUB_ENV_PATH} {VAR_PENDING} {VAR_TRIES}\n      \
             set {VAR_TRIAL_KARGS}=\"{TRIAL_KARGS}\"\n",
            n - 1
        ));
    }
    s.push_str("    fi\n  fi\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const K2: &str = "bb.0";
    const K1: &str = "aa.0";

    fn facts(booted: &str, trial: Trial) -> Facts {
        Facts {
            booted: booted.into(),
            default: K2.into(),
            has_rollback: true,
            trial,
        }
    }

    #[test]
    fn deploy_starts_a_trial_only_with_a_fallback() {
        assert_eq!(on_deploy(K2, 3, true), Trial::new(K2, 3));
        assert_eq!(on_deploy(K2, 3, false), Trial::none());
        assert_eq!(on_deploy(K2, 0, true), Trial::none());
        assert_eq!(on_deploy(K2, 40, true), Trial::new(K2, MAX_TRIES));
    }

    #[test]
    fn grub_counts_down_then_boots_the_rollback() {
        let mut t = Trial::new(K2, 3);
        let mut boots = Vec::new();
        for _ in 0..5 {
            let (b, w) = grub_step(&t, K2, true);
            boots.push(b);
            if let Some(w) = w {
                t = w;
            }
        }
        use Boot::*;
        assert_eq!(boots, [Default, Default, Default, Rollback, Rollback]);
        assert_eq!(t, Trial::new(K2, 0));
        // Unreadable tries count as spent; another deployment's trial is not ours.
        let garbage = Trial {
            pending: Some(K2.into()),
            tries: None,
        };
        assert_eq!(grub_step(&garbage, K2, true), (Rollback, None));
        assert_eq!(grub_step(&Trial::new(K1, 0), K2, true), (Default, None));
        assert_eq!(grub_step(&Trial::none(), K2, true), (Default, None));
        // Without a rollback entry there is nothing else to boot.
        assert_eq!(grub_step(&Trial::new(K2, 0), K2, false), (Default, None));
    }

    #[test]
    fn before_checks_every_case() {
        assert_eq!(before_checks(&facts(K2, Trial::none())), Before::Nothing);
        assert_eq!(
            before_checks(&facts(K1, Trial::new(K2, 0))),
            Before::Abandon {
                rejected: K2.into()
            }
        );
        // The rollback chosen by hand with tries left: nothing changes.
        assert_eq!(
            before_checks(&facts(K1, Trial::new(K2, 2))),
            Before::Nothing
        );
        assert_eq!(
            before_checks(&facts(K2, Trial::new(K2, 1))),
            Before::Nothing
        );
        assert_eq!(
            before_checks(&facts(K2, Trial::new("cc.1", 2))),
            Before::ClearStale
        );
    }

    #[test]
    fn judge_every_case() {
        use Verdict::*;
        assert_eq!(
            judge(&facts(K2, Trial::new(K2, 2)), true),
            Good { clear: true }
        );
        assert_eq!(
            judge(&facts(K2, Trial::new(K2, 0)), true),
            Good { clear: true }
        );
        assert_eq!(
            judge(&facts(K2, Trial::none()), true),
            Good { clear: false }
        );
        assert_eq!(
            judge(&facts(K1, Trial::new(K2, 2)), true),
            Good { clear: false }
        );
        assert_eq!(judge(&facts(K2, Trial::new(K2, 2)), false), Reboot);
        assert_eq!(
            judge(&facts(K2, Trial::new(K2, 0)), false),
            RejectAndRollback
        );
        assert_eq!(judge(&facts(K2, Trial::none()), false), Fail);
        assert_eq!(judge(&facts(K1, Trial::new(K2, 2)), false), Fail);
        let mut alone = facts(K2, Trial::new(K2, 2));
        alone.has_rollback = false;
        assert_eq!(judge(&alone, false), Fail);
    }

    #[test]
    fn env_block_round_trips_in_its_first_sector() {
        let mut e = Env::parse(b"# GRUB Environment Block\nsaved_entry=x\n####");
        assert_eq!(e.get("saved_entry"), Some("x"));
        let k = key(&"a".repeat(64), 12);
        e.set_trial(&Trial::new(&k, 3));
        let b = e.render().unwrap();
        assert_eq!(b.len(), ENV_SIZE);
        assert!(b[FIRST_SECTOR..].iter().all(|c| *c == b'#'));
        let back = Env::parse(&b);
        assert_eq!(back.trial(), Trial::new(&k, 3));
        assert_eq!(back.get("saved_entry"), Some("x"));
        assert!(String::from_utf8_lossy(&b).starts_with(&format!(
            "{ENV_HEADER}{VAR_PENDING}={k}\n{VAR_TRIES}=3\nsaved_entry=x\n"
        )));
        e.set_trial(&Trial::none());
        assert_eq!(Env::parse(&e.render().unwrap()).trial(), Trial::none());
        assert_eq!(Env::parse(b"garbage").trial(), Trial::none());
        let mut big = Env::default();
        big.set("x", Some(&"y".repeat(ENV_SIZE)));
        assert!(big.render().is_err());
    }

    #[test]
    fn write_and_read_a_block_on_disk() {
        let td = tempfile::tempdir().unwrap();
        let p = env_path(td.path());
        assert_eq!(read_env(&p).unwrap().trial(), Trial::none());
        write_trial(&p, &Trial::new(K2, 2)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), ENV_SIZE as u64);
        assert_eq!(read_env(&p).unwrap().trial(), Trial::new(K2, 2));
        write_trial(&p, &Trial::none()).unwrap();
        assert_eq!(read_env(&p).unwrap().trial(), Trial::none());
    }

    #[test]
    fn the_grub_script_enumerates_every_count() {
        let head = grub_script_head(K2);
        assert!(head.contains("load_env -f /grub/grubenv kiln_pending kiln_tries"));
        assert!(head.contains("if [ \"$kiln_pending\" = \"bb.0\" ]; then\n  set default=1\n"));
        for n in 1..=MAX_TRIES {
            assert!(head.contains(&format!(
                "[ \"$kiln_tries\" = \"{n}\" ]; then set default=0"
            )));
        }
        assert!(!head.contains("\"0\" ]"));
        let entry = grub_script_entry(K2);
        for n in 1..=MAX_TRIES {
            assert!(entry.contains(&format!(
                "[ \"$kiln_tries\" = \"{n}\" ]; then\n      set kiln_tries={}\n      save_env",
                n - 1
            )));
        }
        assert_eq!(
            entry
                .matches("save_env -f /grub/grubenv kiln_pending kiln_tries\n")
                .count(),
            MAX_TRIES as usize
        );
        assert_eq!(grub_script_head("a b"), "");
        assert_eq!(grub_script_entry(""), "");
    }
}
