//! Command-line front end of the deployment commands. Semantics: docs/updating.md.

use super::ops::{self, KargsEdit};
use super::upgrade::{UpgradeOptions, UpgradeOutcome};
use super::{status, DeployRequest, Source};
use anyhow::{Context, Result};
use std::path::PathBuf;

// Value parsers: every value is checked by the one rule for its kind (crate::validate)
// when the command line is parsed, so a bad one is a usage error (exit 2) before any work.

pub(crate) fn parse_user_karg(s: &str) -> Result<String, String> {
    crate::validate::user_kernel_arg(s).map(|()| s.to_string())
}

pub(crate) fn parse_os(s: &str) -> Result<String, String> {
    crate::validate::os_name(s).map(|()| s.to_string())
}

pub(crate) fn parse_remote(s: &str) -> Result<String, String> {
    crate::validate::remote_name(s).map(|()| s.to_string())
}

pub(crate) fn parse_abs_path(s: &str) -> Result<PathBuf, String> {
    crate::validate::abs_path(s).map(|()| PathBuf::from(s))
}

/// A ref, a commit checksum, or an image (`ostree-image-signed:docker://…`).
pub(crate) fn parse_target(s: &str) -> Result<String, String> {
    if crate::repo::oci::is_image_ref(s) {
        crate::validate::image_ref(s).map(|()| s.to_string())
    } else {
        crate::validate::rev(s).map(|()| s.to_string())
    }
}

pub(crate) fn parse_rev(s: &str) -> Result<String, String> {
    crate::validate::rev(s).map(|()| s.to_string())
}

/// Arguments every sysroot command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SysrootArgs {
    /// The sysroot to act on (a directory holding ostree/ and boot/, or / on a booted
    /// OSTree system).
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
    /// The stateroot (OS name); default: the booted one, else the next boot's, else `kiln`.
    #[arg(long = "os", value_parser = parse_os)]
    pub os: Option<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

impl SysrootArgs {
    pub(crate) fn os(&self) -> String {
        self.os
            .clone()
            .unwrap_or_else(|| ops::default_os(&self.sysroot))
    }
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// Ref or commit checksum to deploy, or a container image to follow:
    /// `ostree-image-signed:docker://HOST/REPO:TAG` (verified against the machine's
    /// containers policy), `ostree-unverified-registry:HOST/REPO:TAG` (not verified).
    #[arg(value_parser = parse_target)]
    pub rev: String,
    /// Pull from this local repo.
    #[arg(long, conflicts_with = "remote")]
    pub repo: Option<PathBuf>,
    /// Pull from this remote configured in the sysroot's repo.
    #[arg(long, value_parser = parse_remote)]
    pub remote: Option<String>,
    /// Kernel arguments for the new deployment, repeated (replace the inherited ones when
    /// given; a first deployment otherwise takes the commit's kiln.kargs).
    #[arg(long = "karg", value_parser = parse_user_karg)]
    pub kargs: Vec<String>,
    /// Images: the machine's containers configuration (policy.json, registries.d/,
    /// certs.d/, registries.conf, auth.json); default: the deployment's /etc/containers
    /// (pull secret /etc/ostree/auth.json).
    #[arg(long)]
    pub containers_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// Only report whether an update is available: exit 0 when up to date, 77 when a newer
    /// commit exists.
    #[arg(long)]
    pub check: bool,
    /// Pull from this local repo instead of the origin's remote.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Deploy the ref's commit even when it is older than the next boot's.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Follow the deployment's update policy (/usr/lib/kiln/updates.toml): check, stage
    /// or apply, reboot per policy, record the result in /var/lib/kiln/last-check.json.
    /// What kiln-upgrade.service runs.
    #[arg(long, conflicts_with_all = ["check", "repo", "allow_downgrade"])]
    pub auto: bool,
    /// With --auto: run this program (no arguments) instead of `systemctl reboot` when
    /// the policy reboots, also for a sysroot directory (which is otherwise never
    /// rebooted); for tests and outer orchestrators that record or perform the reboot.
    #[arg(long, requires = "auto", value_parser = parse_abs_path)]
    pub reboot_command: Option<PathBuf>,
    /// Images: the machine's containers configuration (default: its /etc/containers).
    #[arg(long)]
    pub containers_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// Deployment index as `kiln status` shows it.
    pub index: usize,
}

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// Also remove the rollback deployment (unless pinned or booted).
    #[arg(short = 'r', long = "rollback")]
    pub rollback: bool,
}

#[derive(Debug, clap::Args)]
pub struct KargsArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// Add an argument (KEY or KEY=VALUE); repeatable.
    #[arg(long, value_parser = parse_user_karg)]
    pub append: Vec<String>,
    /// Remove an argument (KEY, or KEY=VALUE when the key has several values); repeatable.
    #[arg(long, value_parser = parse_user_karg)]
    pub delete: Vec<String>,
    /// Change a value: KEY=VALUE (the key must be present once) or KEY=OLD=NEW; repeatable.
    #[arg(long, value_parser = parse_user_karg)]
    pub replace: Vec<String>,
    /// Rewrite the next boot's entry instead of making a new deployment (no rollback
    /// entry with the old arguments is kept).
    #[arg(long)]
    pub in_place: bool,
}

pub(crate) fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

pub(crate) fn ver(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(no version)")
}

/// `kiln rebase TARGET`: like `kiln deploy`, for a sysroot that already has a deployment
/// (its /etc and kernel arguments carry over to the new origin).
pub fn cmd_rebase(a: DeployArgs) -> Result<()> {
    if !crate::repo::oci::is_image_ref(&a.rev) {
        super::ensure_initialized(&a.sys.sysroot)?;
        return cmd_deploy(a);
    }
    deploy_image(a, true)
}

fn deploy_image(a: DeployArgs, rebase: bool) -> Result<()> {
    let img = crate::repo::oci::ImageRef::parse(&a.rev)
        .map_err(|m| crate::error::InputError::new("command line", m).key("TARGET"))?;
    if a.repo.is_some() || a.remote.is_some() {
        return Err(crate::error::InputError::new(
            "command line",
            "an image is pulled from its registry: --repo and --remote do not apply",
        )
        .key("--repo")
        .into());
    }
    let os = a.sys.os();
    let mut progress = crate::progress::Progress::new(false);
    let stage = progress.stage(&format!(
        "deploying {} to {}",
        a.rev,
        a.sys.sysroot.display()
    ));
    // libostree prints "Freed objects: ..." on stdout when it prunes.
    let _stdout = a.sys.json.then(StdoutToStderr::new);
    let out = super::image::deploy_image(
        &a.sys.sysroot,
        &os,
        &img,
        (!a.kargs.is_empty()).then(|| a.kargs.clone()),
        a.containers_dir.as_deref(),
        rebase,
    );
    drop(_stdout);
    if out.is_ok() {
        stage.done();
    }
    let out = out?;
    if a.sys.json {
        return crate::output::json(&out);
    }
    println!(
        "{} {} (commit {}) from {}; {}.",
        if out.outcome.staged {
            "Staged"
        } else {
            "Deployed"
        },
        ver(&out.outcome.version),
        short(&out.outcome.commit),
        out.image,
        if out.outcome.staged {
            "it is finalized at shutdown and boots next"
        } else {
            "it boots next"
        }
    );
    Ok(())
}

pub fn cmd_deploy(a: DeployArgs) -> Result<()> {
    if crate::repo::oci::is_image_ref(&a.rev) {
        return deploy_image(a, false);
    }
    let source = match (&a.repo, &a.remote) {
        (Some(r), _) => Source::LocalRepo(r.clone()),
        (None, Some(r)) => Source::Remote(r.clone()),
        (None, None) => Source::Sysroot,
    };
    let req = DeployRequest {
        sysroot: a.sys.sysroot.clone(),
        os: a.sys.os(),
        source,
        rev: a.rev.clone(),
        kargs: if a.kargs.is_empty() {
            None
        } else {
            Some(a.kargs.clone())
        },
    };
    let mut progress = crate::progress::Progress::new(false);
    let stage = progress.stage(&format!(
        "deploying {} to {}",
        req.rev,
        req.sysroot.display()
    ));
    let out = super::deploy(&req);
    if out.is_ok() {
        stage.done();
    }
    let out = out?;
    if a.sys.json {
        return crate::output::json(&out);
    }
    if out.staged {
        println!(
            "Staged {} (commit {}); it is finalized at shutdown and boots next.",
            ver(&out.version),
            short(&out.commit)
        );
    } else {
        println!(
            "Deployed {} (commit {}) in {}; it boots next.",
            ver(&out.version),
            short(&out.commit),
            a.sys.sysroot.display()
        );
    }
    Ok(())
}

pub fn cmd_status(a: StatusArgs) -> Result<()> {
    let host = ops::status(&a.sys.sysroot)?;
    if a.sys.json {
        return crate::output::json(&host);
    }
    print!("{}", status::render_text(&host));
    Ok(())
}

pub fn cmd_upgrade(a: UpgradeArgs) -> Result<()> {
    let os = a.sys.os();
    if a.auto {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let rec = {
            let _stdout = a.sys.json.then(StdoutToStderr::new);
            super::agent::run_auto(
                &a.sys.sysroot,
                &os,
                &super::agent::AutoOptions {
                    now,
                    reboot_command: a.reboot_command.clone(),
                },
            )?
        };
        if a.sys.json {
            return crate::output::json(&rec);
        }
        println!(
            "Automatic update ({:?}): {}{}{}",
            rec.mode,
            rec.result,
            rec.to_version
                .as_deref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default(),
            match rec.reboot.as_str() {
                "requested" => "; rebooting",
                "waitingForWindow" => "; reboot waits for the maintenance window",
                "waitingForSlot" => "; reboot waits for a FleetLock slot",
                "cancelledByHook" => "; a pre-reboot hook cancelled the reboot",
                _ => "",
            }
        );
        return Ok(());
    }
    let mut progress = crate::progress::Progress::new(false);
    let stage = progress.stage(if a.check {
        "checking for updates"
    } else {
        "upgrading"
    });
    // libostree prints "Freed objects: ..." on stdout when it prunes: keep stdout for
    // the JSON answer alone.
    let _stdout = a.sys.json.then(StdoutToStderr::new);
    let out = super::follow::upgrade(
        &a.sys.sysroot,
        &os,
        &UpgradeOptions {
            repo: a.repo.clone(),
            check: a.check,
            allow_downgrade: a.allow_downgrade,
            quiet: false,
            skip: super::trial::rejections(&a.sys.sysroot, &os)
                .rejected
                .into_iter()
                .map(|r| r.commit)
                .collect(),
            containers_dir: a.containers_dir.clone(),
        },
    );
    drop(_stdout);
    if out.is_ok() {
        stage.done();
    }
    let out = out?;
    if a.sys.json {
        crate::output::json(&out)?;
    } else {
        match &out {
            UpgradeOutcome::UpToDate {
                refspec,
                checksum,
                version,
            } => println!(
                "Already up to date: {refspec} is at {} (commit {}), which boots next.",
                ver(version),
                short(checksum)
            ),
            UpgradeOutcome::Rejected {
                refspec,
                checksum,
                version,
            } => println!(
                "Not upgrading: the newest commit of {refspec}, {} (commit {}), was rejected \
                 by automatic rollback on this machine (see `kiln status`; `kiln health forget \
                 {}` allows it again).",
                ver(version),
                short(checksum),
                short(checksum)
            ),
            UpgradeOutcome::Available {
                refspec,
                from,
                to,
                from_version,
                to_version,
                packages,
                download_bytes,
                download_from,
                download_unpacked_bytes,
            } => {
                println!(
                    "Update available on {refspec}: {} (commit {}) -> {} (commit {}).",
                    ver(from_version),
                    short(from),
                    ver(to_version),
                    short(to)
                );
                print_preview(
                    packages.as_ref(),
                    *download_bytes,
                    *download_from,
                    *download_unpacked_bytes,
                );
            }
            UpgradeOutcome::Deployed {
                refspec,
                from,
                from_version,
                outcome,
                ..
            } => println!(
                "Upgraded {refspec}: {} (commit {}) -> {} (commit {}); {}.",
                ver(from_version),
                short(from),
                ver(&outcome.version),
                short(&outcome.commit),
                if outcome.staged {
                    "staged, finalized at shutdown"
                } else {
                    "it boots next"
                }
            ),
        }
    }
    if a.check && matches!(out, UpgradeOutcome::Available { .. }) {
        // main turns this into exit code 77, printing nothing more.
        return Err(crate::error::Verdict::UpdateAvailable.into());
    }
    Ok(())
}

/// The package changes and download size of an available update.
fn print_preview(
    packages: Option<&crate::repo::diff::PackageChanges>,
    download: Option<u64>,
    from: Option<super::upgrade::DownloadFrom>,
    unpacked: Option<u64>,
) {
    match packages {
        Some(p) => {
            for c in &p.changed {
                println!("  changed  {} {} -> {}", c.name, c.from, c.to);
            }
            for a in &p.added {
                println!("  added    {} {}", a.name, a.version);
            }
            for r in &p.removed {
                println!("  removed  {} {}", r.name, r.version);
            }
            if p.changed.is_empty() && p.added.is_empty() && p.removed.is_empty() {
                println!("  no package changes");
            }
        }
        None => println!("  (a commit has no package list: not made by kiln compose)"),
    }
    use super::upgrade::DownloadFrom;
    let size = crate::progress::human_bytes;
    match (download, from, unpacked) {
        (Some(d), Some(DownloadFrom::StaticDelta), Some(u)) => println!(
            "Download: {} (a static delta; {} unpacked).",
            size(d),
            size(u)
        ),
        (Some(d), Some(DownloadFrom::Layers), _) => {
            println!("Download: {} (image layers not on this machine).", size(d))
        }
        (Some(d), _, _) => println!("Download: {} (objects not on this machine).", size(d)),
        (None, _, _) => println!("Download: size unknown."),
    }
}

/// While alive, file descriptor 1 points at stderr (for libraries that print on stdout).
struct StdoutToStderr(Option<i32>);

impl StdoutToStderr {
    fn new() -> Self {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: plain fd duplication; failures leave stdout as it was.
        let saved = unsafe { libc::dup(1) };
        if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
            return StdoutToStderr(None);
        }
        StdoutToStderr(Some(saved))
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        if let Some(fd) = self.0 {
            // SAFETY: restores the saved descriptor and closes the copy.
            unsafe {
                libc::dup2(fd, 1);
                libc::close(fd);
            }
        }
    }
}

pub fn cmd_rollback(a: SysrootArgs) -> Result<()> {
    let out = ops::rollback(&a.sysroot)?;
    if a.json {
        return crate::output::json(&out);
    }
    if let Some(s) = &out.discarded_staged {
        println!(
            "Discarded the staged deployment {} (commit {}).",
            ver(&s.version),
            short(&s.checksum)
        );
    }
    println!(
        "Next boot: {} (commit {}); rollback: {} (commit {}).",
        ver(&out.default.version),
        short(&out.default.checksum),
        ver(&out.previous.version),
        short(&out.previous.checksum)
    );
    Ok(())
}

pub fn cmd_pin(a: PinArgs, pin: bool) -> Result<()> {
    let changed = ops::set_pinned(&a.sys.sysroot, a.index, pin)?;
    let what = if pin { "pinned" } else { "unpinned" };
    if a.sys.json {
        return crate::output::json(
            &serde_json::json!({ "index": a.index, "pinned": pin, "changed": changed }),
        );
    }
    if changed {
        println!("Deployment {} is now {what}.", a.index);
    } else {
        println!("Deployment {} was already {what}.", a.index);
    }
    Ok(())
}

pub fn cmd_cleanup(a: CleanupArgs) -> Result<()> {
    let os = a.sys.os();
    let out = ops::cleanup(&a.sys.sysroot, &os, a.rollback)?;
    if a.sys.json {
        return crate::output::json(&out);
    }
    if out.removed.is_empty() {
        println!("No deployments to remove.");
    }
    for d in &out.removed {
        println!(
            "Removed deployment {} (commit {}.{}).",
            ver(&d.version),
            short(&d.checksum),
            d.deploy_serial
        );
    }
    println!(
        "Pruned {} of {} objects ({} bytes freed).",
        out.objects_pruned, out.objects_total, out.bytes_freed
    );
    Ok(())
}

pub fn cmd_kargs(a: KargsArgs) -> Result<()> {
    let edit = KargsEdit {
        delete: a.delete.clone(),
        replace: a.replace.clone(),
        append: a.append.clone(),
    };
    if edit.is_empty() {
        // Just show the next boot's arguments.
        let host = ops::status(&a.sys.sysroot)?;
        if a.sys.json {
            return crate::output::json(&host.spec.kernel_args);
        }
        println!("{}", host.spec.kernel_args.join(" "));
        return Ok(());
    }
    let os = a.sys.os();
    let out = ops::kargs(&a.sys.sysroot, &os, &edit, a.in_place)?;
    if a.sys.json {
        return crate::output::json(&out);
    }
    if !out.changed {
        println!(
            "No change: the kernel arguments already are {}; no new deployment was made.",
            out.after.join(" ")
        );
    } else if out.in_place {
        println!("Kernel arguments of the next boot's entry changed in place:");
        println!(
            "  before: {}\n  after:  {}",
            out.before.join(" "),
            out.after.join(" ")
        );
    } else {
        println!(
            "New deployment of {} (commit {}) with changed kernel arguments; it boots next:",
            ver(&out.deployment.version),
            short(&out.deployment.checksum)
        );
        println!(
            "  before: {}\n  after:  {}",
            out.before.join(" "),
            out.after.join(" ")
        );
    }
    Ok(())
}

/// `kiln finalize-staged` (hidden): what `ostree-finalize-staged.service` runs at shutdown
/// in kiln images (overlays/base, a drop-in for libostree's unit). libostree's own
/// finalization writes the staged deployment's boot entries; then kiln checkpoints /boot
/// so that GRUB, which does not replay the ext4 journal, sees them after a power loss
/// (see [`super::safety::flush_boot`]).
pub fn cmd_finalize_staged() -> Result<()> {
    // The finalization writes the new boot version's GRUB menu through kiln.
    let generator = super::grub::generator_path()?;
    crate::cmd::Cmd::new("ostree")
        .args(["admin", "finalize-staged"])
        .env(super::grub::EXEC_ENV, generator)
        .run()
        .context("finalizing the staged deployment")?;
    super::safety::flush_boot(std::path::Path::new("/"));
    Ok(())
}

/// `kiln grub2-generate -o PATH` (hidden).
#[derive(Debug, clap::Args)]
pub struct Grub2GenerateArgs {
    /// The menu to write: `boot/loader.N/grub.cfg`; the entries are read from
    /// `boot/loader.N/entries/` beside it.
    #[arg(short = 'o', value_name = "PATH")]
    pub output: PathBuf,
}

/// `kiln grub2-generate` (hidden): libostree's grub2 config generator
/// ([`super::grub`]).
pub fn cmd_grub2_generate(a: Grub2GenerateArgs) -> Result<()> {
    super::grub::generate(&a.output)
}

/// `kiln health`: boot health and the memory of rejected deployments (docs/updating.md).
#[derive(Debug, clap::Subcommand)]
pub enum HealthCommand {
    /// Judge this boot (what kiln-health.service runs): multi-user.target, the required
    /// units, the check scripts; then mark it good, reboot so GRUB counts a try, or roll
    /// back. Exits 0 only once the boot is marked good.
    Check(SysrootArgs),
    /// Mark the running deployment good by hand: its trial ends and a rejection of its
    /// commit is forgotten.
    MarkGood(SysrootArgs),
    /// Forget the rejection of a commit, so that the update agent may stage it again.
    Forget(ForgetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub sys: SysrootArgs,
    /// The rejected commit (its checksum, or a prefix of it as `kiln status` shows).
    #[arg(value_parser = parse_commit_prefix)]
    pub commit: String,
}

fn parse_commit_prefix(s: &str) -> Result<String, String> {
    if s.len() >= 4 && s.len() <= 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a commit checksum (4 to 64 hex digits, as `kiln status` shows)"
        ))
    }
}

pub fn cmd_health(c: HealthCommand) -> Result<()> {
    match c {
        HealthCommand::Check(a) => {
            let os = a.os();
            let health = crate::updates::read_health(std::path::Path::new("/"))?;
            let out = super::health::check(&a.sysroot, &os, &health)?;
            if a.json {
                crate::output::json(&out)?;
            } else {
                if let Some(k) = &out.abandoned {
                    println!("Abandoned deployment {k}: its tries were spent; rolled back.");
                }
                if let Some(f) = &out.failure {
                    println!("Health check failed: {}", f.reason);
                    for l in &f.log {
                        println!("  {l}");
                    }
                }
                println!("Verdict: {}", out.verdict);
            }
            if !out.good {
                anyhow::bail!("this boot is not good (verdict: {})", out.verdict);
            }
            Ok(())
        }
        HealthCommand::MarkGood(a) => {
            super::health::mark_good(&a.sysroot, &a.os())?;
            if a.json {
                return crate::output::json(&serde_json::json!({ "bootGood": true }));
            }
            println!("This boot is marked good.");
            Ok(())
        }
        HealthCommand::Forget(a) => {
            let os = a.sys.os();
            let mut r = super::trial::rejections(&a.sys.sysroot, &os);
            if !r.forget(&a.commit) {
                return Err(crate::error::InputError::new(
                    super::CMDLINE,
                    format!(
                        "no rejected commit starts with {:?} (see `kiln status`)",
                        a.commit
                    ),
                )
                .key("COMMIT")
                .into());
            }
            super::require_root(&a.sys.sysroot, "forgetting a rejection")?;
            super::trial::save_rejections(&a.sys.sysroot, &os, &r)?;
            if a.sys.json {
                return crate::output::json(&r);
            }
            println!("Forgot the rejection of {}.", a.commit);
            Ok(())
        }
    }
}
