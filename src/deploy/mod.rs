//! Deployments on a sysroot through libostree: status, deploy, upgrade, rollback, pin,
//! cleanup, kargs. [`cli`] holds the command-line front end; the functions here are the
//! one deploy path that `kiln deploy`, `kiln upgrade`, `kiln image` and the installer use.
//!
//! Every sysroot kiln creates boots through libostree's `grub2` backend with kiln as its
//! config generator ([`grub`]): libostree writes `boot/loader.N/grub.cfg` from the new
//! boot entries on every deployment change and swaps the `boot/loader` symlink
//! atomically; the image's static GRUB config reads `/loader/grub.cfg`. Sysroots made by
//! older kiln keep libostree's `syslinux` backend (read with `syslinux_source`).

pub mod agent;
pub mod bootcount;
pub mod cli;
pub mod follow;
pub mod grub;
pub mod health;
pub mod image;
pub mod last_check;
pub mod ops;
pub mod safety;
pub mod status;
pub mod trial;
pub mod upgrade;
use crate::error::InputError;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the commit to deploy comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local OSTree repo (any mode); objects are pulled into the sysroot's repo.
    LocalRepo(PathBuf),
    /// A remote configured in the sysroot's repo.
    Remote(String),
    /// The commit is already in the sysroot's repo.
    Sysroot,
}

/// One deploy operation.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub sysroot: PathBuf,
    /// Stateroot name.
    pub os: String,
    pub source: Source,
    /// Ref or checksum.
    pub rev: String,
    /// `Some`: exactly these kernel arguments; `None`: inherit the merge deployment's
    /// (or, for a first deployment, the commit's `kiln.kargs` metadata).
    pub kargs: Option<Vec<String>>,
}

/// What a deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployOutcome {
    pub commit: String,
    pub version: Option<String>,
    /// True when the deployment was staged (booted system; finalized at shutdown).
    pub staged: bool,
}

/// The `TIMEOUT` line older kiln put in a sysroot's syslinux.cfg (the `syslinux` backend,
/// kept for sysroots made before the `grub2` one). libostree keeps non-ostree lines across
/// rewrites; GRUB's `syslinux_source` turns a TIMEOUT (tenths of a second) into a menu
/// with one entry per deployment (default first, rollback second).
pub const SYSLINUX_HEADER: &str = "TIMEOUT 30\n";

/// The boot-loader backend a new sysroot gets (repo config `sysroot.bootloader`).
pub const BOOTLOADER: &str = "grub2";

/// Creates the sysroot layout (`ostree admin init-fs`) and the stateroot when missing,
/// and the boot-entry mechanism: a new sysroot gets repo config
/// `sysroot.bootloader=grub2` ([`BOOTLOADER`]; kiln writes the menu, see [`grub`]). A
/// sysroot that already names a backend keeps it; one on `syslinux` (made by older kiln)
/// keeps its loader files (`boot/loader.0/syslinux.cfg` with [`SYSLINUX_HEADER`],
/// `boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg`). Idempotent.
pub fn init_sysroot(path: &Path, os: &str) -> Result<()> {
    validate_os_name(os)?;
    require_root(path, "initializing a sysroot")?;
    safety::guard_host_filesystem(path);
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating sysroot directory {}", path.display()))?;
    // What `ostree admin init-fs` creates.
    for (dir, mode) in [
        ("boot", 0o755),
        ("dev", 0o755),
        ("home", 0o755),
        ("proc", 0o755),
        ("run", 0o755),
        ("sys", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        let p = path.join(dir);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", p.display()))?;
        }
    }
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .ensure_initialized(gio::Cancellable::NONE)
        .with_context(|| format!("initializing the OSTree sysroot {}", path.display()))?;
    let locked = Locked::lock(sysroot, path)?;
    let sysroot = &locked.sysroot;
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading sysroot {}", path.display()))?;

    let repo = sysroot.repo();
    let config = repo.copy_config();
    match config.string("sysroot", "bootloader").ok().as_deref() {
        Some("syslinux") => ensure_boot_loader_files(path)?,
        Some(b) if b == BOOTLOADER => {}
        _ => {
            config.set_string("sysroot", "bootloader", BOOTLOADER);
            repo.write_config(&config).with_context(|| {
                format!("setting sysroot.bootloader={BOOTLOADER} in the sysroot's repo config")
            })?;
        }
    }

    if !path.join("ostree/deploy").join(os).is_dir() {
        sysroot
            .init_osname(os, gio::Cancellable::NONE)
            .with_context(|| format!("creating stateroot {os:?} in {}", path.display()))?;
    }
    Ok(())
}

/// The loader files libostree's syslinux backend needs (sysroots made by older kiln).
fn ensure_boot_loader_files(path: &Path) -> Result<()> {
    let boot = path.join("boot");
    let loader = boot.join("loader");
    if std::fs::symlink_metadata(&loader).is_err() {
        let l0 = boot.join("loader.0");
        std::fs::create_dir_all(&l0).with_context(|| format!("creating {}", l0.display()))?;
        let cfg = l0.join("syslinux.cfg");
        if !cfg.exists() {
            write_atomic(&cfg, SYSLINUX_HEADER.as_bytes())?;
        }
        let tmp = boot.join("loader.kiln-tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink("loader.0", &tmp).with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::rename(&tmp, &loader)
            .with_context(|| format!("renaming {} into place", loader.display()))?;
    }
    let sdir = boot.join("syslinux");
    std::fs::create_dir_all(&sdir).with_context(|| format!("creating {}", sdir.display()))?;
    let scfg = sdir.join("syslinux.cfg");
    if std::fs::symlink_metadata(&scfg).is_err() {
        symlink("../loader/syslinux.cfg", &scfg)
            .with_context(|| format!("creating {}", scfg.display()))?;
    }
    Ok(())
}

pub(crate) use crate::cleanup::write_atomic;

/// Pulls the commit into the sysroot and deploys it as the next boot, with the current
/// default deployment as the merge deployment (3-way /etc merge). Initializes the sysroot
/// first when needed (a local repo source only). Nothing is changed when the ref or commit
/// does not exist. On a booted OSTree system (`/run/ostree-booted`, sysroot `/`) the
/// deployment is staged and finalized at shutdown.
pub fn deploy(req: &DeployRequest) -> Result<DeployOutcome> {
    // The whole request is checked before anything is written: names, the ref and every
    // kernel argument the new deployment would get.
    validate_os_name(&req.os)?;
    crate::validate::rev(&req.rev)
        .map_err(|m| InputError::new(CMDLINE, format!("nothing to deploy: {m}")).key("REF"))?;
    if let Source::Remote(name) = &req.source {
        crate::validate::remote_name(name)
            .map_err(|m| InputError::new(CMDLINE, m).key("--remote"))?;
        if req.rev.contains(':') {
            return Err(InputError::new(
                CMDLINE,
                format!(
                    "{:?}: with --remote {name}, name the ref alone (without REMOTE:)",
                    req.rev
                ),
            )
            .key("REF")
            .into());
        }
    }
    if let Some(k) = &req.kargs {
        check_kargs(k, CMDLINE, "--karg", true)?;
    }
    safety::guard_host_filesystem(&req.sysroot);
    // Check the source before touching the sysroot, so a typo changes nothing.
    if let Source::LocalRepo(dir) = &req.source {
        let src = open_source_repo(dir)?;
        let checksum = crate::repo::resolve(&src, &req.rev)?.ok_or_else(|| {
            anyhow!(
                "no ref or commit {:?} in the repo {} (see `ostree refs --repo {}`)",
                req.rev,
                dir.display(),
                dir.display()
            )
        })?;
        // A first deployment takes the commit's kernel arguments: check them now.
        let first = !is_initialized(&req.sysroot)
            || load_readonly(&req.sysroot)?
                .merge_deployment(Some(&req.os))
                .is_none();
        if req.kargs.is_none() && first {
            let info = crate::repo::read_commit(&src, &checksum)?;
            check_kargs(
                &info.meta_list(crate::repo::keys::KARGS),
                &format!("commit {checksum}"),
                crate::repo::keys::KARGS,
                true,
            )?;
        }
    }
    if req.kargs.is_none() && is_initialized(&req.sysroot) {
        if let Some(m) = load_readonly(&req.sysroot)?.merge_deployment(Some(&req.os)) {
            check_inherited_kargs(&m)?;
        }
    }
    require_root(&req.sysroot, "deploying")?;
    match &req.source {
        Source::Sysroot if is_initialized(&req.sysroot) => {
            let ro = load_readonly(&req.sysroot)?;
            crate::repo::resolve(&ro.repo(), &req.rev)?.ok_or_else(|| {
                anyhow!(
                    "no ref or commit {:?} in the repo of sysroot {}; pass --repo DIR or \
                     --remote NAME to pull it",
                    req.rev,
                    req.sysroot.display()
                )
            })?;
        }
        Source::Remote(name) if is_initialized(&req.sysroot) => {
            let ro = load_readonly(&req.sysroot)?;
            if !ro.repo().remote_list().iter().any(|r| r.as_str() == name) {
                bail!("no remote {name:?} is configured in the sysroot's repo");
            }
        }
        _ => {}
    }
    match &req.source {
        Source::LocalRepo(_) => {
            if !is_initialized(&req.sysroot) || !stateroot_exists(&req.sysroot, &req.os) {
                init_sysroot(&req.sysroot, &req.os)?;
            }
        }
        _ => {
            ensure_initialized(&req.sysroot)?;
            if !stateroot_exists(&req.sysroot, &req.os) {
                init_sysroot(&req.sysroot, &req.os)?;
            }
        }
    }
    let locked = Locked::open(&req.sysroot)?;
    safety::point("deploy:locked");
    let repo = locked.sysroot.repo();
    let checksum = pull(&repo, &req.source, &req.rev)?;
    safety::point("deploy:pulled");
    let refspec = match (&req.source, is_checksum(&req.rev)) {
        (Source::Remote(r), false) => format!("{r}:{}", req.rev),
        _ => req.rev.clone(),
    };
    deploy_locked(
        &locked,
        &req.os,
        &checksum,
        &refspec,
        req.kargs.clone(),
        None,
    )
}

/// Makes the deployments of `os` that follow `ref_` follow it on remote `remote` instead
/// (origin refspec `REMOTE:REF`), in place: no new deployment, same boot entries. Image
/// builds use it so machines upgrade from the fleet's server out of the box. Returns how
/// many deployments changed.
pub fn follow_remote(sysroot_path: &Path, os: &str, ref_: &str, remote: &str) -> Result<usize> {
    let locked = Locked::open(sysroot_path)?;
    let sysroot = &locked.sysroot;
    if !sysroot
        .repo()
        .remote_list()
        .iter()
        .any(|r| r.as_str() == remote)
    {
        bail!("no remote {remote:?} is configured in the sysroot's repo");
    }
    let refspec = format!("{remote}:{ref_}");
    let mut changed = 0;
    for d in sysroot.deployments() {
        if d.osname() != os {
            continue;
        }
        let follows = status::refspec_of(&d)
            .map(|r| ops::split_refspec(&r).1 == ref_)
            .unwrap_or(false);
        if !follows {
            continue;
        }
        let origin = sysroot.origin_new_from_refspec(&refspec);
        sysroot
            .write_origin_file(&d, Some(&origin), gio::Cancellable::NONE)
            .with_context(|| format!("writing the origin {refspec} of deployment {}", d.csum()))?;
        changed += 1;
    }
    Ok(changed)
}

/// The kernel arguments a new deployment inherits from `merge`, checked.
pub(crate) fn check_inherited_kargs(merge: &ostree::Deployment) -> Result<Vec<String>> {
    let k = status::kargs_of(merge);
    check_kargs(
        &k,
        &format!("deployment {}.{}", merge.csum(), merge.deployserial()),
        "kernel arguments (inherited; give the whole set with `kiln deploy --karg`)",
        false,
    )?;
    Ok(k)
}

/// "command line": where options given to kiln come from, in [`InputError`]s.
pub(crate) const CMDLINE: &str = "command line";

/// Checks every kernel argument of `kargs` with the one rule for kernel arguments
/// ([`crate::validate::user_kernel_arg`] when `user`, else
/// [`crate::validate::kernel_arg`]); `file` and `key` name where they come from.
pub(crate) fn check_kargs(kargs: &[String], file: &str, key: &str, user: bool) -> Result<()> {
    for k in kargs {
        let r = if user {
            crate::validate::user_kernel_arg(k)
        } else {
            crate::validate::kernel_arg(k)
        };
        r.map_err(|m| InputError::new(file, m).key(key))?;
    }
    Ok(())
}

/// Deploys `checksum` (already in the sysroot repo) with origin `refspec` as the next boot.
/// `kargs`: `Some` = exactly these; `None` = inherit from the merge deployment (or the
/// commit's `kiln.kargs` for a first deployment). `origin`: an explicit origin keyfile
/// (kargs changes keep the old one); otherwise one made from `refspec`.
pub(crate) fn deploy_locked(
    locked: &Locked,
    os: &str,
    checksum: &str,
    refspec: &str,
    kargs: Option<Vec<String>>,
    origin: Option<glib::KeyFile>,
) -> Result<DeployOutcome> {
    let sysroot = &locked.sysroot;
    let repo = sysroot.repo();
    let info = crate::repo::read_commit(&repo, checksum)?;
    let merge = sysroot.merge_deployment(Some(os));
    // The new deployment's kernel arguments, spelled out and checked before the first
    // write: a bad one (a newline, `ostree=`) would leave a boot entry libostree itself
    // cannot load, after the boot-entry swap.
    let kargs = match (kargs, &merge) {
        (Some(k), _) => {
            check_kargs(&k, CMDLINE, "--karg", true)?;
            k
        }
        (None, Some(m)) => check_inherited_kargs(m)?,
        (None, None) => {
            let k = info.meta_list(crate::repo::keys::KARGS);
            check_kargs(
                &k,
                &format!("commit {checksum}"),
                crate::repo::keys::KARGS,
                true,
            )?;
            k
        }
    };
    let argv: Vec<&str> = kargs.iter().map(String::as_str).collect();
    let opts = ostree::SysrootDeployTreeOpts {
        override_kernel_argv: Some(&argv),
        ..Default::default()
    };
    let origin = origin.unwrap_or_else(|| sysroot.origin_new_from_refspec(refspec));
    let cancel = gio::Cancellable::NONE;
    let staged = sysroot.booted_deployment().is_some();
    if staged {
        let new = sysroot
            .stage_tree_with_options(
                Some(os),
                checksum,
                Some(&origin),
                merge.as_ref(),
                &opts,
                cancel,
            )
            .with_context(|| format!("staging commit {checksum} for the next boot"))?;
        safety::point("deploy:staged");
        // Finalized at shutdown: the trial is in place before the entries change.
        trial::start(sysroot, &new, true)?;
    } else {
        let new = sysroot
            .deploy_tree_with_options(
                Some(os),
                checksum,
                Some(&origin),
                merge.as_ref(),
                Some(&opts),
                cancel,
            )
            .with_context(|| format!("writing the deployment of commit {checksum}"))?;
        safety::point("deploy:tree-written");
        trial::start(sysroot, &new, merge.is_some())?;
        sysroot
            .simple_write_deployment(
                Some(os),
                &new,
                merge.as_ref(),
                ostree::SysrootSimpleWriteDeploymentFlags::NO_CLEAN,
                cancel,
            )
            .context("writing the new boot entries")?;
        if let Some(p) = sysroot.path().path() {
            safety::flush_boot(&p);
        }
        safety::point("deploy:boot-written");
        // The new boot entries are in place: from here on nothing may turn the deploy
        // into a failure. Leftovers of a failed cleanup go with the next `kiln cleanup`.
        if let Err(e) = sysroot.cleanup(cancel) {
            eprintln!(
                "kiln: warning: the deployment is complete, but removing deployments that \
                 are no longer listed failed (run `kiln cleanup`): {e}"
            );
        }
        safety::point("deploy:cleaned");
    }
    Ok(DeployOutcome {
        commit: checksum.to_string(),
        version: info.version,
        staged,
    })
}

/// Pulls `rev` from `source` into `repo` (the sysroot's) and returns its checksum.
/// Only the commit itself is pulled (depth 0); commits still deployed stay in the repo
/// through libostree's deployment refs.
pub(crate) fn pull(repo: &ostree::Repo, source: &Source, rev: &str) -> Result<String> {
    let cancel = gio::Cancellable::NONE;
    match source {
        Source::LocalRepo(dir) => {
            let abs = dir
                .canonicalize()
                .with_context(|| format!("finding the repo {}", dir.display()))?;
            let url = format!("file://{}", abs.display());
            let opts = glib::VariantDict::new(None);
            opts.insert_value("refs", &vec![rev.to_string()].to_variant());
            opts.insert_value("depth", &0i32.to_variant());
            opts.insert_value("gpg-verify", &false.to_variant());
            opts.insert_value("gpg-verify-summary", &false.to_variant());
            crate::repo::on_own_main_context(|| {
                repo.pull_with_options(&url, &opts.end(), None, cancel)
            })?
            .with_context(|| format!("pulling {rev:?} from {}", dir.display()))?;
            resolve_in(repo, rev)
        }
        Source::Remote(name) => {
            if is_checksum(rev) {
                if !repo.remote_list().iter().any(|r| r.as_str() == name) {
                    bail!("no remote {name:?} is configured in the sysroot's repo");
                }
                let opts = glib::VariantDict::new(None);
                opts.insert_value("refs", &vec![rev.to_string()].to_variant());
                opts.insert_value("depth", &0i32.to_variant());
                crate::repo::on_own_main_context(|| {
                    repo.pull_with_options(name, &opts.end(), None, cancel)
                })?
                .with_context(|| format!("pulling {rev:?} from remote {name:?}"))?;
                resolve_in(repo, rev)
            } else {
                let (c, _stats) = crate::repo::pull::pull(
                    repo,
                    name,
                    rev,
                    crate::repo::pull::PullKind::Full,
                    false,
                )?;
                Ok(c)
            }
        }
        Source::Sysroot => resolve_in(repo, rev),
    }
}

fn resolve_in(repo: &ostree::Repo, rev: &str) -> Result<String> {
    crate::repo::resolve(repo, rev)?
        .ok_or_else(|| anyhow!("no ref or commit {rev:?} in the sysroot's repo"))
}

pub(crate) fn open_source_repo(dir: &Path) -> Result<ostree::Repo> {
    if !dir.join("config").is_file() {
        return Err(InputError::new(
            CMDLINE,
            format!(
                "{} is not an OSTree repo (no config file); pass the repo `kiln compose` wrote",
                dir.display()
            ),
        )
        .key("--repo")
        .into());
    }
    crate::repo::open(dir)
}

/// A 64-character hex string: a commit checksum rather than a ref.
pub fn is_checksum(s: &str) -> bool {
    crate::validate::is_commit_checksum(s)
}

fn validate_os_name(os: &str) -> Result<()> {
    crate::validate::os_name(os).map_err(|m| InputError::new(CMDLINE, m).key("--os").into())
}

/// True when `path` holds an OSTree sysroot (`ostree/repo` and `ostree/deploy`).
pub fn is_initialized(path: &Path) -> bool {
    path.join("ostree/repo/config").is_file() && path.join("ostree/deploy").is_dir()
}

pub(crate) fn stateroot_exists(path: &Path, os: &str) -> bool {
    path.join("ostree/deploy").join(os).is_dir()
}

/// Fails with a clear message when `path` is not an initialized sysroot.
pub fn ensure_initialized(path: &Path) -> Result<()> {
    if !is_initialized(path) {
        bail!(
            "{} is not an initialized OSTree sysroot (no ostree/repo or ostree/deploy); \
             deploy a commit first: kiln deploy --sysroot {} --repo REPO REF",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Changing a sysroot needs root: deployments are root-owned and immutable, and the
/// boot entries live in /boot.
pub fn require_root(path: &Path, what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "permission denied: {what} changes the sysroot {} and needs root \
             (run it with sudo or as root)",
            path.display()
        );
    }
    Ok(())
}

/// True when `path` is the running system's root and it was booted from OSTree.
pub fn is_booted_host(path: &Path) -> bool {
    path.canonicalize()
        .map(|p| p == Path::new("/"))
        .unwrap_or(false)
        && Path::new("/run/ostree-booted").exists()
}

/// A loaded sysroot holding libostree's sysroot lock; unlocked on drop.
pub(crate) struct Locked {
    pub sysroot: ostree::Sysroot,
    /// Reaps libostree's watchdog forks once the sysroot is unlocked.
    _reaper: safety::ForkReaper,
}

impl Locked {
    /// Opens and loads an initialized sysroot for changes and takes its lock (waiting for
    /// another kiln or ostree process that holds it).
    pub(crate) fn open(path: &Path) -> Result<Locked> {
        ensure_initialized(path)?;
        require_root(path, "this command")?;
        safety::guard_host_filesystem(path);
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
        if is_booted_host(path) {
            // /sysroot and /boot are read-only on a booted system: let libostree remount
            // them writable in a private mount namespace.
            sysroot
                .initialize_with_mount_namespace(gio::Cancellable::NONE)
                .context("setting up a mount namespace to write the booted sysroot")?;
        }
        let locked = Locked::lock(sysroot, path)?;
        locked
            .sysroot
            .load(gio::Cancellable::NONE)
            .with_context(|| format!("loading sysroot {}", path.display()))?;
        Ok(locked)
    }

    fn lock(sysroot: ostree::Sysroot, path: &Path) -> Result<Locked> {
        // Whatever this write changes, libostree's grub2 backend runs kiln for the menu.
        grub::set_generator_env()?;
        let reaper = safety::ForkReaper::new();
        let got = sysroot
            .try_lock()
            .with_context(|| format!("locking sysroot {}", path.display()))?;
        if !got {
            eprintln!(
                "kiln: waiting for another process (kiln or ostree) to release the lock on {}",
                path.display()
            );
            sysroot
                .lock()
                .with_context(|| format!("locking sysroot {}", path.display()))?;
        }
        Ok(Locked {
            sysroot,
            _reaper: reaper,
        })
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        self.sysroot.unlock();
    }
}

/// Loads a sysroot for reading (no lock, no root needed).
pub(crate) fn load_readonly(path: &Path) -> Result<ostree::Sysroot> {
    ensure_initialized(path)?;
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading sysroot {}", path.display()))?;
    Ok(sysroot)
}
