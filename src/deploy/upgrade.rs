//! `kiln upgrade`: pull the newest commit of the next boot's ref (from its remote or a
//! local repo) and deploy it, or only report it (`--check`). Semantics: docs/updating.md.

use super::ops::{share, split_refspec};
use super::status::{self, refspec_of, Roles};
use super::{deploy_locked, is_checksum, pull, safety, DeployOutcome, Locked, Source};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

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
    /// `--check`: a newer commit exists (only its commit object was downloaded).
    Available {
        refspec: String,
        from: String,
        to: String,
        from_version: Option<String>,
        to_version: Option<String>,
        /// What the update adds, removes and changes (the commits' package lists);
        /// `None` when a commit has no list.
        packages: Option<crate::repo::diff::PackageChanges>,
        /// Bytes the update would download (`None`: unknown, or the source is a local
        /// repo), and how they would come.
        download_bytes: Option<u64>,
        download_from: Option<DownloadFrom>,
        /// A static delta's content, uncompressed.
        download_unpacked_bytes: Option<u64>,
    },
    /// The newest commit was abandoned by automatic rollback on this machine
    /// ([`super::trial`]): not deployed again (`kiln health forget` allows it again).
    Rejected {
        refspec: String,
        checksum: String,
        version: Option<String>,
    },
    /// A newer commit was deployed.
    Deployed {
        refspec: String,
        from: String,
        from_version: Option<String>,
        outcome: DeployOutcome,
        /// What the network pull transferred (remote sources only).
        #[serde(skip_serializing_if = "Option::is_none")]
        pull: Option<crate::repo::pull::PullStats>,
    },
}

/// How an available update would be downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DownloadFrom {
    /// The server's static delta from a commit here (its parts' size).
    StaticDelta,
    /// Object by object: the sizes of the objects this repo lacks.
    Objects,
    /// Container image layers this machine lacks.
    Layers,
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
    /// Commits never to deploy (the machine's rejected commits).
    pub skip: Vec<String>,
    /// The machine's containers configuration for image origins (default: its
    /// /etc/containers).
    pub containers_dir: Option<PathBuf>,
}

/// What an upgrade starts from.
struct UpgradeBase {
    checksum: String,
    info: crate::repo::CommitInfo,
    refspec: String,
    ref_: String,
    source: Source,
}

/// The deployment an upgrade starts from: the next boot, if of `os`, else the first of `os`.
pub(crate) fn next_boot(
    sysroot: &ostree::Sysroot,
    path: &Path,
    os: &str,
) -> Result<ostree::Deployment> {
    let deps = sysroot.deployments();
    let roles = Roles::of(&deps, sysroot.booted_deployment().as_ref());
    roles
        .next_boot
        .map(|i| share(&deps[i]))
        .filter(|d| d.osname() == os)
        .or_else(|| deps.iter().find(|d| d.osname() == os).cloned())
        .ok_or_else(|| {
            anyhow!(
                "no deployment of stateroot {os:?} in {}: deploy one first with `kiln deploy`",
                path.display()
            )
        })
}

fn upgrade_base(
    sysroot: &ostree::Sysroot,
    path: &Path,
    os: &str,
    opts: &UpgradeOptions,
) -> Result<UpgradeBase> {
    let base = next_boot(sysroot, path, os)?;
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
    if opts.skip.iter().any(|c| c == newest) {
        return Ok(Some(UpgradeOutcome::Rejected {
            refspec: base.refspec.clone(),
            checksum: newest.to_string(),
            version: newest_info.version.clone(),
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
            packages: crate::repo::diff::changes(&base.info, newest_info),
            download_bytes: None,
            download_from: None,
            download_unpacked_bytes: None,
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
            // With commits to skip, look at the newest commit before its content.
            let kind = if opts.check || !opts.skip.is_empty() {
                crate::repo::pull::PullKind::CommitOnly
            } else {
                crate::repo::pull::PullKind::Full
            };
            let (c, s) = crate::repo::pull::pull(&repo, r, &base.ref_, kind, opts.quiet)?;
            (c, Some(s).filter(|_| !opts.check))
        }
        Source::Sysroot => unreachable!("upgrade_base never picks the sysroot itself"),
    };
    let info = crate::repo::read_commit(&repo, &newest)?;
    if let Some(mut done) = upgrade_decision(&base, &newest, &info, opts)? {
        if let (
            Source::Remote(r),
            UpgradeOutcome::Available {
                to,
                download_bytes,
                download_from,
                download_unpacked_bytes,
                ..
            },
        ) = (&base.source, &mut done)
        {
            if let Some((z, u)) = crate::repo::pull::delta_download_size(&repo, r, &base.ref_)? {
                *download_bytes = Some(z);
                *download_unpacked_bytes = Some(u);
                *download_from = Some(DownloadFrom::StaticDelta);
            } else {
                // The size is a preview: a server that cannot answer for it (no HEAD, an
                // object missing) leaves it unknown rather than hiding the update.
                match crate::repo::estimate::object_download_size(&repo, r, to) {
                    Ok(Some(n)) => {
                        *download_bytes = Some(n);
                        *download_from = Some(DownloadFrom::Objects);
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("kiln: warning: download size unknown: {e:#}"),
                }
            }
        }
        return Ok(done);
    }
    if let (Source::Remote(r), false) = (&base.source, opts.skip.is_empty()) {
        crate::repo::pull::pull(
            &repo,
            r,
            &base.ref_,
            crate::repo::pull::PullKind::Full,
            opts.quiet,
        )?;
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
