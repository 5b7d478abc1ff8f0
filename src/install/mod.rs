//! `kiln install`: put a kiln disk image on a disk, verified, with the machine's Ignition
//! config and kernel arguments (coreos-installer's job for Fedora CoreOS).
//!
//! The image comes from a local raw or qcow2 file, an http(s) URL of one, or a commit built
//! on the spot by [`crate::image::build`] (the one image builder). The steps ([`install`]):
//!
//! 1. Every check before the first byte is written: the target exists, is a block device
//!    or regular file, is not mounted, holds no mounted partition, is not swap or held by
//!    device-mapper/RAID, and is at least as large as the image; the image exists; a URL
//!    has a sha256 to verify (from `manifest.json` beside it or `--image-sha256`); the
//!    Ignition config is valid.
//! 2. The write, through a verifying reader that must reach EOF before the data is
//!    accepted (coreos-installer's rule after CVE-2021-20319): raw images stream straight
//!    to the disk while being hashed, but the first MiB — protective MBR, primary GPT and
//!    BIOS boot code — is held back and written only after the whole stream matched its
//!    sha256. The target's first and last MiB are zeroed before streaming, so a failed or
//!    tampered download leaves a disk without a partition table, never a half-written one
//!    that looks valid. qcow2 images are verified completely (downloaded to a temp file
//!    first) before `qemu-img` converts them onto the disk.
//! 3. The backup GPT moves to the end of a larger disk (`sgdisk -e`).
//! 4. Provisioning, for a prebuilt image: the boot and root partitions are mounted through
//!    loop devices over their byte ranges (this works the same for a disk, a loop device
//!    or a file); kernel arguments change in place through [`crate::deploy::ops::kargs`]
//!    (what `kiln kargs --in-place` runs), the Ignition config goes to
//!    `/boot/ignition/config.ign` (0600) through [`crate::image::write_ignition_config`],
//!    and the first-boot stamp is checked ([`crate::image::firstboot`]). For a commit, the
//!    image builder does all of that itself.
//!
//! Success is reported only after everything is on the disk and synced.

pub mod cli;
mod digest;
mod ignition;
mod provision;
mod source;
mod stream;
mod target;
mod write;

pub use digest::{parse_sha256, DigestMismatch, IgnitionHash, Sha256};
pub use ignition::{check_plain_http, ignition_policy, IgnitionSource};
pub use provision::kargs_edit;
pub use source::manifest_url;
pub use target::{Target, TargetKind};

use crate::cmd::Cmd;
use crate::error::InputError;
use crate::image::{self, disk, Format, Platform};
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use digest::Expected;
use source::Resolved;
use std::path::{Path, PathBuf};
use target::Out;

/// The start of the disk held back until the image is verified: protective MBR, primary
/// GPT and the BIOS boot code all live in the first MiB of a kiln disk.
pub const HEAD: u64 = disk::MIB;
/// Write granularity; all-zero chunks are zeroed on the target (holes in a file,
/// `BLKZEROOUT` on a block device) instead of written.
const CHUNK: usize = 1 << 20;
/// Image size for `--repo`/`--ref` installs when the disk is larger (the root partition
/// grows to the disk on first boot).
pub const DEFAULT_BUILD_SIZE: u64 = 4096 * disk::MIB;
/// The qcow2 magic (`QFI\xfb`).
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A local raw or qcow2 file.
    File(PathBuf),
    /// An http(s) URL of a raw or qcow2 image.
    Url(String),
    /// Built from a commit by [`crate::image::build`].
    Commit { repo: PathBuf, rev: String },
}

impl ImageSource {
    /// `--image` value: a URL when it has an http(s) scheme (and then a valid one,
    /// [`crate::validate::url`]), else a path.
    pub fn parse(s: &str) -> std::result::Result<ImageSource, String> {
        if is_url(s) {
            crate::validate::url(s, crate::validate::Schemes::Http)?;
            Ok(ImageSource::Url(s.to_string()))
        } else {
            Ok(ImageSource::File(PathBuf::from(s)))
        }
    }

    fn describe(&self) -> String {
        match self {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Url(u) => u.clone(),
            ImageSource::Commit { repo, rev } => format!("{rev} in {}", repo.display()),
        }
    }

    fn is_commit(&self) -> bool {
        matches!(self, ImageSource::Commit { .. })
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Everything [`install`] needs.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub device: PathBuf,
    pub source: ImageSource,
    /// Ignition config: a file path or an http(s) URL.
    pub ignition: Option<IgnitionSource>,
    /// Expected hash of the Ignition config (`sha256-<hex>` or `sha512-<hex>`).
    pub ignition_hash: Option<IgnitionHash>,
    /// Accept a plain http:// Ignition URL without a hash.
    pub insecure_ignition: bool,
    /// Kernel arguments to append.
    pub kargs: Vec<String>,
    pub platform: Platform,
    /// Expected sha256 of the image file or download.
    pub image_sha256: Option<Sha256>,
    pub dry_run: bool,
}

/// What [`install`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallResult {
    pub device: PathBuf,
    pub device_kind: TargetKind,
    pub device_size: u64,
    pub source: String,
    pub format: Format,
    /// Bytes of disk the image covers (a qcow2's virtual size).
    pub image_size: u64,
    /// sha256 of the image file as read (for a commit: of the raw disk built), when known.
    pub sha256: Option<String>,
    /// What the sha256 was checked against: `--image-sha256`, the manifest's path or URL,
    /// or `built` for an image built by this command; `None`: not verified (a local file
    /// with no manifest entry).
    pub verified_against: Option<String>,
    pub commit: Option<String>,
    /// Where the Ignition config went (on the boot partition), if one was given.
    pub ignition: Option<String>,
    pub platform: Platform,
    /// The deployment's kernel arguments after the install (when known).
    pub kargs: Vec<String>,
    pub dry_run: bool,
    pub timings: serde_json::Value,
}

impl InstallResult {
    /// The result before anything is known about the image.
    fn new(opts: &InstallOptions, target: &Target) -> InstallResult {
        InstallResult {
            device: target.path.clone(),
            device_kind: target.kind,
            device_size: target.size,
            source: opts.source.describe(),
            format: Format::Raw,
            image_size: 0,
            sha256: None,
            verified_against: None,
            commit: None,
            ignition: None,
            platform: opts.platform,
            kargs: Vec::new(),
            dry_run: opts.dry_run,
            timings: serde_json::Value::Null,
        }
    }
}

/// Checks `--karg` values with the shared kernel-argument rule.
pub fn check_kargs(kargs: &[String]) -> Result<()> {
    for k in kargs {
        crate::validate::user_kernel_arg(k)
            .map_err(|m| InputError::new("command line", m).key("--karg"))?;
    }
    Ok(())
}

/// Tools the installer runs.
fn preflight(opts: &InstallOptions) -> Result<()> {
    let mut need = vec![("sgdisk", "gdisk")];
    if !opts.source.is_commit() {
        need.extend([("losetup", "mount"), ("mount", "mount")]);
    }
    if matches!(opts.source, ImageSource::Url(_))
        || matches!(opts.ignition, Some(IgnitionSource::Url(_)))
    {
        need.push(("curl", "curl"));
    }
    crate::cmd::require_tools(&need)?;
    Ok(())
}

/// Installs an image on a disk (see the module documentation for the steps).
pub fn install(opts: &InstallOptions, p: &mut Progress) -> Result<InstallResult> {
    // 1. Every check before the first byte is written.
    check_kargs(&opts.kargs)?;
    if let Some(src) = &opts.ignition {
        check_plain_http(src, opts.ignition_hash.as_ref(), opts.insecure_ignition)
            .map_err(|m| InputError::new("command line", m).key("--ignition"))?;
    }
    preflight(opts)?;
    let work = crate::cleanup::TempDir::new("kiln-install-")
        .context("creating a temp directory (set TMPDIR to choose where)")?;
    let log = work.path().join("install.log");
    let ignition = opts
        .ignition
        .as_ref()
        .map(|s| ignition::load_ignition(s, opts.ignition_hash.as_ref(), work.path()))
        .transpose()?;
    let target = Target::inspect(&opts.device)?;
    let mut result = InstallResult::new(opts, &target);

    // A commit's image is built first (it carries kargs, platform and Ignition itself).
    // Holds a built image until the install ends.
    let mut _built_dir: Option<crate::cleanup::TempDir> = None;
    let sha = opts.image_sha256.as_ref();
    let (source, resolved) = match &opts.source {
        ImageSource::Commit { repo, rev } => {
            let built = build_commit(
                repo,
                rev,
                opts,
                &target,
                ignition.as_deref(),
                &mut result,
                p,
            )?;
            let Some((dir, resolved)) = built else {
                // A dry run: the commit exists and the image would fit.
                return Ok(result);
            };
            let image = dir.path().join("disk.raw");
            _built_dir = Some(dir);
            (ImageSource::File(image), resolved)
        }
        ImageSource::File(f) => (opts.source.clone(), source::resolve_file(f, sha)?),
        ImageSource::Url(u) => (
            opts.source.clone(),
            source::resolve_url(u, sha, work.path())?,
        ),
    };
    result.format = resolved.format;
    result.verified_against = resolved.expected.as_ref().map(|e| e.from.clone());
    if let Some(size) = resolved.size {
        target::check_fits(&target, size, &source.describe())?;
        result.image_size = size;
    }
    if opts.dry_run {
        result.timings = p.timings_json();
        return Ok(result);
    }
    if !opts.source.is_commit() && resolved.expected.is_none() {
        p.note(&format!(
            "{} is not listed in a manifest.json beside it and no --image-sha256 was given: \
             writing it unverified",
            source.describe()
        ));
    }

    // 2. The write.
    let w = write::Write {
        source: &source,
        resolved: &resolved,
        target: &target,
        has_ignition: ignition.is_some(),
        work: work.path(),
        log: &log,
    };
    let (sha256, image_size) = match resolved.format {
        Format::Raw => w.raw(p)?,
        Format::Qcow2 => w.qcow2(p)?,
        other => bail!(
            "cannot install a {} image: give a raw or qcow2 disk image",
            other.name()
        ),
    };
    result.sha256 = Some(sha256);
    result.image_size = image_size;

    // 3. and 4. From here on a failure must not leave a disk that looks installed.
    let fin = Finish {
        opts,
        target: &target,
        image_size,
        ignition: ignition.as_deref(),
        work: work.path(),
        log: &log,
    };
    if let Err(e) = fin.run(&mut result, p) {
        if let Ok(out) = Out::open(&target) {
            target::invalidate(&out);
        }
        return Err(e.context(format!(
            "installing to {} failed after the image was written; its partition \
             table is erased (first MiB zeroed), so it does not boot",
            target.path.display()
        )));
    }
    result.timings = p.timings_json();
    Ok(result)
}

/// Builds a commit's image with [`crate::image::build`] (kargs, platform and Ignition
/// config included) into a temp directory, sized to fit the target. `None` for a dry run,
/// once the commit is found and the size is known.
fn build_commit(
    repo: &Path,
    rev: &str,
    opts: &InstallOptions,
    target: &Target,
    ignition: Option<&str>,
    result: &mut InstallResult,
    p: &mut Progress,
) -> Result<Option<(crate::cleanup::TempDir, Resolved)>> {
    let size = DEFAULT_BUILD_SIZE.min(target.size / disk::MIB * disk::MIB);
    disk::Layout::for_size(size).map_err(|e| {
        InputError::new(
            target.path.display().to_string(),
            format!("the target is too small: {e:#}"),
        )
    })?;
    let r = crate::repo::open(repo)?;
    let info = crate::repo::read_commit(&r, rev)
        .with_context(|| format!("looking up {rev:?} in {}", repo.display()))?;
    result.commit = Some(info.checksum.clone());
    result.image_size = size;
    if opts.dry_run {
        result.timings = p.timings_json();
        return Ok(None);
    }
    let dir = crate::cleanup::TempDir::new("kiln-install-image-")
        .context("creating a temp directory for the image")?;
    let out = dir.path().join("disk.raw");
    let ign_file = match ignition {
        Some(text) => {
            let f = dir.path().join("config.ign");
            crate::ignition::write_private_atomic(&f, text.as_bytes())
                .context("staging the Ignition config")?;
            Some(f)
        }
        None => None,
    };
    let mut io = image::ImageOptions::new(repo, rev, &out);
    io.format = Format::Raw;
    io.size = size;
    io.extra_kargs = opts.kargs.clone();
    io.ignition = ign_file;
    io.platform = Some(opts.platform);
    let built = image::build(&io, p)?;
    result.kargs = built.kargs.clone();
    result.ignition = ignition.map(|_| format!("/boot/{}", image::IGNITION_CONFIG));
    let resolved = Resolved {
        format: Format::Raw,
        size: Some(built.size),
        file_size: Some(built.size),
        expected: Some(Expected {
            sha256: built.sha256,
            from: "built".into(),
        }),
        verified_sha: None,
    };
    Ok(Some((dir, resolved)))
}

/// The steps after the image is on the disk: the backup GPT to the disk's end, the
/// provisioning of a prebuilt image, the final flush.
struct Finish<'a> {
    opts: &'a InstallOptions,
    target: &'a Target,
    image_size: u64,
    ignition: Option<&'a str>,
    work: &'a Path,
    log: &'a Path,
}

impl Finish<'_> {
    fn run(&self, result: &mut InstallResult, p: &mut Progress) -> Result<()> {
        let dev_name = self.target.path.display().to_string();
        if self.target.size > self.image_size {
            // The backup GPT goes to the end of the disk.
            Cmd::new("sgdisk")
                .arg("--move-second-header")
                .arg(&self.target.path)
                .run_logged(self.log)
                .with_context(|| format!("moving the backup GPT to the end of {dev_name}"))?;
        }
        if !self.opts.source.is_commit() {
            let s = p.stage("provision");
            let prov = provision::provision(
                &self.target.path,
                self.ignition,
                self.opts.platform,
                &self.opts.kargs,
                self.work,
            )?;
            s.done();
            result.kargs = prov.kargs;
            result.ignition = prov.ignition;
        }
        self.target.flush_and_reread()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_kargs_are_checked() {
        let good = "AB".repeat(32);
        assert_eq!(parse_sha256(&good).unwrap(), "ab".repeat(32));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let e = parse_sha256(bad).unwrap_err();
            assert!(e.downcast_ref::<InputError>().is_some(), "{e:#}");
        }
        check_kargs(&["a=b".into(), "quiet".into()]).unwrap();
        assert!(check_kargs(&["a b".into()]).is_err());
        assert!(check_kargs(&["".into()]).is_err());
    }
}
