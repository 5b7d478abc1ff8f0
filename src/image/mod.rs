//! Bootable disk images from a commit: GPT, an OSTree sysroot on `root`, /boot on its own
//! partition, GRUB for BIOS and UEFI; raw and qcow2.
//!
//! The pipeline ([`build`]):
//! 1. an OSTree sysroot in a temp directory, the commit deployed through [`crate::deploy`]
//!    (the very code `kiln deploy` runs) with the commit's kernel arguments plus
//!    `root=LABEL=root rw` and a serial console;
//! 2. the sysroot's `boot/` becomes the boot partition's content (plus the static
//!    `grub/grub.cfg`, see [`bootloader`]), the rest the root partition's;
//! 3. ext4 filesystems built from those directories, the ESP with mtools, a GPT on a
//!    sparse file, GRUB written for the chosen firmware ([`disk`], [`bootloader`]);
//! 4. conversion to the output format ([`formats`]), checked by the real tools, rename into
//!    place, and the artifact recorded in `manifest.json` ([`manifest`]).
//!
//! The platform ([`platform`], one table) picks Ignition's `ignition.platform.id`, the
//! console and the formats; [`template`] refuses a tree with machine-specific state
//! baked in, so that every machine made from the image is its own.

pub mod bootloader;
pub mod cli;
pub mod cpio;
pub mod disk;
pub mod embed;
pub mod firstboot;
pub mod formats;
pub mod iso;
pub mod live;
pub mod manifest;
pub mod normalize;
pub mod platform;
pub mod template;

pub use bootloader::Firmware;
pub use embed::{
    check_ignition_config, read_ignition_config, write_ignition_config, IGNITION_CONFIG,
    MAX_IGNITION_CONFIG,
};
pub use firstboot::Platform;
pub use formats::Format;
pub use live::LiveFs;
pub use platform::{PlatformSpec, PLATFORMS};

use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Kernel arguments every kiln image adds to the commit's own.
pub const IMAGE_KARGS: &[&str] = &["root=LABEL=root", "rw"];
/// Console arguments of the `qemu` platform (every platform's are in [`PLATFORMS`]): the
/// last `console=` is /dev/console, so the serial port gets the boot messages and
/// systemd's status output.
pub const CONSOLE_KARGS: &[&str] = &["console=tty0", "console=ttyS0,115200n8"];
/// The stateroot name images use unless told otherwise.
pub const DEFAULT_OS: &str = "kiln";

/// Everything [`build`] needs.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub repo: PathBuf,
    pub rev: String,
    pub format: Format,
    pub firmware: Firmware,
    /// Disk size in bytes.
    pub size: u64,
    pub output: PathBuf,
    pub os: String,
    pub extra_kargs: Vec<String>,
    pub ignition: Option<PathBuf>,
    /// Ignition platform; `None`: [`Platform::default_for`].
    pub platform: Option<Platform>,
    /// Filesystem timestamps; default `SOURCE_DATE_EPOCH` or the commit's timestamp.
    pub epoch: Option<u64>,
    /// The update server the machine follows.
    pub remote: Option<ImageRemote>,
    /// Root image filesystem of live media (`iso`, `pxe`).
    pub live_fs: LiveFs,
    /// The container image the machine follows (`kiln image --from-oci`).
    pub follow_image: Option<String>,
}

/// An update server configured in the image (`kiln image --remote NAME=URL`).
#[derive(Debug, Clone)]
pub struct ImageRemote {
    pub name: String,
    pub url: String,
    /// Keys trusted for this remote only.
    pub gpg_keys: Vec<PathBuf>,
    pub gpg_verify: bool,
}

impl std::str::FromStr for ImageRemote {
    type Err = crate::error::InputError;

    /// Parses `NAME=URL` (the value of `--remote`): the remote-name rule and the URL rule
    /// of [`crate::validate`], checked when the command line is read.
    fn from_str(spec: &str) -> Result<ImageRemote, Self::Err> {
        let bad = |m: String| crate::error::InputError::new("command line", m).key("--remote");
        let (name, url) = spec.split_once('=').ok_or_else(|| {
            bad(format!(
                "{spec:?}: expected NAME=URL, e.g. origin=https://updates.example.com/repo"
            ))
        })?;
        crate::validate::remote_name(name).map_err(bad)?;
        crate::validate::url(url, crate::validate::Schemes::HttpOrFile)
            .map_err(|m| bad(format!("remote URL: {m}")))?;
        Ok(ImageRemote {
            name: name.to_string(),
            url: url.to_string(),
            gpg_keys: Vec::new(),
            gpg_verify: true,
        })
    }
}

impl ImageOptions {
    /// Defaults: qcow2, hybrid, 4 GiB, stateroot `kiln`.
    pub fn new(
        repo: impl Into<PathBuf>,
        rev: impl Into<String>,
        output: impl Into<PathBuf>,
    ) -> Self {
        ImageOptions {
            repo: repo.into(),
            rev: rev.into(),
            format: Format::Qcow2,
            firmware: Firmware::Hybrid,
            size: 4096 * disk::MIB,
            output: output.into(),
            os: DEFAULT_OS.into(),
            extra_kargs: Vec::new(),
            ignition: None,
            platform: None,
            epoch: None,
            remote: None,
            live_fs: LiveFs::Squashfs,
            follow_image: None,
        }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageResult {
    pub output: PathBuf,
    pub format: Format,
    pub platform: Platform,
    pub firmware: Firmware,
    pub commit: String,
    pub version: Option<String>,
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
    pub kargs: Vec<String>,
    pub manifest: PathBuf,
    pub layout: disk::Layout,
    pub timings: serde_json::Value,
}

/// The kernel arguments of the image's deployment: the commit's (`kiln.kargs`) with any
/// `root=` replaced, then kiln's, the `qemu` console, and the caller's extras; duplicates
/// dropped.
pub fn image_kargs(commit_kargs: &[String], extra: &[String]) -> Vec<String> {
    image_kargs_with_console(commit_kargs, CONSOLE_KARGS, extra)
}

/// [`image_kargs`] with a platform's console arguments ([`PlatformSpec::console`]).
pub fn image_kargs_with_console(
    commit_kargs: &[String],
    console: &[&str],
    extra: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |k: &str| {
        if !k.is_empty() && !out.iter().any(|x| x == k) {
            out.push(k.to_string());
        }
    };
    for k in commit_kargs {
        if !k.starts_with("root=") {
            push(k);
        }
    }
    for k in IMAGE_KARGS.iter().chain(console) {
        push(k);
    }
    for k in extra {
        push(k);
    }
    out
}

/// The deployment directory of `commit` in a sysroot.
pub(crate) fn deployment_dir(sysroot: &Path, os: &str, commit: &str) -> Result<PathBuf> {
    let dir = sysroot.join("ostree/deploy").join(os).join("deploy");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{commit}.")))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| anyhow!("deploy left no deployment of {commit} in {}", dir.display()))
}

/// Deploys the commit `info` of `opts` into a fresh sysroot at `sysroot` through
/// [`crate::deploy`] (the very code `kiln deploy` runs); returns the deployment directory.
pub(crate) fn deploy_into(
    sysroot: &Path,
    opts: &ImageOptions,
    info: &crate::repo::CommitInfo,
    kargs: &[String],
) -> Result<PathBuf> {
    // Sets up libostree's grub2 backend (kiln writes /loader/grub.cfg) the static grub.cfg
    // reads.
    crate::deploy::init_sysroot(sysroot, &opts.os)?;
    let outcome = crate::deploy::deploy(&crate::deploy::DeployRequest {
        sysroot: sysroot.to_path_buf(),
        os: opts.os.clone(),
        source: crate::deploy::Source::LocalRepo(opts.repo.clone()),
        rev: opts.rev.clone(),
        kargs: Some(kargs.to_vec()),
    })
    .with_context(|| format!("deploying {} into the image's sysroot", info.checksum))?;
    if outcome.commit != info.checksum {
        bail!(
            "deploy put {} in the image, but {:?} is {}",
            outcome.commit,
            opts.rev,
            info.checksum
        );
    }
    if let Some(r) = &opts.remote {
        crate::remote::add(
            sysroot,
            &opts.os,
            &r.name,
            &r.url,
            &r.gpg_keys,
            r.gpg_verify,
            false,
        )?;
        let n = crate::deploy::follow_remote(sysroot, &opts.os, &opts.rev, &r.name)?;
        if n != 1 {
            bail!(
                "expected the image's one deployment to follow {:?}, changed {n}",
                opts.rev
            );
        }
    }
    if let Some(img) = &opts.follow_image {
        crate::deploy::image::follow_image(sysroot, &opts.os, &info.checksum, img)?;
    }
    deployment_dir(sysroot, &opts.os, &info.checksum)
}

/// The commit an image is made from, and the time every file of the image gets:
/// `SOURCE_DATE_EPOCH`, else the commit's timestamp (docs/reproducible.md).
pub(crate) struct Source {
    pub info: crate::repo::CommitInfo,
    pub epoch: u64,
}

impl Source {
    pub(crate) fn read(opts: &ImageOptions) -> Result<Source> {
        let repo = crate::repo::open(&opts.repo)?;
        let info = crate::repo::read_commit(&repo, &opts.rev)
            .with_context(|| format!("looking up {:?} in {}", opts.rev, opts.repo.display()))?;
        let epoch = opts
            .epoch
            .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
            .unwrap_or(info.timestamp);
        Ok(Source { info, epoch })
    }
}

/// A private work directory beside the output (so the result is renamed into place),
/// removed on every exit path, SIGINT and SIGTERM included, immutable deployment
/// directories and all ([`crate::cleanup`]); it holds the tools' log and a sysroot.
pub(crate) struct Work {
    pub dir: crate::cleanup::TempDir,
    pub log: PathBuf,
    pub sysroot: PathBuf,
}

impl Work {
    pub(crate) fn beside(output: &Path, prefix: &str, log_name: &str) -> Result<Work> {
        let out_dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating output directory {}", out_dir.display()))?;
        let dir = crate::cleanup::TempDir::new_in(out_dir, prefix)?;
        let log = dir.path().join(log_name);
        let sysroot = dir.path().join("sysroot");
        std::fs::create_dir_all(&sysroot).context("creating the sysroot directory")?;
        Ok(Work { dir, log, sysroot })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Builds the image described by `opts`: deploy, check, boot loader, filesystems, disk,
/// output (one progress stage each).
pub fn build(opts: &ImageOptions, p: &mut Progress) -> Result<ImageResult> {
    if opts.format.is_live() {
        bail!(
            "{} is a live medium: build it with image::live::build",
            opts.format.name()
        );
    }
    preflight(opts)?;
    let src = Source::read(opts)?;
    let layout = disk::Layout::for_size(opts.size)?;
    let platform = opts
        .platform
        .unwrap_or_else(|| Platform::default_for(opts.ignition.is_some()));
    let mut extra = firstboot::kargs(platform);
    extra.extend(opts.extra_kargs.iter().cloned());
    let kargs = image_kargs_with_console(
        &src.info.meta_list(crate::repo::keys::KARGS),
        platform.spec().console,
        &extra,
    );
    let work = Work::beside(&opts.output, ".kiln-image-", "image.log")?;

    let s = p.stage("deploy");
    let deployment = deploy_into(&work.sysroot, opts, &src.info, &kargs)?;
    s.done();
    // Nothing machine-specific may ship: every machine made from the image is its own.
    let s = p.stage("template-check");
    template::check_sysroot(&work.sysroot, &opts.os, &deployment)?;
    s.done();
    let s = p.stage("boot-loader");
    let boot = stage_boot(opts, platform, &work, &deployment)?;
    s.done();
    let s = p.stage("filesystems");
    let fs = stage_filesystems(&work, &boot, &layout, &src)?;
    s.done();
    let s = p.stage("disk");
    let raw = stage_disk(&work, &fs, &boot, &layout)?;
    s.done();
    let s = p.stage(opts.format.name());
    let out = stage_output(opts, platform, &work, &raw, &layout, &src.info)?;
    s.done();

    Ok(ImageResult {
        output: opts.output.clone(),
        format: opts.format,
        platform,
        firmware: opts.firmware,
        commit: src.info.checksum,
        version: src.info.version,
        sha256: out.sha256,
        size: out.size,
        virtual_size: out.virtual_size,
        kargs,
        manifest: out.manifest,
        layout,
        timings: p.timings_json(),
    })
}

/// The boot partition's tree and the boot loaders, made by [`stage_boot`].
struct Boot {
    dir: PathBuf,
    /// GRUB's core image and boot.img for BIOS.
    bios: Option<(PathBuf, PathBuf)>,
    /// The signed UEFI chain and its config: (path on the ESP, file).
    efi: Option<Vec<(&'static str, PathBuf)>>,
}

/// Moves the sysroot's `boot/` aside as the boot partition's tree, with the static
/// grub.cfg, the first-boot stamp and the Ignition config; builds GRUB for the firmware.
fn stage_boot(
    opts: &ImageOptions,
    platform: Platform,
    work: &Work,
    deployment: &Path,
) -> Result<Boot> {
    let bootdir = work.path().join("bootfs");
    std::fs::rename(work.sysroot.join("boot"), &bootdir)
        .context("moving the sysroot's boot/ aside")?;
    std::fs::create_dir(work.sysroot.join("boot")).context("recreating the boot/ mount point")?;
    let grubdir = bootdir.join("grub");
    std::fs::create_dir_all(&grubdir).context("creating boot/grub")?;
    std::fs::write(
        grubdir.join("grub.cfg"),
        bootloader::grub_cfg_for(platform.spec().grub_serial),
    )
    .context("writing grub.cfg")?;
    // Every fresh image provisions itself with Ignition on its first boot.
    firstboot::write_stamp(&bootdir)?;
    if let Some(ign) = &opts.ignition {
        embed::embed_ignition(ign, &bootdir)?;
    }
    let bios = if opts.firmware.bios() {
        Some(bootloader::build_bios_core(deployment, work.path())?)
    } else {
        None
    };
    let efi = if opts.firmware.uefi() {
        Some(bootloader::efi_files(deployment, work.path())?)
    } else {
        None
    };
    Ok(Boot {
        dir: bootdir,
        bios,
        efi,
    })
}

/// The three filesystem images of the disk, made by [`stage_filesystems`].
struct Filesystems {
    ids: disk::Ids,
    esp: PathBuf,
    boot: PathBuf,
    root: PathBuf,
}

/// Builds the boot and root ext4 filesystems and the ESP, reproducibly: mkfs.ext4 -d
/// copies entries in readdir order and copies file times, so it gets trees whose order
/// depends on names only, with every time at the epoch (docs/reproducible.md).
fn stage_filesystems(
    work: &Work,
    boot: &Boot,
    layout: &disk::Layout,
    src: &Source,
) -> Result<Filesystems> {
    let (epoch, log) = (src.epoch, &work.log);
    let ids = disk::Ids::for_commit(&src.info.checksum);
    let sorted = |tree: &Path, name: &str| -> Result<PathBuf> {
        let sorted = work.path().join(format!("{name}.sorted"));
        normalize::sorted_link_tree(tree, &sorted)?;
        normalize::clamp_times(&sorted, epoch)?;
        Ok(sorted)
    };
    let sorted_boot = sorted(&boot.dir, "bootfs")?;
    let sorted_root = sorted(&work.sysroot, "sysroot")?;
    let ext4 = |tree: &Path, label: &str, size: u64, uuid: &str| -> Result<PathBuf> {
        let fs = work.path().join(format!("{label}.ext4"));
        disk::mkfs_ext4(tree, &fs, size, label, uuid, Some(epoch), log)?;
        normalize::clamp_ext4_ctimes(&fs, epoch, log)?;
        Ok(fs)
    };
    let boot_fs = ext4(&sorted_boot, "boot", layout.boot.size, &ids.boot_fs_uuid)?;
    let root_fs = ext4(&sorted_root, "root", layout.root.size, &ids.root_fs_uuid)?;
    let esp = work.path().join("esp.vfat");
    let efi_files: Vec<(&str, &Path)> = match &boot.efi {
        Some(e) => e.iter().map(|(d, f)| (*d, f.as_path())).collect(),
        None => vec![],
    };
    disk::mkfs_esp(
        &esp,
        layout.esp.size,
        &efi_files,
        &ids.esp_volume_id,
        epoch,
        log,
    )?;
    Ok(Filesystems {
        ids,
        esp,
        boot: boot_fs,
        root: root_fs,
    })
}

/// Partitions a sparse raw disk, writes the filesystems into it and GRUB for BIOS.
fn stage_disk(
    work: &Work,
    fs: &Filesystems,
    boot: &Boot,
    layout: &disk::Layout,
) -> Result<PathBuf> {
    let raw = work.path().join("disk.raw");
    disk::partition(&raw, layout, &fs.ids, &work.log)?;
    disk::write_at(&raw, &fs.esp, &layout.esp)?;
    disk::write_at(&raw, &fs.boot, &layout.boot)?;
    disk::write_at(&raw, &fs.root, &layout.root)?;
    for f in [&fs.esp, &fs.boot, &fs.root] {
        let _ = std::fs::remove_file(f);
    }
    if let Some((core, boot_img)) = &boot.bios {
        bootloader::install_bios(&raw, layout, core, boot_img)?;
    }
    Ok(raw)
}

/// The artifact as [`stage_output`] left it.
struct Output {
    sha256: String,
    size: u64,
    virtual_size: u64,
    manifest: PathBuf,
}

/// Converts the raw disk to the output format, checks it with the real tools, renames it
/// into place and records it in `manifest.json`.
fn stage_output(
    opts: &ImageOptions,
    platform: Platform,
    work: &Work,
    raw: &Path,
    layout: &disk::Layout,
    info: &crate::repo::CommitInfo,
) -> Result<Output> {
    // The final file name: an OVA names its members after it.
    let staged = work.path().join(
        opts.output
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| format!("out.{}", opts.format.extension()).into()),
    );
    formats::convert(raw, opts.format, &staged, &work.log)?;
    let checked = formats::check(&staged, opts.format, layout.disk_size)?;
    let sha256 = manifest::sha256_file(&staged)?;
    let size = std::fs::metadata(&staged)
        .with_context(|| format!("reading {}", staged.display()))?
        .len();
    if opts.ignition.is_some() {
        // The image carries the config (password hashes, keys): it leaves the private
        // (0700) work directory readable by its owner only.
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", staged.display()))?;
    }
    std::fs::rename(&staged, &opts.output)
        .with_context(|| format!("moving the image to {}", opts.output.display()))?;
    let manifest = manifest::record(
        &opts.output,
        manifest::Artifact {
            sha256: sha256.clone(),
            size,
            format: opts.format.name().into(),
            commit: info.checksum.clone(),
            version: info.version.clone(),
            ref_: Some(opts.rev.clone()).filter(|r| *r != info.checksum),
            firmware: Some(format!("{:?}", opts.firmware).to_lowercase()),
            platform: Some(platform.id().to_string()),
            virtual_size: Some(checked.virtual_size),
            secure_boot_import: platform.secure_boot_import(opts.firmware.uefi()),
        },
    )?;
    let mut sbom = opts.output.as_os_str().to_os_string();
    sbom.push(".spdx.json");
    manifest::write_sbom(&opts.repo, &opts.rev, info, Path::new(&sbom))?;
    Ok(Output {
        sha256,
        size,
        virtual_size: checked.virtual_size,
        manifest,
    })
}

/// Checks the host tools before any work starts.
fn preflight(opts: &ImageOptions) -> Result<()> {
    let mut need = vec![
        ("mkfs.ext4", "e2fsprogs"),
        ("sgdisk", "gdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mmd", "mtools"),
        ("grub-mkimage", "grub-common"),
        ("chattr", "e2fsprogs"),
    ];
    need.extend(opts.format.tools().iter().copied());
    crate::cmd::require_tools(&need)?;
    if let Some(ign) = &opts.ignition {
        if !ign.is_file() {
            return Err(crate::error::InputError::new(
                ign.display().to_string(),
                "Ignition config not found",
            )
            .into());
        }
    }
    if let Some(r) = &opts.remote {
        if crate::deploy::is_checksum(&opts.rev) {
            return Err(crate::error::InputError::new(
                "command line",
                format!(
                    "--remote needs --ref to name a ref the machine follows, not the commit {}",
                    opts.rev
                ),
            )
            .key("--ref")
            .into());
        }
        for k in &r.gpg_keys {
            if !k.is_file() {
                return Err(crate::error::InputError::new(
                    k.display().to_string(),
                    "--remote-gpg-key: no such key file",
                )
                .into());
            }
        }
    }
    Ok(())
}

/// The output format: `--format`, else the output's extension, else the platform's
/// default, else qcow2. A platform given on the command line must take the format.
pub fn resolve_format(
    asked: Option<Format>,
    platform: Option<Platform>,
    output: &Path,
) -> Result<Format> {
    let format = asked
        .or_else(|| Format::from_path(output))
        .or_else(|| platform.map(Platform::default_format))
        .unwrap_or(Format::Qcow2);
    if let Some(p) = platform {
        if !p.accepts(format) {
            let takes: Vec<&str> = p.spec().formats.iter().map(|f| f.name()).collect();
            let key = if asked.is_some() {
                "--format"
            } else {
                "--output"
            };
            return Err(crate::error::InputError::new(
                "command line",
                format!(
                    "platform {} does not take {} images (it takes: {}); see docs/cloud.md",
                    p.id(),
                    format.name(),
                    takes.join(", ")
                ),
            )
            .key(key)
            .into());
        }
    }
    Ok(format)
}

/// The artifact's path: `output` itself, or for a directory (existing, or written with a
/// trailing `/`) `<dir>/<name>-<platform>.<extension>` with name the ref's last component.
/// A PXE build's output is itself a directory: one that already holds PXE files
/// (`boot.ipxe`) is that output, replaced as a whole, not a place to put a new one in.
pub fn artifact_path(
    output: &Path,
    rev: &str,
    format: Option<Format>,
    platform: Option<Platform>,
    embedded_config: bool,
) -> PathBuf {
    let is_dir = output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/');
    let earlier_pxe = format == Some(Format::Pxe) && output.join("boot.ipxe").is_file();
    if !is_dir || earlier_pxe {
        return output.to_path_buf();
    }
    let platform = platform.unwrap_or_else(|| Platform::default_for(embedded_config));
    let format = format.unwrap_or_else(|| platform.default_format());
    let name = rev
        .rsplit(['/', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or("kiln");
    output.join(format!("{name}-{}.{}", platform.id(), format.extension()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_pxe_directory_is_replaced_not_nested_into() {
        let td = tempfile::tempdir().unwrap();
        let pxe = td.path().join("base.pxe");
        std::fs::create_dir(&pxe).unwrap();
        let r = "kiln/bookworm/x86_64/base";
        let nested = artifact_path(&pxe, r, Some(Format::Pxe), Some(Platform::Metal), false);
        assert_eq!(nested, pxe.join("base-metal.pxe"));
        std::fs::write(pxe.join("boot.ipxe"), "#!ipxe\n").unwrap();
        let again = artifact_path(&pxe, r, Some(Format::Pxe), Some(Platform::Metal), false);
        assert_eq!(again, pxe);
        let qcow = artifact_path(&pxe, r, Some(Format::Qcow2), Some(Platform::Qemu), false);
        assert_eq!(qcow, pxe.join("base-qemu.qcow2"));
    }

    #[test]
    fn kargs_merge() {
        let k = image_kargs(
            &["quiet".into(), "root=/dev/sda".into(), "rw".into()],
            &["kiln.autologin".into(), "quiet".into()],
        );
        assert_eq!(
            k,
            vec![
                "quiet",
                "rw",
                "root=LABEL=root",
                "console=tty0",
                "console=ttyS0,115200n8",
                "kiln.autologin"
            ]
        );
    }

    #[test]
    fn platforms_pick_formats_and_names() {
        let td = tempfile::tempdir().unwrap();
        let dir = td.path();
        let p = artifact_path(
            dir,
            "kiln/bookworm/x86_64/base",
            None,
            Some(Platform::Gcp),
            false,
        );
        assert_eq!(p, dir.join("base-gcp.tar.gz"));
        let p = artifact_path(
            dir,
            "kiln/base",
            Some(Format::Raw),
            Some(Platform::Aws),
            false,
        );
        assert_eq!(p, dir.join("base-aws.raw"));
        let p = artifact_path(Path::new("new/dir/"), "remote:x/base", None, None, true);
        assert_eq!(p, Path::new("new/dir/base-metal.raw"));
        let p = artifact_path(Path::new("out/a.qcow2"), "r", None, None, false);
        assert_eq!(p, Path::new("out/a.qcow2"));

        assert_eq!(
            resolve_format(None, Some(Platform::Azure), Path::new("x")).unwrap(),
            Format::Vhd
        );
        assert_eq!(
            resolve_format(None, None, Path::new("x.ova")).unwrap(),
            Format::Ova
        );
        assert_eq!(
            resolve_format(None, None, Path::new("x")).unwrap(),
            Format::Qcow2
        );
        let err =
            resolve_format(Some(Format::Qcow2), Some(Platform::Gcp), Path::new("x")).unwrap_err();
        let ie = err.downcast_ref::<crate::error::InputError>().unwrap();
        let msg = ie.to_string();
        assert!(msg.contains("--format") && msg.contains("gce"), "{msg}");
        assert!(resolve_format(None, Some(Platform::Azure), Path::new("x.raw")).is_err());
    }

    #[test]
    fn platform_console_replaces_the_default() {
        let k = image_kargs_with_console(
            &["console=ttyS0,115200".into()],
            Platform::Vmware.spec().console,
            &[],
        );
        assert_eq!(
            k,
            vec![
                "console=ttyS0,115200",
                "root=LABEL=root",
                "rw",
                "console=ttyS0,115200n8",
                "console=tty0"
            ]
        );
        assert!(!bootloader::grub_cfg_for(false).contains("terminal_output serial"));
        assert!(bootloader::grub_cfg_for(true).contains("terminal_output serial"));
        assert!(bootloader::grub_cfg_for(false).contains("source /loader/grub.cfg"));
    }
}
