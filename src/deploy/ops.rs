//! The sysroot operations behind `kiln status/upgrade/rollback/pin/unpin/cleanup/kargs/diff`,
//! as library functions with typed results. Semantics are documented in docs/updating.md.

use super::status::{self, kargs_of, refspec_of, Host, Roles};
use super::{
    check_kargs, deploy_locked, is_checksum, pull, safety, DeployOutcome, Locked, Source, CMDLINE,
};
use crate::error::InputError;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The status of the sysroot at `path` (read-only: no lock, no root needed).
pub fn status(path: &Path) -> Result<Host> {
    let sysroot = super::load_readonly(path)?;
    status::host_from(&sysroot, path)
}

/// The stateroot to act on when none is given: the booted deployment's, else the next
/// boot's, else the only stateroot directory, else `kiln`.
pub fn default_os(path: &Path) -> String {
    if super::is_initialized(path) {
        if let Ok(s) = super::load_readonly(path) {
            if let Some(b) = s.booted_deployment() {
                return b.osname().to_string();
            }
            if let Some(d) = s.deployments().first() {
                return d.osname().to_string();
            }
        }
        if let Ok(rd) = std::fs::read_dir(path.join("ostree/deploy")) {
            let names: Vec<String> = rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.len() == 1 {
                return names[0].clone();
            }
        }
    }
    "kiln".to_string()
}

/// A deployment named in an operation's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRef {
    pub stateroot: String,
    pub checksum: String,
    pub deploy_serial: i32,
    pub version: Option<String>,
}

/// Another reference to the same deployment object. libostree compares deployments by
/// pointer, and `ostree::Deployment::clone` (inherent) is `ostree_deployment_clone`, a
/// copy: never use it for deployments handed back to libostree.
fn share(d: &ostree::Deployment) -> ostree::Deployment {
    Clone::clone(d)
}

fn dref(sysroot: &ostree::Sysroot, d: &ostree::Deployment) -> DeploymentRef {
    let checksum = d.csum().to_string();
    DeploymentRef {
        stateroot: d.osname().to_string(),
        version: crate::repo::read_commit(&sysroot.repo(), &checksum)
            .ok()
            .and_then(|c| c.version),
        checksum,
        deploy_serial: d.deployserial(),
    }
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackOutcome {
    /// Now the next boot.
    pub default: DeploymentRef,
    /// Now the rollback deployment.
    pub previous: DeploymentRef,
    /// A staged deployment that was discarded.
    pub discarded_staged: Option<DeploymentRef>,
}

/// Makes the rollback deployment (see [`Roles`]) the next boot by reordering the boot
/// entries (one atomic boot-config swap; no files are copied). Running it again flips
/// back. A staged deployment is discarded.
pub fn rollback(path: &Path) -> Result<RollbackOutcome> {
    super::ensure_initialized(path)?;
    super::require_root(path, "rolling back")?;
    // Fail before taking the lock when there is nothing to roll back to.
    {
        let ro = super::load_readonly(path)?;
        let deps = ro.deployments();
        rollback_target(path, &deps)?;
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let deps = sysroot.deployments();
    let booted = sysroot.booted_deployment();
    let roles = Roles::of(&deps, booted.as_ref());
    let target = rollback_target(path, &deps)?;
    let staged = deps.iter().find(|d| d.is_staged()).cloned();
    let previous = roles
        .default
        .filter(|&d| d != target)
        .or(roles.next_boot)
        .map(|i| dref(sysroot, &deps[i]))
        .ok_or_else(|| anyhow!("no default deployment in {}", path.display()))?;
    let mut new: Vec<ostree::Deployment> = vec![share(&deps[target])];
    new.extend(
        deps.iter()
            .enumerate()
            .filter(|(i, d)| *i != target && !d.is_staged())
            .map(|(_, d)| share(d)),
    );
    safety::point("rollback:before-write");
    sysroot
        .write_deployments_with_options(
            &new,
            &ostree::SysrootWriteDeploymentsOpts {
                do_postclean: false,
            },
            gio::Cancellable::NONE,
        )
        .context("writing the reordered boot entries")?;
    safety::flush_boot(path);
    safety::point("rollback:written");
    Ok(RollbackOutcome {
        default: dref(sysroot, &deps[target]),
        previous,
        discarded_staged: staged.map(|d| dref(sysroot, &d)),
    })
}

fn rollback_target(path: &Path, deps: &[ostree::Deployment]) -> Result<usize> {
    Roles::of(deps, None).rollback.ok_or_else(|| {
        anyhow!(
            "no rollback deployment in {}: it has {} deployment(s) (see `kiln status`)",
            path.display(),
            deps.len()
        )
    })
}

fn deployment_at(
    path: &Path,
    deps: &[ostree::Deployment],
    index: usize,
) -> Result<ostree::Deployment> {
    deps.get(index).cloned().ok_or_else(|| {
        let m = if deps.is_empty() {
            format!(
                "no deployment {index} in {}: it has no deployments",
                path.display()
            )
        } else {
            format!(
                "no deployment {index} in {}: valid indexes are 0..={} (see `kiln status`)",
                path.display(),
                deps.len() - 1
            )
        };
        InputError::new(CMDLINE, m).key("INDEX").into()
    })
}

/// Pins (`pin = true`) or unpins deployment `index` (as `kiln status` numbers them).
/// Pinned deployments are kept by upgrades, deploys and cleanup. Returns false when it
/// already was in that state.
pub fn set_pinned(path: &Path, index: usize, pin: bool) -> Result<bool> {
    super::ensure_initialized(path)?;
    super::require_root(path, "pinning")?;
    {
        let ro = super::load_readonly(path)?;
        deployment_at(path, &ro.deployments(), index)?;
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let deps = sysroot.deployments();
    let d = deployment_at(path, &deps, index)?;
    if d.is_staged() {
        bail!("deployment {index} is staged (not yet finalized); it cannot be pinned");
    }
    if d.is_pinned() == pin {
        return Ok(false);
    }
    sysroot.deployment_set_pinned(&d, pin).with_context(|| {
        format!(
            "{} deployment {index}",
            if pin { "pinning" } else { "unpinning" }
        )
    })?;
    Ok(true)
}

/// What `cleanup` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupOutcome {
    pub removed: Vec<DeploymentRef>,
    pub objects_total: i32,
    pub objects_pruned: i32,
    pub bytes_freed: u64,
}

/// Removes the deployments of stateroot `os` that are not pinned, booted, staged, the
/// default, or (unless `remove_rollback`) the rollback; then removes leftovers of
/// interrupted operations (unlisted deployment directories, old boot directories) and
/// prunes repo objects no ref or deployment reaches.
pub fn cleanup(path: &Path, os: &str, remove_rollback: bool) -> Result<CleanupOutcome> {
    super::ensure_initialized(path)?;
    super::require_root(path, "cleanup")?;
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let deps = sysroot.deployments();
    let booted = sysroot.booted_deployment();
    let roles = Roles::of(&deps, booted.as_ref());
    let mut keep = Vec::new();
    let mut removed = Vec::new();
    for (i, d) in deps.iter().enumerate() {
        let is_booted = booted.as_ref().map(|b| b.equal(d)).unwrap_or(false);
        let kept = d.osname() != os
            || d.is_pinned()
            || is_booted
            || d.is_staged()
            || roles.default == Some(i)
            || (roles.rollback == Some(i) && !remove_rollback);
        if kept {
            keep.push(share(d));
        } else {
            removed.push(dref(sysroot, d));
        }
    }
    let cancel = gio::Cancellable::NONE;
    if !removed.is_empty() {
        safety::point("cleanup:before-write");
        sysroot
            .write_deployments_with_options(
                &keep,
                &ostree::SysrootWriteDeploymentsOpts {
                    do_postclean: false,
                },
                cancel,
            )
            .context("writing the boot entries without the removed deployments")?;
        safety::flush_boot(path);
        safety::point("cleanup:written");
    }
    sysroot
        .prepare_cleanup(cancel)
        .context("removing unlisted deployments and old boot directories")?;
    safety::point("cleanup:prepared");
    let (total, pruned, freed) = sysroot
        .repo()
        .prune(ostree::RepoPruneFlags::REFS_ONLY, 0, cancel)
        .context("pruning unreachable objects from the sysroot's repo")?;
    safety::point("cleanup:pruned");
    Ok(CleanupOutcome {
        removed,
        objects_total: total,
        objects_pruned: pruned,
        bytes_freed: freed,
    })
}

/// Kernel-argument edits, applied in this order: delete, replace, append.
#[derive(Debug, Clone, Default)]
pub struct KargsEdit {
    /// `KEY` or `KEY=VALUE`.
    pub delete: Vec<String>,
    /// `KEY=VALUE` (the key must exist once) or `KEY=OLD=NEW`.
    pub replace: Vec<String>,
    /// `KEY` or `KEY=VALUE`.
    pub append: Vec<String>,
}

impl KargsEdit {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.replace.is_empty() && self.append.is_empty()
    }

    /// Checks every value with the one kernel-argument rule
    /// ([`crate::validate::user_kernel_arg`]): `--append`/`--delete` take one argument,
    /// `--replace` one `KEY=VALUE` or `KEY=OLD=NEW` word.
    pub fn validate(&self) -> Result<()> {
        check_kargs(&self.delete, CMDLINE, "--delete", true)?;
        check_kargs(&self.replace, CMDLINE, "--replace", true)?;
        check_kargs(&self.append, CMDLINE, "--append", true)?;
        for r in &self.replace {
            if !r.contains('=') {
                return Err(InputError::new(
                    CMDLINE,
                    format!("{r:?}: expected KEY=VALUE or KEY=OLD=NEW"),
                )
                .key("--replace")
                .into());
            }
        }
        Ok(())
    }

    /// Applies the edits to `current`. The rules are libostree's (`ostree admin kargs`),
    /// except that `--replace KEY=VALUE` where VALUE itself contains `=` (as in
    /// `root=LABEL=boot`) sets the value unless its start names an existing value.
    pub fn apply(&self, current: &[String]) -> Result<Vec<String>> {
        fn key(a: &str) -> &str {
            a.split_once('=').map(|(k, _)| k).unwrap_or(a)
        }
        fn value(a: &str) -> Option<&str> {
            a.split_once('=').map(|(_, v)| v)
        }
        let mut args: Vec<String> = current.to_vec();
        for d in &self.delete {
            let k = key(d);
            let same_key: Vec<usize> = (0..args.len()).filter(|&i| key(&args[i]) == k).collect();
            let pos = match value(d) {
                Some(_) => args.iter().position(|a| a == d),
                None if same_key.len() > 1 => bail!(
                    "--delete {d}: {k} has several values ({}); name one as {k}=VALUE",
                    same_key
                        .iter()
                        .map(|&i| args[i].as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => same_key.first().copied(),
            };
            let i = pos.ok_or_else(|| anyhow!("--delete {d}: not in the kernel arguments"))?;
            args.remove(i);
        }
        for r in &self.replace {
            let (k, rest) = r
                .split_once('=')
                .ok_or_else(|| anyhow!("--replace {r}: expected KEY=VALUE or KEY=OLD=NEW"))?;
            let same_key: Vec<usize> = (0..args.len()).filter(|&i| key(&args[i]) == k).collect();
            if same_key.is_empty() {
                bail!("--replace {r}: no argument {k} to replace (use --append)");
            }
            // KEY=OLD=NEW: OLD is the longest prefix of REST (up to an '=') that is a value.
            let mut target = None;
            for (cut, _) in rest.match_indices('=') {
                let (old, new) = (&rest[..cut], &rest[cut + 1..]);
                if let Some(&i) = same_key.iter().find(|&&i| value(&args[i]) == Some(old)) {
                    target = Some((i, new));
                }
            }
            match target {
                Some((i, new)) => args[i] = format!("{k}={new}"),
                None if same_key.len() == 1 => args[same_key[0]] = format!("{k}={rest}"),
                None => bail!(
                    "--replace {r}: {k} has several values ({}); use {k}=OLD=NEW",
                    same_key
                        .iter()
                        .map(|&i| args[i].as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }
        }
        for a in &self.append {
            if a.trim().is_empty() || a.contains(char::is_whitespace) {
                bail!("--append {a:?}: one argument per --append, without spaces");
            }
            args.push(a.clone());
        }
        Ok(args)
    }
}

/// What `kargs` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KargsOutcome {
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub changed: bool,
    pub in_place: bool,
    /// The new deployment (not in place), or the one changed in place.
    pub deployment: DeploymentRef,
    pub staged: bool,
}

/// Changes the kernel arguments of the next boot. Default: a new deployment of the same
/// commit (the old default stays as rollback). `in_place`: rewrite the current next-boot
/// deployment's boot entry (still one atomic boot-config swap).
fn kargs_base(path: &Path, sysroot: &ostree::Sysroot, os: &str) -> Result<ostree::Deployment> {
    let deps = sysroot.deployments();
    let roles = Roles::of(&deps, sysroot.booted_deployment().as_ref());
    let base_i = roles
        .next_boot
        .filter(|&i| deps[i].osname() == os)
        .or_else(|| deps.iter().position(|d| d.osname() == os && !d.is_staged()))
        .ok_or_else(|| anyhow!("no deployment of stateroot {os:?} in {}", path.display()))?;
    Ok(share(&deps[base_i]))
}

/// The kernel arguments `edit` makes of `before`, checked: an edit that cannot apply is
/// an [`InputError`], and the result must hold only valid kernel arguments.
fn edited_kargs(
    edit: &KargsEdit,
    before: &[String],
    base: &ostree::Deployment,
) -> Result<Vec<String>> {
    let after = edit
        .apply(before)
        .map_err(|e| InputError::new(CMDLINE, e.to_string()))?;
    check_kargs(
        &after,
        &format!("deployment {}.{}", base.csum(), base.deployserial()),
        "kernel arguments (give the whole set with `kiln deploy --karg`)",
        false,
    )?;
    Ok(after)
}

pub fn kargs(path: &Path, os: &str, edit: &KargsEdit, in_place: bool) -> Result<KargsOutcome> {
    edit.validate()?;
    super::ensure_initialized(path)?;
    if edit.is_empty() {
        // Reading only: no root, no lock.
        let ro = super::load_readonly(path)?;
        let base = kargs_base(path, &ro, os)?;
        let before = kargs_of(&base);
        return Ok(KargsOutcome {
            changed: false,
            in_place,
            deployment: dref(&ro, &base),
            staged: base.is_staged(),
            after: before.clone(),
            before,
        });
    }
    super::require_root(path, "changing kernel arguments")?;
    // Reject impossible edits before taking the lock; an edit that changes nothing
    // touches nothing (no new deployment, the rollback stays).
    {
        let ro = super::load_readonly(path)?;
        let base = kargs_base(path, &ro, os)?;
        let before = kargs_of(&base);
        let after = edited_kargs(edit, &before, &base)?;
        if after == before {
            return Ok(KargsOutcome {
                changed: false,
                in_place,
                deployment: dref(&ro, &base),
                staged: base.is_staged(),
                before,
                after,
            });
        }
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let base = kargs_base(path, sysroot, os)?;
    let before = kargs_of(&base);
    let after = edited_kargs(edit, &before, &base)?;
    // Nothing changes: no new deployment, the rollback stays.
    if after == before {
        return Ok(KargsOutcome {
            changed: false,
            in_place,
            deployment: dref(sysroot, &base),
            staged: base.is_staged(),
            before,
            after,
        });
    }
    let argv: Vec<&str> = after.iter().map(String::as_str).collect();
    if in_place {
        safety::point("kargs:before-write");
        sysroot
            .deployment_set_kargs(&base, &argv, gio::Cancellable::NONE)
            .context("rewriting the boot entry with the new kernel arguments")?;
        safety::flush_boot(path);
        safety::point("kargs:written");
        return Ok(KargsOutcome {
            changed: true,
            in_place,
            deployment: dref(sysroot, &base),
            staged: base.is_staged(),
            before,
            after,
        });
    }
    let origin = match base.origin() {
        Some(o) => {
            let kf = glib::KeyFile::new();
            kf.load_from_data(&o.to_data(), glib::KeyFileFlags::KEEP_COMMENTS)
                .context("copying the deployment's origin")?;
            ostree::Deployment::origin_remove_transient_state(&kf);
            Some(kf)
        }
        None => None,
    };
    let refspec = refspec_of(&base).unwrap_or_else(|| base.csum().to_string());
    let out = deploy_locked(
        &locked,
        os,
        base.csum().as_str(),
        &refspec,
        Some(after.clone()),
        origin,
    )?;
    Ok(KargsOutcome {
        changed: true,
        in_place,
        deployment: DeploymentRef {
            stateroot: os.to_string(),
            checksum: out.commit.clone(),
            deploy_serial: -1,
            version: out.version.clone(),
        },
        staged: out.staged,
        before,
        after,
    })
}

/// What `upgrade` found or did.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "result",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum UpgradeOutcome {
    /// The next boot already runs the newest commit of its ref.
    UpToDate {
        refspec: String,
        checksum: String,
        version: Option<String>,
    },
    /// `--check`: a newer commit exists.
    Available {
        refspec: String,
        from: String,
        to: String,
        from_version: Option<String>,
        to_version: Option<String>,
    },
    /// A newer commit was deployed.
    Deployed {
        refspec: String,
        from: String,
        from_version: Option<String>,
        outcome: DeployOutcome,
        /// What the network pull transferred (remote sources only).
        #[serde(skip_serializing_if = "Option::is_none")]
        pull: Option<crate::remote::PullStats>,
    },
}

/// Options of [`upgrade`].
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    /// Pull from this local repo instead of the origin's remote.
    pub repo: Option<PathBuf>,
    /// Only report whether an update exists.
    pub check: bool,
    /// Deploy even when the newest commit is older than the current one.
    pub allow_downgrade: bool,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// Splits an origin refspec into (remote, ref).
pub fn split_refspec(refspec: &str) -> (Option<&str>, &str) {
    match refspec.split_once(':') {
        Some((r, rest)) => (Some(r), rest),
        None => (None, refspec),
    }
}

/// What an upgrade starts from.
struct UpgradeBase {
    checksum: String,
    info: crate::repo::CommitInfo,
    refspec: String,
    ref_: String,
    source: Source,
}

fn upgrade_base(
    sysroot: &ostree::Sysroot,
    path: &Path,
    os: &str,
    opts: &UpgradeOptions,
) -> Result<UpgradeBase> {
    let deps = sysroot.deployments();
    let roles = Roles::of(&deps, sysroot.booted_deployment().as_ref());
    let base = roles
        .next_boot
        .map(|i| share(&deps[i]))
        .filter(|d| d.osname() == os)
        .or_else(|| deps.iter().find(|d| d.osname() == os).cloned())
        .ok_or_else(|| {
            anyhow!(
                "no deployment of stateroot {os:?} in {}: deploy one first with `kiln deploy`",
                path.display()
            )
        })?;
    let refspec = refspec_of(&base)
        .ok_or_else(|| anyhow!("the deployment to upgrade has no origin refspec"))?;
    if is_checksum(&refspec) {
        bail!(
            "the next boot follows the fixed commit {refspec}, not a ref; deploy a ref \
             (kiln deploy REF) to follow updates"
        );
    }
    let (remote, ref_) = split_refspec(&refspec);
    let source = match (&opts.repo, remote) {
        (Some(dir), _) => {
            super::open_source_repo(dir)?;
            Source::LocalRepo(dir.clone())
        }
        (None, Some(r)) => {
            if !sysroot.repo().remote_list().iter().any(|x| x.as_str() == r) {
                bail!(
                    "the origin {refspec:?} names the remote {r:?}, which is not configured \
                     in the sysroot's repo; pass --repo DIR to upgrade from a local repo"
                );
            }
            Source::Remote(r.to_string())
        }
        (None, None) => bail!(
            "the origin {refspec:?} names no remote: pass --repo DIR (a local repo holding {ref_})"
        ),
    };
    let checksum = base.csum().to_string();
    let info = crate::repo::read_commit(&sysroot.repo(), &checksum)?;
    Ok(UpgradeBase {
        checksum,
        info,
        ref_: ref_.to_string(),
        refspec,
        source,
    })
}

/// Compares the newest commit with the base: `Some` when there is nothing to deploy.
fn upgrade_decision(
    base: &UpgradeBase,
    newest: &str,
    newest_info: &crate::repo::CommitInfo,
    opts: &UpgradeOptions,
) -> Result<Option<UpgradeOutcome>> {
    if newest == base.checksum {
        return Ok(Some(UpgradeOutcome::UpToDate {
            refspec: base.refspec.clone(),
            checksum: base.checksum.clone(),
            version: base.info.version.clone(),
        }));
    }
    if newest_info.timestamp < base.info.timestamp && !opts.allow_downgrade {
        bail!(
            "the newest commit of {} ({newest}, {}) is older than the next boot's \
             ({}, {}); refusing to downgrade (pass --allow-downgrade to deploy it)",
            base.refspec,
            status::format_utc(newest_info.timestamp),
            base.checksum,
            status::format_utc(base.info.timestamp)
        );
    }
    if opts.check {
        return Ok(Some(UpgradeOutcome::Available {
            refspec: base.refspec.clone(),
            from: base.checksum.clone(),
            to: newest.to_string(),
            from_version: base.info.version.clone(),
            to_version: newest_info.version.clone(),
        }));
    }
    Ok(None)
}

/// Looks up the newest commit of the next boot's origin ref and deploys it when it is new
/// (its /etc merged from the next boot's, its kernel arguments inherited). With a local
/// repo, the lookup reads only: "up to date", `check` and errors leave the sysroot as it
/// was, and need no root.
pub fn upgrade(path: &Path, os: &str, opts: &UpgradeOptions) -> Result<UpgradeOutcome> {
    super::ensure_initialized(path)?;
    if !opts.check {
        super::require_root(path, "upgrading")?;
    }
    {
        let ro = super::load_readonly(path)?;
        let base = upgrade_base(&ro, path, os, opts)?;
        if !opts.check {
            if let Some(m) = ro.merge_deployment(Some(os)) {
                super::check_inherited_kargs(&m)?;
            }
        }
        if let Source::LocalRepo(dir) = &base.source {
            let src = super::open_source_repo(dir)?;
            let newest = crate::repo::resolve(&src, &base.ref_)?
                .ok_or_else(|| anyhow!("no ref {:?} in the repo {}", base.ref_, dir.display()))?;
            let info = crate::repo::read_commit(&src, &newest)?;
            if let Some(done) = upgrade_decision(&base, &newest, &info, opts)? {
                return Ok(done);
            }
        }
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    // Again under the lock: another process may have changed the sysroot meanwhile.
    let base = upgrade_base(sysroot, path, os, opts)?;
    let repo = sysroot.repo();
    let (newest, stats) = match &base.source {
        Source::LocalRepo(_) => (pull(&repo, &base.source, &base.ref_)?, None),
        Source::Remote(r) => {
            let kind = if opts.check {
                crate::remote::PullKind::CommitOnly
            } else {
                crate::remote::PullKind::Full
            };
            let (c, s) = crate::remote::pull(&repo, r, &base.ref_, kind, opts.quiet)?;
            (c, Some(s).filter(|_| !opts.check))
        }
        Source::Sysroot => unreachable!("upgrade_base never picks the sysroot itself"),
    };
    let info = crate::repo::read_commit(&repo, &newest)?;
    if let Some(done) = upgrade_decision(&base, &newest, &info, opts)? {
        return Ok(done);
    }
    safety::point("upgrade:pulled");
    let outcome = deploy_locked(&locked, os, &newest, &base.refspec, None, None)?;
    Ok(UpgradeOutcome::Deployed {
        refspec: base.refspec,
        from: base.checksum,
        from_version: base.info.version,
        outcome,
        pull: stats,
    })
}

/// Packages added, removed and changed between two commits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageDiff {
    pub from: CommitRef,
    pub to: CommitRef,
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<PackageChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitRef {
    pub rev: String,
    pub checksum: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PackageChange {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// Parses a `kiln.packages` list (`name=version` strings) into a sorted map.
pub fn parse_packages(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for item in list {
        let (n, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("malformed package entry {item:?} (expected name=version)"))?;
        m.insert(n.to_string(), v.to_string());
    }
    Ok(m)
}

/// Compares two package maps.
pub fn diff_packages(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> (Vec<Package>, Vec<Package>, Vec<PackageChange>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for (n, v) in b {
        match a.get(n) {
            None => added.push(Package {
                name: n.clone(),
                version: v.clone(),
            }),
            Some(old) if old != v => changed.push(PackageChange {
                name: n.clone(),
                from: old.clone(),
                to: v.clone(),
            }),
            _ => {}
        }
    }
    for (n, v) in a {
        if !b.contains_key(n) {
            removed.push(Package {
                name: n.clone(),
                version: v.clone(),
            });
        }
    }
    (added, removed, changed)
}

/// The package difference between revs `from` and `to` of `repo`.
pub fn diff(repo: &ostree::Repo, repo_name: &str, from: &str, to: &str) -> Result<PackageDiff> {
    let load = |rev: &str| -> Result<(CommitRef, BTreeMap<String, String>)> {
        let c = crate::repo::resolve(repo, rev)?
            .ok_or_else(|| anyhow!("no ref or commit {rev:?} in {repo_name}"))?;
        let info = crate::repo::read_commit(repo, &c)?;
        if !info.metadata.contains_key(crate::repo::keys::PACKAGES) {
            bail!(
                "commit {c} ({rev}) has no {} metadata: it was not made by kiln compose",
                crate::repo::keys::PACKAGES
            );
        }
        let pk = parse_packages(&info.meta_list(crate::repo::keys::PACKAGES))
            .with_context(|| format!("reading the package list of {rev}"))?;
        Ok((
            CommitRef {
                rev: rev.to_string(),
                checksum: c,
                version: info.version,
            },
            pk,
        ))
    };
    let (fa, pa) = load(from)?;
    let (fb, pb) = load(to)?;
    let (added, removed, changed) = diff_packages(&pa, &pb);
    Ok(PackageDiff {
        from: fa,
        to: fb,
        added,
        removed,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(items: &[&str]) -> BTreeMap<String, String> {
        parse_packages(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn package_diff() {
        let (a, r, c) = diff_packages(&m(&["a=1", "b=2", "c=3"]), &m(&["b=2", "c=4", "d=1"]));
        assert_eq!(
            a,
            vec![Package {
                name: "d".into(),
                version: "1".into()
            }]
        );
        assert_eq!(
            r,
            vec![Package {
                name: "a".into(),
                version: "1".into()
            }]
        );
        assert_eq!(
            c,
            vec![PackageChange {
                name: "c".into(),
                from: "3".into(),
                to: "4".into()
            }]
        );
        assert!(parse_packages(&["nover".to_string()]).is_err());
    }

    #[test]
    fn kargs_edits_follow_libostree_rules() {
        let cur: Vec<String> = ["root=LABEL=root", "rw", "console=ttyS0", "console=tty0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = KargsEdit {
            delete: vec!["rw".into()],
            replace: vec!["root=LABEL=new".into(), "console=ttyS0=ttyS1".into()],
            append: vec!["quiet".into(), "foo=bar".into()],
        };
        assert_eq!(
            e.apply(&cur).unwrap(),
            [
                "root=LABEL=new",
                "console=ttyS1",
                "console=tty0",
                "quiet",
                "foo=bar"
            ]
        );
        let bad = KargsEdit {
            delete: vec!["nosuch".into()],
            ..Default::default()
        };
        assert!(bad.apply(&cur).is_err());
        // root=LABEL=x: the value contains '='; set it, or replace by old value.
        let root = KargsEdit {
            replace: vec!["root=LABEL=root=UUID=1234".into()],
            ..Default::default()
        };
        assert_eq!(root.apply(&cur).unwrap()[0], "root=UUID=1234");
        let del = KargsEdit {
            delete: vec!["console=tty0".into(), "root".into()],
            ..Default::default()
        };
        assert_eq!(del.apply(&cur).unwrap(), ["rw", "console=ttyS0"]);
        let del_ambiguous = KargsEdit {
            delete: vec!["console".into()],
            ..Default::default()
        };
        assert!(del_ambiguous.apply(&cur).is_err());
        let ambiguous = KargsEdit {
            replace: vec!["console=hvc0".into()],
            ..Default::default()
        };
        assert!(ambiguous.apply(&cur).is_err());
    }

    #[test]
    fn refspec_split() {
        assert_eq!(split_refspec("origin:kiln/x"), (Some("origin"), "kiln/x"));
        assert_eq!(split_refspec("kiln/x"), (None, "kiln/x"));
    }
}
