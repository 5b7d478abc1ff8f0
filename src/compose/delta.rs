//! Package-level reuse: a package selection that differs from a cached root's by a few
//! packages is built from that root by installing and removing just those packages,
//! instead of bootstrapping from nothing.
//!
//! - **Start**: the cached root with the same base key (suite, components, sources,
//!   mirror state, mmdebstrap, hooks: [`super::bootstrap::base_key`]) — or, when there is
//!   none, of the same family ([`super::bootstrap::family_key`]: only the recipe's extra
//!   repositories differ) — the same `exclude-packages` and the closest package
//!   selection, checked out by hard links.
//! - **Run**: an overlayfs (lower: that checkout, never written; upper: fresh) in a
//!   private mount namespace, and apt from the host as mmdebstrap runs it
//!   (`Dir` = the root, `DPkg::Chroot-Directory`, the host's keyrings, no Recommends):
//!   packages dropped from the recipe are marked automatically installed, then
//!   `apt-get --purge --auto-remove install ADDED` (or `autoremove`) — what a fresh
//!   install of the new selection would not have installed goes, and the new packages
//!   come in with the same manual/automatic marks a fresh install gives them.
//! - **Only where equal by construction.** Before anything is installed, apt's plan is
//!   simulated and every package it touches is checked: no maintainer scripts (a script
//!   may add users, alternatives or diversions, or do anything else whose result depends
//!   on what ran before it), explicit triggers only `ldconfig` (whose cache depends only
//!   on the libraries present), no file another package's file trigger watches, no
//!   dependency with alternatives (apt may choose differently when it resolves the whole
//!   selection at once), no upgrade unless the sources changed. After the run the upper directory is checked again
//!   for the files such scripts write (accounts, alternatives, diversions, statoverrides,
//!   maintainer scripts). Anything else makes the compose bootstrap from scratch, and
//!   the reason is shown and given in `--json` (`reused.why_not.bootstrap`).
//! - **Upgrades** (a root of the same family): apt's lists are updated first and must
//!   show the mirror state this compose read; no package list of an extra repository
//!   may hold an `Essential: yes`, `Priority: required` or `Provides:` package (then the
//!   unchanged Debian archive decides the essential and required set a fresh minbase
//!   selects, as it did for the cached root), nor one whose name and version stayed but
//!   whose `.deb` changed (apt would not reinstall it); `dist-upgrade ADDED` is planned, and an
//!   upgraded package must also be safe to remove in its old version, have no
//!   conffiles in either and not be essential. After the run every installed package
//!   must be at apt's candidate version, and the tree's apt sources and keyrings are
//!   written for the new sources, as after mmdebstrap.
//! - **Fine print**: mmdebstrap's clean-up runs on the result (apt's caches, dpkg's and
//!   apt's logs, ldconfig's aux-cache); dpkg's status file is written in its own hash
//!   order, not install order; apt's `extended_states` keeps marks only for automatically
//!   installed packages. The layout drops dpkg's `*-old` backups for every compose (their
//!   content depends on the last dpkg run, not on what is installed).
//! - **Apply**: the upper directory is moved onto the checkout (whiteouts delete, opaque
//!   directories are emptied first, new files are renamed in), so files from the cache
//!   are only ever unlinked, never written; the result is committed through the dev/ino
//!   cache like any other checkout.

use super::treecache::{Checkout, RootInfo, TreeCache};
use crate::cmd::Cmd;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// More changed packages than this: bootstrap from scratch.
const MAX_CHANGED: usize = 12;

/// Files that only maintainer scripts write: their presence in the upper directory
/// means something ran that a fresh install may have run differently.
const SCRIPT_OUTPUTS: &[&str] = &[
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "etc/gshadow",
    "etc/subuid",
    "etc/subgid",
    "etc/alternatives",
    "var/lib/dpkg/alternatives",
    "var/lib/dpkg/diversions",
    "var/lib/dpkg/statoverride",
];

/// What the checks of a package's control files allow.
const ALLOWED_CONTROL: &[&str] = &["control", "md5sums", "conffiles", "shlibs", "symbols"];

/// Mounts the overlay, the chroot's /proc and /dev, then runs the arguments.
const SETUP: &str = r#"set -e
l="$1"; u="$2"; w="$3"; m="$4"; shift 4
mount -t overlay -o "lowerdir=$l,upperdir=$u,workdir=$w,redirect_dir=off,metacopy=off,index=off,xino=off" kiln-delta "$m"
mount -t proc proc "$m/proc"
mount -t tmpfs -o mode=0755,nosuid,size=16m kiln-dev "$m/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${n%%:*}; r=${n#*:}
  mknod -m 0666 "$m/dev/$name" c "${r%%:*}" "${r#*:}"
done
ln -s /proc/self/fd "$m/dev/fd"
"$@"
"#;

pub struct Request<'a> {
    /// The mirror state this compose read (`"URI SUITE sha256"` per source).
    pub mirror: &'a [String],
    pub base: &'a str,
    /// [`super::bootstrap::family_key`]: a cached root of another base but this family
    /// differs in the extra repositories only.
    pub family: &'a str,
    /// The apt sources, as apt on the build host reads them.
    pub sources: &'a [super::sources::AptSource],
    pub packages: &'a [String],
    pub exclude: &'a [String],
    /// The epoch when fixed or remembered; else the cached root's epoch is used and the
    /// result's newest changelog date must equal it.
    pub epoch: Option<u64>,
    pub debs: &'a Path,
    pub work: &'a Path,
    pub tree: &'a Path,
    pub log: &'a Path,
}

/// A root built from a cached one.
pub struct Done {
    pub from: RootInfo,
    pub co: Checkout,
    /// `name=version` installed, `name=old->new` of those upgraded, and names removed.
    pub installed: Vec<String>,
    pub upgraded: Vec<String>,
    pub removed: Vec<String>,
    pub epoch: u64,
}

pub enum Outcome {
    Done(Box<Done>),
    /// Why the root must be bootstrapped from scratch.
    Fallback(String),
}

/// One line of apt's simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Install {
        name: String,
        old: Option<String>,
        version: String,
        arch: String,
    },
    Remove {
        name: String,
    },
}

/// Builds the root for `req` at `req.tree` from the closest cached root, or says why not.
pub fn build(tc: &TreeCache, req: &Request) -> Result<Outcome> {
    let Some(from) = tc.closest(req.base, req.family, req.packages, req.exclude)? else {
        return Ok(Outcome::Fallback(
            "no cached root with the same suite, Debian sources and mirror state, and \
             exclude-packages"
                .into(),
        ));
    };
    if let Some(e) = req.epoch {
        if e != from.epoch {
            return Ok(Outcome::Fallback(format!(
                "the closest cached root was built with epoch {}, this compose uses {e}",
                from.epoch
            )));
        }
    }
    let want: BTreeSet<&String> = req.packages.iter().collect();
    let had: BTreeSet<&String> = from.packages.iter().collect();
    let added: Vec<String> = want.difference(&had).map(|s| s.to_string()).collect();
    let dropped: Vec<String> = had.difference(&want).map(|s| s.to_string()).collect();
    if added.len() + dropped.len() > MAX_CHANGED {
        return Ok(Outcome::Fallback(format!(
            "{} packages added or removed (more than {MAX_CHANGED})",
            added.len() + dropped.len()
        )));
    }
    let d = Dirs::new(req.work)?;
    let Some(co) = tc.checkout(&from.key, &d.lower)? else {
        return Ok(Outcome::Fallback(
            "the closest cached root was pruned".into(),
        ));
    };
    let r = run(req, &from, &d, &added, &dropped);
    let (installed, upgraded, removed) = match r {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            super::overlay::remove_any(&d.lower)?;
            return Ok(Outcome::Fallback(why));
        }
        Err(e) => {
            super::overlay::remove_any(&d.lower)?;
            return Ok(Outcome::Fallback(format!(
                "installing the changed packages failed ({e:#}; log: {})",
                req.log.display()
            )));
        }
    };
    apply_upper(&d.upper, &d.lower)?;
    if from.base != req.base {
        // What the bootstrap writes after mmdebstrap, for the new sources.
        super::bootstrap::write_tree_sources(&d.lower, req.sources, true)?;
    }
    std::fs::rename(&d.lower, req.tree)
        .with_context(|| format!("moving {} to {}", d.lower.display(), req.tree.display()))?;
    for p in [
        &d.upper, &d.ovwork, &d.merged, &d.ctrl, &d.parts, &d.list, &d.conf,
    ] {
        super::overlay::remove_any(p)?;
    }
    if req.epoch.is_none() {
        let e = super::epoch::newest_changelog(req.tree)?;
        if e != Some(from.epoch) {
            super::overlay::remove_any(req.tree)?;
            return Ok(Outcome::Fallback(format!(
                "the newest changelog date changed ({e:?}, the cached root's is {}): the \
                 epoch is not fixed, so the root is built with the new one",
                from.epoch
            )));
        }
    }
    let epoch = from.epoch;
    Ok(Outcome::Done(Box::new(Done {
        from,
        co,
        installed,
        upgraded,
        removed,
        epoch,
    })))
}

struct Dirs {
    lower: PathBuf,
    upper: PathBuf,
    ovwork: PathBuf,
    merged: PathBuf,
    ctrl: PathBuf,
    conf: PathBuf,
    /// The sources with the build host's keyring paths (the tree's name the tree's
    /// copies, which apt running outside the tree would not find).
    list: PathBuf,
    /// Empty: every source is in `list`.
    parts: PathBuf,
}

impl Dirs {
    fn new(work: &Path) -> Result<Self> {
        let d = Dirs {
            lower: work.join("delta-root"),
            upper: work.join("delta-upper"),
            ovwork: work.join("delta-ovwork"),
            merged: work.join("delta-merged"),
            ctrl: work.join("delta-control"),
            conf: work.join("delta-apt.conf"),
            list: work.join("delta-sources.list"),
            parts: work.join("delta-sources.list.d"),
        };
        for p in [&d.upper, &d.ovwork, &d.merged, &d.ctrl, &d.parts] {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        // overlayfs takes its options as one comma-separated string.
        for p in [&d.lower, &d.upper, &d.ovwork] {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                anyhow::bail!(
                    "the cache dir's path {s} has a ',' ':' or '\\' overlayfs cannot take"
                );
            }
        }
        Ok(d)
    }
}

/// `name=version` installed, `name=old->new` upgraded, and names removed.
type Changes = (Vec<String>, Vec<String>, Vec<String>);

/// The installation in the overlay. `Ok(Err(why))`: not equal by construction.
fn run(
    req: &Request,
    from: &RootInfo,
    d: &Dirs,
    added: &[String],
    dropped: &[String],
) -> Result<std::result::Result<Changes, String>> {
    seed_archives(&d.lower, &d.upper, req.debs)?;
    write_apt_conf(d, req.sources)?;
    let apt = |args: &[String]| -> Cmd {
        Cmd::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(SETUP)
            .arg("kiln-delta")
            .arg(&d.lower)
            .arg(&d.upper)
            .arg(&d.ovwork)
            .arg(&d.merged)
            .args(args)
            .env("APT_CONFIG", &d.conf)
            .env("SOURCE_DATE_EPOCH", from.epoch.to_string())
            .env("INITRD", "No")
            .env("LC_ALL", "C.UTF-8")
            .env("LANGUAGE", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
            .env_remove("TMPDIR")
    };
    let mut get: Vec<String> = vec![
        "apt-get".into(),
        "--yes".into(),
        "-o".into(),
        format!("DPkg::Chroot-Directory={}", d.merged.display()),
        "--purge".into(),
    ];
    // The cached root was built with other contents of the extra repositories: apt's
    // lists are updated, and every package goes to the version a fresh bootstrap would
    // install (`dist-upgrade` also installs the added packages).
    let upgrade = from.base != req.base;
    if upgrade {
        apt(&["apt-get".to_string(), "update".into()])
            .run_logged(req.log)
            .context("updating apt's lists for the changed repositories")?;
        let read =
            |name: &str| read_merged(&d.lower, &d.upper, &format!("var/lib/apt/lists/{name}"));
        let seen = super::sources::mirror_state_with(req.sources, &read)?;
        let mut want = req.mirror.to_vec();
        want.sort();
        if seen != want {
            return Ok(Err(
                "apt's lists changed between reading the mirror state and updating them".into(),
            ));
        }
        if let Some(why) = repositories_choose_nothing(req.sources, &d.lower, &d.upper)? {
            return Ok(Err(why));
        }
        get.extend(["--auto-remove".into(), "dist-upgrade".into()]);
        get.extend(added.iter().cloned());
        get.extend(req.exclude.iter().map(|x| format!("{x}-")));
    } else if added.is_empty() {
        get.push("autoremove".into());
    } else {
        get.extend(["--auto-remove".into(), "install".into()]);
        get.extend(added.iter().cloned());
        get.extend(req.exclude.iter().map(|x| format!("{x}-")));
    }
    if !dropped.is_empty() {
        let mut mark = vec!["apt-mark".to_string(), "auto".into()];
        mark.extend(dropped.iter().cloned());
        apt(&mark)
            .run_logged(req.log)
            .context("marking the dropped packages as automatically installed")?;
    }
    let mut sim = get.clone();
    sim.insert(1, "--simulate".into());
    let out = apt(&sim).read().context("simulating the package changes")?;
    let actions = parse_simulation(&out);
    if actions.iter().any(|a| matches!(a, Action::Install { .. })) {
        let mut dl = get.clone();
        dl.insert(1, "--download-only".into());
        apt(&dl)
            .run_logged(req.log)
            .context("downloading the added packages")?;
    }
    if let Err(why) = check_actions(&actions, &d.lower, &d.upper, &d.ctrl, upgrade) {
        return Ok(Err(why));
    }
    apt(&get)
        .run_logged(req.log)
        .context("installing the package changes")?;
    if upgrade {
        if let Some(why) = not_at_candidate(&apt, d)? {
            return Ok(Err(why));
        }
    }
    keep_debs(&d.upper, req.debs)?;
    clean_upper(&d.upper)?;
    if let Some(p) = script_output(&d.upper)? {
        return Ok(Err(format!(
            "the package changes wrote {p}, which only maintainer scripts write"
        )));
    }
    let mut installed = Vec::new();
    let mut upgraded = Vec::new();
    let mut removed = Vec::new();
    for a in actions {
        match a {
            Action::Install {
                name, version, old, ..
            } => {
                if let Some(o) = old {
                    upgraded.push(format!("{name}={o}->{version}"));
                }
                installed.push(format!("{name}={version}"));
            }
            Action::Remove { name } => removed.push(name),
        }
    }
    Ok(Ok((installed, upgraded, removed)))
}

/// apt's configuration, as mmdebstrap writes it for its own apt runs, and the sources.
fn write_apt_conf(d: &Dirs, sources: &[super::sources::AptSource]) -> Result<()> {
    let mut list = String::new();
    for s in sources {
        list.push_str(&s.line());
        list.push('\n');
    }
    super::layout::write_file(&d.list, list.as_bytes(), 0o644)?;
    let (conf, merged) = (&d.conf, &d.merged);
    let arch = Cmd::new("dpkg")
        .arg("--print-architecture")
        .read()
        .context("asking dpkg for the architecture")?;
    let arch = arch.trim();
    let m = merged.display();
    let (list, parts) = (d.list.display(), d.parts.display());
    let text = format!(
        "Apt::Architecture \"{arch}\";\n\
         Apt::Architectures \"{arch}\";\n\
         Dir \"{m}\";\n\
         Dir::State::Status \"{m}/var/lib/dpkg/status\";\n\
         Dir::Etc::Trusted \"/etc/apt/trusted.gpg\";\n\
         Dir::Etc::TrustedParts \"/etc/apt/trusted.gpg.d\";\n\
         Dir::Etc::SourceList \"{list}\";\n\
         Dir::Etc::SourceParts \"{parts}\";\n\
         pkgCacheGen::ForceEssential \",\";\n\
         Apt::Install-Recommends false;\n\
         Acquire::Languages \"none\";\n\
         DPkg::Options {{ \"--force-unsafe-io\"; }};\n"
    );
    super::layout::write_file(conf, text.as_bytes(), 0o644)
}

/// Hard links of the cached `.deb`s into the upper directory's apt archive (its parent
/// directories made with the lower's modes), as the bootstrap's setup hook does.
fn seed_archives(lower: &Path, upper: &Path, debs: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut rel = PathBuf::new();
    for c in ["var", "cache", "apt", "archives"] {
        rel.push(c);
        let (l, u) = (lower.join(&rel), upper.join(&rel));
        let md = std::fs::metadata(&l).with_context(|| format!("stat {}", l.display()))?;
        std::fs::create_dir_all(&u).with_context(|| format!("creating {}", u.display()))?;
        std::fs::set_permissions(&u, std::fs::Permissions::from_mode(md.mode_bits()))
            .with_context(|| format!("chmod {}", u.display()))?;
    }
    let arch = upper.join(&rel);
    for e in std::fs::read_dir(debs).with_context(|| format!("listing {}", debs.display()))? {
        let e = e.with_context(|| format!("listing {}", debs.display()))?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let dst = arch.join(e.file_name());
            if std::fs::hard_link(&p, &dst).is_err() {
                std::fs::copy(&p, &dst)
                    .with_context(|| format!("copying {} to {}", p.display(), dst.display()))?;
            }
        }
    }
    Ok(())
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}

impl ModeBits for std::fs::Metadata {
    fn mode_bits(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        self.mode() & 0o7777
    }
}

/// The archive, apt's binary caches and `lists/auxfiles`, the logs and ldconfig's
/// aux-cache go (mmdebstrap's `apt-get clean`, apt and reproducible clean-up).
fn clean_upper(upper: &Path) -> Result<()> {
    let arch = upper.join("var/cache/apt/archives");
    if let Ok(rd) = std::fs::read_dir(&arch) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                super::overlay::remove_any(&e.path())?;
            }
        }
    }
    for p in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/alternatives.log",
        "var/log/apt/eipp.log.xz",
        "var/cache/ldconfig/aux-cache",
        "var/lib/apt/lists/auxfiles",
    ] {
        super::overlay::remove_any(&upper.join(p))?;
    }
    Ok(())
}

/// Downloads not yet in the `.deb` cache go there (hard links).
fn keep_debs(upper: &Path, debs: &Path) -> Result<()> {
    let arch = upper.join("var/cache/apt/archives");
    let Ok(rd) = std::fs::read_dir(&arch) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        let dst = debs.join(e.file_name());
        if p.extension().is_some_and(|x| x == "deb")
            && !dst.exists()
            && std::fs::hard_link(&p, &dst).is_err()
        {
            std::fs::copy(&p, &dst)
                .with_context(|| format!("copying {} to {}", p.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// apt's `--simulate` output: `Inst NAME [OLD] (VERSION ... [ARCH])`, `Remv NAME [V]`,
/// `Purg NAME [V]`.
fn parse_simulation(out: &str) -> Vec<Action> {
    let mut v = Vec::new();
    for line in out.lines() {
        let mut t = line.split_whitespace();
        match (t.next(), t.next()) {
            (Some("Inst"), Some(name)) => {
                let rest: Vec<&str> = t.collect();
                let mut i = 0;
                let old = match rest.first() {
                    Some(o) if o.starts_with('[') => {
                        i = 1;
                        Some(o.trim_matches(|c| c == '[' || c == ']').to_string())
                    }
                    _ => None,
                };
                let version = rest
                    .get(i)
                    .map(|s| s.trim_start_matches('(').to_string())
                    .unwrap_or_default();
                let arch = rest
                    .last()
                    .map(|s| {
                        s.trim_matches(|c| c == '[' || c == ']' || c == ')')
                            .to_string()
                    })
                    .unwrap_or_default();
                v.push(Action::Install {
                    name: name.to_string(),
                    old,
                    version,
                    arch,
                });
            }
            (Some("Remv" | "Purg"), Some(name)) => {
                let a = Action::Remove {
                    name: name.to_string(),
                };
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            _ => {}
        }
    }
    v
}

/// Every package apt would touch must be safe to install or remove on its own.
fn check_actions(
    actions: &[Action],
    lower: &Path,
    upper: &Path,
    ctrl: &Path,
    upgrade: bool,
) -> std::result::Result<(), String> {
    let watched = file_triggers(lower);
    for a in actions {
        match a {
            Action::Install {
                name,
                old: Some(old),
                version,
                ..
            } if !upgrade => {
                return Err(format!(
                    "{name} would be upgraded ({old} to {version}) though the sources did \
                     not change"
                ))
            }
            Action::Install {
                name,
                old: Some(old),
                version,
                arch,
            } => {
                // The old version's removal and the new one's install must both be safe,
                // and nothing may stay from the old one: no conffiles (dpkg keeps those
                // the new version drops), not essential (mmdebstrap installs those
                // before apt runs).
                check_removal(name, lower, &watched)?;
                let info = lower.join("var/lib/dpkg/info");
                if [
                    format!("{name}.conffiles"),
                    format!("{name}:{arch}.conffiles"),
                ]
                .iter()
                .any(|f| info.join(f).exists())
                {
                    return Err(format!(
                        "{name} {old} has conffiles; upgrades of those are bootstrapped"
                    ));
                }
                let file = format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"));
                let deb = upper.join("var/cache/apt/archives").join(file);
                let dir = ctrl.join(name);
                check_deb(name, &deb, &dir, &watched).map_err(|e| e.to_string())?;
                if dir.join("conffiles").exists() {
                    return Err(format!(
                        "{name} {version} has conffiles; upgrades of those are bootstrapped"
                    ));
                }
                let control = std::fs::read_to_string(dir.join("control")).unwrap_or_default();
                if control.lines().any(|l| l.trim() == "Essential: yes") {
                    return Err(format!(
                        "{name} is essential: a fresh bootstrap installs it before apt runs"
                    ));
                }
            }
            Action::Install {
                name,
                version,
                arch,
                ..
            } => {
                let file = format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"));
                let deb = upper.join("var/cache/apt/archives").join(file);
                check_deb(name, &deb, &ctrl.join(name), &watched).map_err(|e| e.to_string())?;
            }
            Action::Remove { name } => check_removal(name, lower, &watched)?,
        }
    }
    Ok(())
}

/// A file of the overlay as it shows through the mount: the upper's (a whiteout: none)
/// or else the lower's.
fn read_merged(lower: &Path, upper: &Path, rel: &str) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileTypeExt;
    let u = upper.join(rel);
    match std::fs::symlink_metadata(&u) {
        Ok(m) if m.file_type().is_char_device() => return Ok(None),
        Ok(_) => {
            return Ok(Some(
                std::fs::read(&u).with_context(|| format!("reading {}", u.display()))?,
            ))
        }
        Err(_) => {}
    }
    let l = lower.join(rel);
    match std::fs::read(&l) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", l.display())),
    }
}

/// Why a fresh bootstrap could select other packages than the cached root's because of
/// the extra repositories' contents, before or after the update: a package of theirs
/// that is essential or of priority required (mmdebstrap's minbase selects those), or
/// that provides another (apt may pick another provider when resolving from nothing).
/// Also a package whose name and version stayed but whose `.deb` (sha256) changed.
/// `None`: their packages are installed only when named or depended on by name.
fn repositories_choose_nothing(
    sources: &[super::sources::AptSource],
    lower: &Path,
    upper: &Path,
) -> Result<Option<String>> {
    let debian: Vec<String> = sources
        .iter()
        .filter(|s| !s.is_extra())
        .map(super::sources::list_prefix)
        .collect();
    let lists = "var/lib/apt/lists";
    let mut names = BTreeSet::new();
    for dir in [lower.join(lists), upper.join(lists)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                names.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    // (package, version) -> sha256 of the `.deb`, before and after.
    let mut debs: [std::collections::BTreeMap<(String, String), String>; 2] = Default::default();
    for name in names {
        if !name.ends_with("_Packages") || debian.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        // Before (the lower's) and after (the overlay's view).
        let rel = format!("{lists}/{name}");
        let old = std::fs::read(lower.join(&rel)).ok();
        let new = read_merged(lower, upper, &rel)?;
        for (i, text) in [old, new].into_iter().enumerate() {
            let Some(text) = text else { continue };
            for st in String::from_utf8_lossy(&text).split("\n\n") {
                let field = |k: &str| {
                    st.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                };
                if let (Some(p), Some(v), Some(h)) =
                    (field("Package:"), field("Version:"), field("SHA256:"))
                {
                    debs[i].insert((p, v), h);
                }
            }
            for l in String::from_utf8_lossy(&text).lines() {
                let l = l.trim();
                if l == "Essential: yes" || l == "Priority: required" || l.starts_with("Provides:")
                {
                    return Ok(Some(format!(
                        "a repository's package list ({name}) has `{l}`: a fresh bootstrap \
                         may select other packages than the cached root has"
                    )));
                }
            }
        }
    }
    // apt sees one name and version as one package whatever its bytes: the cached root
    // would keep the old bytes where a fresh bootstrap installs the new ones.
    for ((p, v), h) in &debs[0] {
        if debs[1].get(&(p.clone(), v.clone())).is_some_and(|n| n != h) {
            return Ok(Some(format!(
                "{p} {v} has other contents in the changed repositories than when the \
                 cached root was built"
            )));
        }
    }
    Ok(None)
}

/// After an upgrade: the first installed package whose version is not the one apt
/// would install now (a fresh bootstrap installs candidates only), described.
fn not_at_candidate(apt: &dyn Fn(&[String]) -> Cmd, d: &Dirs) -> Result<Option<String>> {
    let admin = format!("--admindir={}/var/lib/dpkg", d.merged.display());
    let out = apt(&[
        "dpkg-query".into(),
        admin,
        "-W".into(),
        "-f".into(),
        "${db:Status-Abbrev}\t${Package}\n".into(),
    ])
    .read()
    .context("listing the installed packages")?;
    let names: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("ii"))
        .filter_map(|l| l.split('\t').nth(1).map(String::from))
        .collect();
    let mut args = vec!["apt-cache".to_string(), "policy".into()];
    args.extend(names);
    let out = apt(&args).read().context("asking apt for the candidates")?;
    let (mut name, mut installed) = (String::new(), String::new());
    for l in out.lines() {
        if !l.starts_with(' ') && l.ends_with(':') {
            name = l.trim_end_matches(':').to_string();
        } else if let Some(v) = l.trim().strip_prefix("Installed: ") {
            installed = v.to_string();
        } else if let Some(c) = l.trim().strip_prefix("Candidate: ") {
            if c != installed {
                return Ok(Some(format!(
                    "{name} stays at {installed} where a fresh bootstrap would install {c}"
                )));
            }
        }
    }
    Ok(None)
}

/// A package's failed check: the reason, or an error (which also means no delta).
#[derive(Debug)]
struct Unsafe(String);

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_deb(
    name: &str,
    deb: &Path,
    dir: &Path,
    watched: &[(String, String)],
) -> std::result::Result<(), Unsafe> {
    let err = |e: anyhow::Error| Unsafe(format!("{name}: {e:#}"));
    Cmd::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(dir)
        .run()
        .map_err(|e| err(e.context(format!("reading {}", deb.display()))))?;
    let mut members: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| err(e.into()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    for m in &members {
        if m == "triggers" {
            let text = std::fs::read_to_string(dir.join(m)).map_err(|e| err(e.into()))?;
            for l in text.lines().map(str::trim) {
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                if !matches!(l, "activate-noawait ldconfig" | "activate ldconfig") {
                    return Err(Unsafe(format!("{name} has the trigger `{l}`")));
                }
            }
        } else if !ALLOWED_CONTROL.contains(&m.as_str()) {
            // (conffiles are allowed for new packages; upgrades check them apart)
            return Err(Unsafe(format!(
                "{name} has a {m} (maintainer script or debconf)"
            )));
        }
    }
    let control = std::fs::read_to_string(dir.join("control")).map_err(|e| err(e.into()))?;
    for l in control.lines() {
        if (l.starts_with("Depends:") || l.starts_with("Pre-Depends:")) && l.contains('|') {
            return Err(Unsafe(format!(
                "{name} has a dependency with alternatives ({}): a fresh install may choose \
                 another",
                l.trim()
            )));
        }
    }
    let list = Cmd::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .read()
        .map_err(|e| err(e.context("listing the package's files")))?;
    let files: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| format!("/{}", p.trim_start_matches("./").trim_end_matches('/')))
        .collect();
    if let Some(w) = watching(&files, watched) {
        return Err(Unsafe(format!("{name} installs {w}")));
    }
    Ok(())
}

fn check_removal(
    name: &str,
    lower: &Path,
    watched: &[(String, String)],
) -> std::result::Result<(), String> {
    let info = lower.join("var/lib/dpkg/info");
    let arch = std::fs::read_to_string(lower.join("var/lib/dpkg/arch")).unwrap_or_default();
    let arch = arch.lines().next().unwrap_or("").trim().to_string();
    let mut list = None;
    for stem in [name.to_string(), format!("{name}:{arch}")] {
        for s in ["preinst", "postinst", "prerm", "postrm"] {
            if info.join(format!("{stem}.{s}")).exists() {
                return Err(format!("removing {name} runs its {s}"));
            }
        }
        if let Ok(t) = std::fs::read_to_string(info.join(format!("{stem}.list"))) {
            list = Some(t);
        }
    }
    let files: Vec<String> = list.unwrap_or_default().lines().map(String::from).collect();
    if let Some(w) = watching(&files, watched) {
        return Err(format!("removing {name} removes {w}"));
    }
    Ok(())
}

/// dpkg's file triggers in `lower`: (watched path, package).
fn file_triggers(lower: &Path) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(lower.join("var/lib/dpkg/triggers/File")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, pkg)| {
            (
                p.to_string(),
                pkg.split('/').next().unwrap_or(pkg).to_string(),
            )
        })
        .collect()
}

/// The first of `files` a file trigger watches, described.
fn watching(files: &[String], watched: &[(String, String)]) -> Option<String> {
    for f in files {
        for (w, pkg) in watched {
            if f == w || f.starts_with(&format!("{w}/")) {
                return Some(format!("{f}, which {pkg}'s file trigger watches ({w})"));
            }
        }
    }
    None
}

/// A file only maintainer scripts write, found in the upper directory.
fn script_output(upper: &Path) -> Result<Option<String>> {
    for p in SCRIPT_OUTPUTS {
        if std::fs::symlink_metadata(upper.join(p)).is_ok() {
            return Ok(Some(format!("/{p}")));
        }
    }
    let info = upper.join("var/lib/dpkg/info");
    if let Ok(rd) = std::fs::read_dir(&info) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let ext = n.rsplit('.').next().unwrap_or("");
            if [
                "preinst",
                "postinst",
                "prerm",
                "postrm",
                "config",
                "templates",
            ]
            .contains(&ext)
            {
                return Ok(Some(format!("/var/lib/dpkg/info/{n}")));
            }
        }
    }
    Ok(None)
}

/// Moves an overlayfs upper directory onto `dst` (the lower checkout): a whiteout
/// (character device 0/0) deletes, an opaque directory replaces, a directory takes the
/// upper's mode and owner, anything else is renamed in (overlayfs' own xattrs dropped).
/// Files of `dst` are only unlinked, never written.
pub fn apply_upper(upper: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rd = std::fs::read_dir(upper).with_context(|| format!("listing {}", upper.display()))?;
    let mut entries: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    entries.sort();
    for name in entries {
        let (u, t) = (upper.join(&name), dst.join(&name));
        let md = std::fs::symlink_metadata(&u).with_context(|| format!("stat {}", u.display()))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            super::overlay::remove_any(&t)?;
        } else if ft.is_dir() {
            let tmd = std::fs::symlink_metadata(&t).ok();
            let opaque = xattr(&u, "trusted.overlay.opaque").as_deref() == Some(b"y".as_ref());
            if opaque || !tmd.as_ref().is_some_and(|m| m.is_dir()) {
                super::overlay::remove_any(&t)?;
                std::fs::create_dir(&t).with_context(|| format!("creating {}", t.display()))?;
            }
            apply_upper(&u, &t)?;
            std::os::unix::fs::lchown(&t, Some(md.uid()), Some(md.gid()))
                .with_context(|| format!("chown {}", t.display()))?;
            std::fs::set_permissions(&t, md.permissions())
                .with_context(|| format!("chmod {}", t.display()))?;
        } else {
            super::overlay::remove_any(&t)?;
            std::fs::rename(&u, &t)
                .with_context(|| format!("moving {} to {}", u.display(), t.display()))?;
            drop_overlay_xattrs(&t)?;
        }
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("NUL in {}", p.display()))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = cpath(p).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Removes `trusted.overlay.*` attributes overlayfs may have set on a copied-up file.
fn drop_overlay_xattrs(p: &Path) -> Result<()> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Ok(());
    }
    buf.truncate(n as usize);
    for name in buf.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            let cn = std::ffi::CString::new(name.to_vec())
                .map_err(|_| anyhow!("bad xattr name on {}", p.display()))?;
            // SAFETY: valid NUL-terminated strings.
            if unsafe { libc::lremovexattr(c.as_ptr(), cn.as_ptr()) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("removing an overlayfs xattr of {}", p.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulations_are_read() {
        let out = "NOTE: This is only a simulation!\n\
            Inst libnl-3-200 (3.7.0-0.2+b1 Debian:12.5/stable [amd64])\n\
            Inst htop (3.2.2-2 Debian:12.5/stable [amd64])\n\
            Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])\n\
            Conf htop (3.2.2-2 Debian:12.5/stable [amd64])\n\
            Purg less [590-2.1~deb12u2]\n\
            Remv less [590-2.1~deb12u2]\n";
        let a = parse_simulation(out);
        assert_eq!(
            a,
            vec![
                Action::Install {
                    name: "libnl-3-200".into(),
                    old: None,
                    version: "3.7.0-0.2+b1".into(),
                    arch: "amd64".into()
                },
                Action::Install {
                    name: "htop".into(),
                    old: None,
                    version: "3.2.2-2".into(),
                    arch: "amd64".into()
                },
                Action::Install {
                    name: "tzdata".into(),
                    old: Some("2024a-0+deb12u1".into()),
                    version: "2025b-0+deb12u1".into(),
                    arch: "all".into()
                },
                Action::Remove {
                    name: "less".into()
                },
            ]
        );
    }

    #[test]
    fn changed_repositories_must_not_change_what_minbase_or_apt_would_pick() {
        let d = tempfile::tempdir().unwrap();
        let (lower, upper) = (d.path().join("lower"), d.path().join("upper"));
        let lists = "var/lib/apt/lists";
        std::fs::create_dir_all(lower.join(lists)).unwrap();
        std::fs::create_dir_all(upper.join(lists)).unwrap();
        let stanza = |v: &str, h: &str, extra: &str| {
            format!("Package: vendor-tool\nVersion: {v}\n{extra}SHA256: {h}\n\n")
        };
        let debian = super::super::sources::AptSource {
            uri: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
            ..Default::default()
        };
        let vendor = super::super::sources::AptSource {
            uri: "file:///srv/b".into(),
            suite: "./".into(),
            keyring: Some(("/k.gpg".into(), "00".repeat(32))),
            ..Default::default()
        };
        let srcs = [debian, vendor];
        // A Debian list is never read for this.
        std::fs::write(
            lower
                .join(lists)
                .join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"),
            "Package: base-files\nEssential: yes\n",
        )
        .unwrap();
        let old = lower.join(lists).join("_srv_a_._Packages");
        let new = upper.join(lists).join("_srv_b_._Packages");
        std::fs::write(&old, stanza("1.0", "aa", "")).unwrap();
        let check = |text: String| {
            std::fs::write(&new, text).unwrap();
            repositories_choose_nothing(&srcs, &lower, &upper).unwrap()
        };
        assert_eq!(check(stanza("2.0", "bb", "")), None);
        assert_eq!(check(stanza("1.0", "aa", "")), None);
        let why = check(stanza("1.0", "cc", "")).unwrap();
        assert!(why.contains("vendor-tool 1.0 has other contents"), "{why}");
        let why = check(stanza("2.0", "bb", "Priority: required\n")).unwrap();
        assert!(why.contains("Priority: required"), "{why}");
        let why = check(stanza("2.0", "bb", "Provides: tool\n")).unwrap();
        assert!(why.contains("Provides: tool"), "{why}");
    }

    #[test]
    fn watched_paths_match_whole_components() {
        let w = vec![("/usr/lib/binfmt.d".to_string(), "systemd".to_string())];
        assert!(watching(&["/usr/lib/binfmt.d/x.conf".into()], &w).is_some());
        assert!(watching(&["/usr/lib/binfmt.d".into()], &w).is_some());
        assert!(watching(&["/usr/lib/binfmt.dx".into()], &w).is_none());
    }

    #[test]
    fn an_upper_directory_is_applied_like_overlayfs_shows_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let (up, dst) = (d.path().join("upper"), d.path().join("dst"));
        std::fs::create_dir_all(dst.join("a/gone-dir/x")).unwrap();
        std::fs::create_dir_all(dst.join("opaque")).unwrap();
        std::fs::write(dst.join("a/keep"), "keep").unwrap();
        std::fs::write(dst.join("a/gone"), "gone").unwrap();
        std::fs::write(dst.join("a/changed"), "old").unwrap();
        std::fs::write(dst.join("opaque/old"), "old").unwrap();
        let orig = std::fs::metadata(dst.join("a/changed")).unwrap().ino();
        std::fs::create_dir_all(up.join("a/new-dir")).unwrap();
        std::fs::create_dir_all(up.join("opaque")).unwrap();
        std::fs::write(up.join("a/changed"), "new").unwrap();
        std::fs::write(up.join("a/new-dir/f"), "f").unwrap();
        std::fs::write(up.join("opaque/new"), "n").unwrap();
        std::fs::set_permissions(up.join("a/new-dir"), PermissionsExt::from_mode(0o700)).unwrap();
        for w in ["a/gone", "a/gone-dir"] {
            let c = cpath(&up.join(w)).unwrap();
            // SAFETY: a valid path.
            assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
        }
        let c = cpath(&up.join("opaque")).unwrap();
        // SAFETY: valid strings and value.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0);
        apply_upper(&up, &dst).unwrap();
        let read = |p: &str| std::fs::read_to_string(dst.join(p)).unwrap();
        assert_eq!(read("a/keep"), "keep");
        assert_eq!(read("a/changed"), "new");
        assert_ne!(
            std::fs::metadata(dst.join("a/changed")).unwrap().ino(),
            orig
        );
        assert_eq!(read("a/new-dir/f"), "f");
        assert_eq!(
            std::fs::metadata(dst.join("a/new-dir")).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(!dst.join("a/gone").exists() && !dst.join("a/gone-dir").exists());
        assert!(!dst.join("opaque/old").exists());
        assert_eq!(read("opaque/new"), "n");
        assert!(xattr(&dst.join("opaque"), "trusted.overlay.opaque").is_none());
    }
}
