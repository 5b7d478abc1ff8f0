//! Machines that follow a container image (`ostree-image-signed:docker://…`): deploy,
//! rebase and upgrade pull the image into the machine's layout cache (only the layers it
//! lacks; digests checked; the machine's containers policy enforced by skopeo before any
//! layer is copied), import its commit into the sysroot's repo, and deploy it through
//! [`super::deploy_locked`] — the one deploy path (staging, rollback, boot entries).
//! The deployment's origin records the image (`[origin] container-image-reference`, as
//! ostree-ext writes it). A failed or refused pull changes nothing but the download
//! cache, where finished layers stay so the next run resumes.

use super::upgrade::{UpgradeOptions, UpgradeOutcome};
use super::{deploy_locked, safety, DeployOutcome, Locked};
use crate::repo::oci::import::{self, Imported};
use crate::repo::oci::layout::OciDir;
use crate::repo::oci::transport::{self, MachineConfig};
use crate::repo::oci::{labels, ImageRef};
use anyhow::{anyhow, bail, Context, Result};
use ostree::glib;
use std::path::{Path, PathBuf};

pub use super::status::{image_of, IMAGE_ORIGIN_KEY as ORIGIN_KEY};

fn origin_for(img: &ImageRef) -> glib::KeyFile {
    let k = glib::KeyFile::new();
    k.set_string("origin", ORIGIN_KEY, &img.canonical());
    k
}

/// Where a machine keeps pulled layers: its /var/cache/kiln/oci (the stateroot's /var).
pub fn cache_dir(path: &Path, os: &str) -> PathBuf {
    if super::is_booted_host(path) {
        PathBuf::from("/var/cache/kiln/oci")
    } else {
        path.join("ostree/deploy")
            .join(os)
            .join("var/cache/kiln/oci")
    }
}

/// The machine's containers configuration: `containers_dir` when given, else the
/// booted system's /etc, else the /etc of the deployment the new one merges from, else
/// the host's /etc (a first deployment).
pub fn machine_config(
    sysroot: &ostree::Sysroot,
    path: &Path,
    os: &str,
    containers_dir: Option<&Path>,
) -> MachineConfig {
    if let Some(d) = containers_dir {
        let auth = d.join("auth.json");
        return MachineConfig {
            containers: d.to_path_buf(),
            authfile: auth.is_file().then_some(auth),
        };
    }
    if super::is_booted_host(path) {
        return MachineConfig::from_etc(Path::new("/etc"));
    }
    match sysroot.merge_deployment(Some(os)) {
        Some(m) => MachineConfig::from_etc(&path.join(sysroot.deployment_dirpath(&m)).join("etc")),
        None => MachineConfig::from_etc(Path::new("/etc")),
    }
}

/// Pulls `img` into the cache and imports its commit into the sysroot's repo.
fn fetch(
    repo: &ostree::Repo,
    img: &ImageRef,
    cache: &Path,
    cfg: &MachineConfig,
) -> Result<Imported> {
    transport::pull(img, cache, cfg)?;
    safety::point("image:pulled");
    let dir = OciDir::open(cache)?;
    import::import(repo, &dir, transport::PULL_TAG, &img.transport)
        .with_context(|| format!("importing {}", img.transport))
}

/// Drops cached layers the image just deployed does not use.
fn prune_cache(cache: &Path) {
    if let Ok(d) = OciDir::open(cache) {
        if let Err(e) = d.prune() {
            eprintln!(
                "kiln: warning: pruning the layer cache {}: {e:#}",
                cache.display()
            );
        }
    }
}

/// Pulls `img` with a host's containers configuration (`containers_dir`, default
/// /etc/containers) into a temp layout and imports its commit into the repo `repo_dir`
/// (created when missing) — what `kiln image --from-oci` builds from.
pub fn fetch_to_repo(
    img: &ImageRef,
    repo_dir: &Path,
    containers_dir: Option<&Path>,
) -> Result<Imported> {
    let cfg = match containers_dir {
        Some(d) => {
            let auth = d.join("auth.json");
            MachineConfig {
                containers: d.to_path_buf(),
                authfile: auth.is_file().then_some(auth),
            }
        }
        None => MachineConfig::from_etc(Path::new("/etc")),
    };
    let repo = crate::repo::open_or_create(repo_dir, crate::repo::RepoMode::BareUser)?;
    let parent = repo_dir.parent().unwrap_or(Path::new("."));
    let layout = tempfile::Builder::new()
        .prefix("oci-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    fetch(&repo, img, layout.path(), &cfg)
}

/// Makes the deployments of `commit` follow `image` (their origin), in place.
pub fn follow_image(path: &Path, os: &str, commit: &str, image: &str) -> Result<()> {
    let img = ImageRef::parse(image).map_err(|m| anyhow!(m))?;
    let locked = Locked::open(path)?;
    let mut n = 0;
    for d in locked.sysroot.deployments() {
        if d.osname() == os && d.csum() == commit {
            locked
                .sysroot
                .write_origin_file(&d, Some(&origin_for(&img)), ostree::gio::Cancellable::NONE)
                .with_context(|| format!("writing the origin of deployment {commit}"))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!(
            "no deployment of {commit} in {} to follow {image}",
            path.display()
        );
    }
    Ok(())
}

/// What deploying an image did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDeployOutcome {
    pub image: String,
    pub manifest_digest: String,
    #[serde(flatten)]
    pub outcome: DeployOutcome,
}

/// `kiln deploy IMAGE` / `kiln rebase IMAGE`: the image's commit as the next boot.
/// `rebase`: the sysroot must already have a deployment of `os`.
pub fn deploy_image(
    path: &Path,
    os: &str,
    img: &ImageRef,
    kargs: Option<Vec<String>>,
    containers_dir: Option<&Path>,
    rebase: bool,
) -> Result<ImageDeployOutcome> {
    crate::validate::os_name(os)
        .map_err(|m| crate::error::InputError::new(super::CMDLINE, m).key("--os"))?;
    if let Some(k) = &kargs {
        super::check_kargs(k, super::CMDLINE, "--karg", true)?;
    }
    safety::guard_host_filesystem(path);
    super::require_root(path, "deploying")?;
    if rebase {
        super::ensure_initialized(path)?;
        if super::load_readonly(path)?
            .merge_deployment(Some(os))
            .is_none()
        {
            bail!(
                "no deployment of stateroot {os:?} to rebase in {}; use `kiln deploy`",
                path.display()
            );
        }
    } else if !super::is_initialized(path) || !super::stateroot_exists(path, os) {
        super::init_sysroot(path, os)?;
    }
    let locked = Locked::open(path)?;
    let cfg = machine_config(&locked.sysroot, path, os, containers_dir);
    let cache = cache_dir(path, os);
    let imported = fetch(&locked.sysroot.repo(), img, &cache, &cfg)?;
    let outcome = deploy_locked(
        &locked,
        os,
        &imported.commit,
        &img.canonical(),
        kargs,
        Some(origin_for(img)),
    )?;
    prune_cache(&cache);
    Ok(ImageDeployOutcome {
        image: img.canonical(),
        manifest_digest: imported.manifest_digest,
        outcome,
    })
}

/// `kiln upgrade` of a deployment that follows an image (`base`: its next boot).
pub(crate) fn upgrade(
    path: &Path,
    os: &str,
    image: &str,
    opts: &UpgradeOptions,
    containers_dir: Option<&Path>,
) -> Result<UpgradeOutcome> {
    let img = ImageRef::parse(image)
        .map_err(|m| anyhow!("the deployment's origin names an invalid image: {m}"))?;
    if opts.repo.is_some() {
        bail!("the next boot follows the image {image}: --repo does not apply");
    }
    if opts.check {
        let ro = super::load_readonly(path)?;
        let base = super::upgrade::next_boot(&ro, path, os)?;
        let cfg = machine_config(&ro, path, os, containers_dir);
        return check(&ro, &base, &img, &cfg, &cache_dir(path, os));
    }
    let locked = Locked::open(path)?;
    let sysroot = &locked.sysroot;
    let base = super::upgrade::next_boot(sysroot, path, os)?;
    let from = base.csum().to_string();
    let from_info = crate::repo::read_commit(&sysroot.repo(), &from)?;
    let cfg = machine_config(sysroot, path, os, containers_dir);
    let cache = cache_dir(path, os);
    // Nothing to download when the registry's image is the one deployed.
    if let Ok(remote) = transport::inspect(&img, &cfg) {
        if is_deployed(&remote, &from_info) {
            return Ok(UpgradeOutcome::UpToDate {
                refspec: img.canonical(),
                checksum: from,
                version: from_info.version,
            });
        }
    }
    let imported = fetch(&sysroot.repo(), &img, &cache, &cfg)?;
    if imported.commit == from {
        return Ok(UpgradeOutcome::UpToDate {
            refspec: img.canonical(),
            checksum: from,
            version: from_info.version,
        });
    }
    let info = crate::repo::read_commit(&sysroot.repo(), &imported.commit)?;
    if info.timestamp < from_info.timestamp && !opts.allow_downgrade {
        bail!(
            "the image {} holds commit {} ({}), older than the next boot's ({}); refusing \
             to downgrade (pass --allow-downgrade to deploy it)",
            img.transport,
            imported.commit,
            super::status::format_utc(info.timestamp),
            super::status::format_utc(from_info.timestamp)
        );
    }
    safety::point("upgrade:pulled");
    let outcome = deploy_locked(
        &locked,
        os,
        &imported.commit,
        &img.canonical(),
        None,
        Some(origin_for(&img)),
    )?;
    prune_cache(&cache);
    Ok(UpgradeOutcome::Deployed {
        refspec: img.canonical(),
        from,
        from_version: from_info.version,
        outcome,
        pull: None,
    })
}

/// The registry's image is the deployed commit: the commit it names, or (a derived image,
/// whose label names its base) the manifest the deployed commit was made from.
fn is_deployed(remote: &transport::Remote, from: &crate::repo::CommitInfo) -> bool {
    remote.labels.get(labels::COMMIT) == Some(&from.checksum)
        || (!remote.digest.is_empty()
            && from.meta_str(crate::repo::oci::derive::MANIFEST_DIGEST)
                == Some(remote.digest.as_str()))
}

/// `--check`: the registry's manifest and config only (no layer is downloaded).
fn check(
    sysroot: &ostree::Sysroot,
    base: &ostree::Deployment,
    img: &ImageRef,
    cfg: &MachineConfig,
    cache: &Path,
) -> Result<UpgradeOutcome> {
    let from = base.csum().to_string();
    let from_info = crate::repo::read_commit(&sysroot.repo(), &from)?;
    let remote = transport::inspect(img, cfg)?;
    if is_deployed(&remote, &from_info) {
        return Ok(UpgradeOutcome::UpToDate {
            refspec: img.canonical(),
            checksum: from,
            version: from_info.version,
        });
    }
    let to = remote.labels.get(labels::COMMIT).cloned().ok_or_else(|| {
        anyhow!(
            "{} has no {} label: not an OSTree image",
            img.transport,
            labels::COMMIT
        )
    })?;
    if to == from {
        return Ok(UpgradeOutcome::UpToDate {
            refspec: img.canonical(),
            checksum: from,
            version: from_info.version,
        });
    }
    let mut to_info = from_info.clone();
    to_info.checksum = to.clone();
    to_info.version = remote.labels.get(labels::VERSION).cloned();
    to_info.metadata.remove(crate::repo::keys::PACKAGES);
    if let Some(p) = remote.labels.get(labels::PACKAGES) {
        let list: Vec<serde_json::Value> = p.split(' ').map(|s| s.into()).collect();
        to_info
            .metadata
            .insert(crate::repo::keys::PACKAGES.into(), list.into());
    }
    let cached = OciDir::open(cache).ok();
    let missing: u64 = remote
        .layers
        .iter()
        .filter(|(d, _)| !cached.as_ref().is_some_and(|c| c.has_blob(d)))
        .map(|(_, s)| s)
        .sum();
    Ok(UpgradeOutcome::Available {
        refspec: img.canonical(),
        packages: crate::repo::diff::changes(&from_info, &to_info),
        from,
        to,
        from_version: from_info.version,
        to_version: to_info.version,
        download_bytes: Some(missing),
        download_from: Some(super::upgrade::DownloadFrom::Layers),
        download_unpacked_bytes: None,
    })
}
