//! The sysroot operations behind `kiln status/rollback/pin/unpin/cleanup/kargs`
//! (`upgrade`: [`super::upgrade`]; `diff`: [`crate::repo::diff`]),
//! as library functions with typed results. Semantics are documented in docs/updating.md.

use super::status::{self, kargs_of, refspec_of, Host, Roles};
use super::{check_kargs, deploy_locked, safety, Locked, CMDLINE};
use crate::error::InputError;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use serde::Serialize;
use std::path::Path;

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
pub(crate) fn share(d: &ostree::Deployment) -> ostree::Deployment {
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

/// The deployment whose kernel arguments `kargs` edits: the next boot of stateroot `os`.
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

/// The outcome of a kargs request that changes nothing: nothing is written.
fn unchanged(
    sysroot: &ostree::Sysroot,
    base: &ostree::Deployment,
    in_place: bool,
    kargs: Vec<String>,
) -> KargsOutcome {
    KargsOutcome {
        changed: false,
        in_place,
        deployment: dref(sysroot, base),
        staged: base.is_staged(),
        after: kargs.clone(),
        before: kargs,
    }
}

/// Changes the kernel arguments of the next boot. Default: a new deployment of the same
/// commit (the old default stays as rollback). `in_place`: rewrite the current next-boot
/// deployment's boot entry (still one atomic boot-config swap).
pub fn kargs(path: &Path, os: &str, edit: &KargsEdit, in_place: bool) -> Result<KargsOutcome> {
    edit.validate()?;
    super::ensure_initialized(path)?;
    if edit.is_empty() {
        // Reading only: no root, no lock.
        let ro = super::load_readonly(path)?;
        let base = kargs_base(path, &ro, os)?;
        return Ok(unchanged(&ro, &base, in_place, kargs_of(&base)));
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
            return Ok(unchanged(&ro, &base, in_place, before));
        }
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let base = kargs_base(path, sysroot, os)?;
    let before = kargs_of(&base);
    let after = edited_kargs(edit, &before, &base)?;
    // Nothing changes: no new deployment, the rollback stays.
    if after == before {
        return Ok(unchanged(sysroot, &base, in_place, before));
    }
    if in_place {
        set_kargs_in_place(path, sysroot, &base, &after)?;
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

/// `kargs --in-place`: the next boot's own entry gets `after`. A staged deployment's
/// arguments live in its staging record (`/run/ostree/staged-deployment`), read by the
/// finalization at shutdown; any other deployment's entry is rewritten as a complete new
/// boot-entry set and one atomic swap. The booted deployment's entry cannot be: libostree
/// 2022.7 finds the booted deployment in the new set by object identity, and a deployment
/// with new arguments is a new object ("Attempting to remove booted deployment"), while
/// its in-place entry rewrite leaves the `syslinux.cfg` GRUB reads stale. That case is
/// refused before anything is written.
fn set_kargs_in_place(
    path: &Path,
    sysroot: &ostree::Sysroot,
    base: &ostree::Deployment,
    after: &[String],
) -> Result<()> {
    let booted = sysroot.booted_deployment();
    if !base.is_staged() && booted.as_ref().is_some_and(|b| b.equal(base)) {
        return Err(InputError::new(
            CMDLINE,
            format!(
                "--in-place: the next boot is the running deployment {}.{}, whose boot \
                 entry cannot be rewritten while it is booted; run `kiln kargs` without \
                 --in-place (a new deployment of the same commit; the current one stays as \
                 the rollback)",
                base.csum(),
                base.deployserial()
            ),
        )
        .into());
    }
    safety::point("kargs:before-write");
    if base.is_staged() {
        sysroot
            .deployment_set_kargs_in_place(base, Some(&after.join(" ")), gio::Cancellable::NONE)
            .context("rewriting the staged deployment's kernel arguments")?;
    } else {
        let argv: Vec<&str> = after.iter().map(String::as_str).collect();
        sysroot
            .deployment_set_kargs(base, &argv, gio::Cancellable::NONE)
            .context("rewriting the boot entry with the new kernel arguments")?;
        safety::flush_boot(path);
    }
    safety::point("kargs:written");
    Ok(())
}

/// Splits an origin refspec into (remote, ref).
pub fn split_refspec(refspec: &str) -> (Option<&str>, &str) {
    match refspec.split_once(':') {
        Some((r, rest)) => (Some(r), rest),
        None => (None, refspec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
