//! Live media: `kiln image --format iso` (a hybrid BIOS + UEFI ISO, also bootable written
//! raw to a USB stick) and `kiln image --format pxe` (kernel, initramfs and root image for
//! network boot).
//!
//! Both boot the commit's own kernel and initramfs into a live system:
//! 1. the commit is deployed into a temp sysroot through [`crate::deploy`] (one deploy path:
//!    the live root is exactly what an installed system's deployment holds, merged /etc
//!    included);
//! 2. that deployment becomes a compressed read-only image, `root.squashfs` (default) or
//!    `root.erofs` ([`LiveFs`]), wrapped in a cpio archive as `kiln-live/root.*`: this is
//!    `rootfs.img`, loaded by the boot loader as an extra initramfs after the commit's
//!    `initramfs.img`. No driver for the boot medium is needed once the kernel runs, so
//!    CD, USB and network boot take one path;
//! 3. the initramfs's `kiln-live` dracut module (overlays/base) sees `kiln.live` on the
//!    command line, mounts the image, a tmpfs and an overlay of both on /sysroot, and puts
//!    /usr back read-only: /etc and /var are writable, in RAM;
//! 4. Ignition runs on every live boot (`ignition.firstboot`, platform `metal`) through the
//!    same glue as installed systems (overlays/ignition): its config comes from
//!    `ignition.config.url=` or from the ISO's embedded area ([`super::iso`]).
//!
//! The ISO is made by `grub-mkrescue` (El Torito for BIOS, an EFI system image for UEFI,
//! and an MBR/GPT so a raw copy on a USB stick boots either way); its `grub.cfg` sources
//! the fixed-size `boot/grub/kargs.cfg` and loads `images/ignition.img` last, the two
//! areas `kiln iso` rewrites in place.

use super::{cpio, iso, manifest, ImageOptions, Source, Work, CONSOLE_KARGS};
use crate::cmd::Cmd;
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The ISO's volume label.
pub const VOLUME_ID: &str = "KILN_LIVE";

/// The filesystem of the live root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LiveFs {
    /// squashfs, zstd: the smallest image, so the fastest to load from a CD, USB stick or
    /// over TFTP (docs/install.md has the numbers).
    #[default]
    Squashfs,
    /// EROFS, lz4hc: faster to build, larger.
    Erofs,
}

impl LiveFs {
    pub fn name(self) -> &'static str {
        match self {
            LiveFs::Squashfs => "squashfs",
            LiveFs::Erofs => "erofs",
        }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveResult {
    /// The ISO, or the PXE directory.
    pub output: PathBuf,
    pub format: super::Format,
    pub commit: String,
    pub version: Option<String>,
    /// Every file written, with its sha256 (also in `manifest.json`).
    pub artifacts: Vec<LiveArtifact>,
    pub kargs: Vec<String>,
    pub root_fs: LiveFs,
    /// Size of the compressed root image.
    pub root_image_size: u64,
    pub timings: serde_json::Value,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveArtifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The live kernel arguments: the commit's (without `root=`), `kiln.live=MEDIA`, the
/// console, Ignition on every boot (platform `metal`) and the caller's extras.
pub fn live_kargs(commit_kargs: &[String], media: &str, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |k: &str| {
        if !k.is_empty() && !out.iter().any(|x| x == k) {
            out.push(k.to_string());
        }
    };
    for k in commit_kargs {
        if !k.starts_with("root=") && !k.starts_with("ostree=") && k != "rw" {
            push(k);
        }
    }
    push(&format!("kiln.live={media}"));
    for k in CONSOLE_KARGS {
        push(k);
    }
    push("ignition.firstboot");
    push("ignition.platform.id=metal");
    for k in extra {
        push(k);
    }
    out
}

/// The ISO's grub.cfg.
pub fn grub_cfg(title: &str) -> String {
    format!(
        "# kiln live ISO. Kernel arguments: {kargs} (`kiln iso kargs`); Ignition config:\n\
         # /{ign} (`kiln iso ignition`).\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=1\n\
         set default=0\n\
         source /{kargs}\n\
         menuentry '{title}' {{\n\
         \x20   linux /images/vmlinuz $kiln_kargs\n\
         \x20   initrd /images/initramfs.img /images/rootfs.img /{ign}\n\
         }}\n",
        kargs = iso::KARGS_PATH,
        ign = iso::IGNITION_PATH,
    )
}

/// The iPXE script written next to the PXE files (also an example in docs/install.md).
pub fn ipxe_script(kargs: &[String]) -> String {
    format!(
        "#!ipxe\n\
         # kiln live system over the network. Serve this directory over TFTP or HTTP.\n\
         kernel vmlinuz initrd=initramfs.img initrd=rootfs.img {}\n\
         initrd initramfs.img\n\
         initrd rootfs.img\n\
         boot\n",
        kargs.join(" ")
    )
}

fn preflight(opts: &ImageOptions, fs: LiveFs) -> Result<()> {
    let mut need = vec![("chattr", "e2fsprogs")];
    match fs {
        LiveFs::Squashfs => need.push(("mksquashfs", "squashfs-tools")),
        LiveFs::Erofs => need.push(("mkfs.erofs", "erofs-utils")),
    }
    if opts.format == super::Format::Iso {
        need.extend([
            ("grub-mkrescue", "grub-common"),
            ("xorriso", "xorriso"),
            ("mformat", "mtools"),
        ]);
        for d in ["/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"] {
            if !Path::new(d).is_dir() {
                bail!(
                    "{d} not found: the ISO needs GRUB for BIOS and UEFI (packages \
                     grub-pc-bin, grub-efi-amd64-bin; run `make deps`)"
                );
            }
        }
    }
    crate::cmd::require_tools(&need)?;
    if opts.format == super::Format::Pxe && opts.ignition.is_some() {
        return Err(crate::error::InputError::new(
            "command line",
            "--ignition is for disk images and ISOs; PXE systems fetch their config with \
             ignition.config.url= (--karg), see docs/install.md",
        )
        .key("--ignition")
        .into());
    }
    Ok(())
}

/// Makes the compressed root image of `tree` at `out`.
pub fn make_root_image(tree: &Path, fs: LiveFs, out: &Path, epoch: u64, log: &Path) -> Result<()> {
    match fs {
        LiveFs::Squashfs => Cmd::new("mksquashfs")
            .arg(tree)
            .arg(out)
            .args(["-noappend", "-no-progress", "-comp", "zstd", "-b", "1M"])
            .args([
                "-mkfs-time",
                &epoch.to_string(),
                "-all-time",
                &epoch.to_string(),
            ])
            .run_logged(log)
            .with_context(|| format!("making the squashfs root image of {}", tree.display())),
        LiveFs::Erofs => Cmd::new("mkfs.erofs")
            .args(["-zlz4hc", "-T", &epoch.to_string()])
            .arg(out)
            .arg(tree)
            .run_logged(log)
            .with_context(|| format!("making the EROFS root image of {}", tree.display())),
    }
}

/// Wraps the root image into `rootfs.img` (cpio: `kiln-live/root.<fs>`).
pub fn make_rootfs_img(image: &Path, fs: LiveFs, out: &Path, epoch: u64) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = cpio::Writer::new(std::io::BufWriter::new(f), epoch);
    w.dir("kiln-live", 0o755)?;
    w.file_from(&format!("kiln-live/root.{}", fs.name()), 0o644, image)?;
    let mut b = w.finish()?;
    b.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn artifact(path: &Path) -> Result<LiveArtifact> {
    Ok(LiveArtifact {
        path: path.to_path_buf(),
        sha256: manifest::sha256_file(path)?,
        size: std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len(),
    })
}

/// Builds the live ISO or PXE files described by `opts` (format `iso` or `pxe`): deploy,
/// root image, then the medium (one progress stage each), recorded in `manifest.json`.
pub fn build(opts: &ImageOptions, p: &mut Progress) -> Result<LiveResult> {
    let fs = opts.live_fs;
    preflight(opts, fs)?;
    let ignition = match &opts.ignition {
        Some(f) => Some(super::read_ignition_config(f)?),
        None => None,
    };
    let src = Source::read(opts)?;
    let commit_kargs = src.info.meta_list(crate::repo::keys::KARGS);
    let kargs = live_kargs(&commit_kargs, opts.format.name(), &opts.extra_kargs);
    for k in &kargs {
        iso::check_karg(k)?;
    }
    let work = Work::beside(&opts.output, ".kiln-live-", "live.log")?;

    let s = p.stage("deploy");
    let deployment = stage_deploy(opts, &work, &src.info, &commit_kargs)?;
    s.done();
    let s = p.stage("root-image");
    let (files, root_image_size) = stage_root_image(&work, &deployment, fs, src.epoch)?;
    s.done();
    let artifacts = match opts.format {
        super::Format::Iso => {
            let s = p.stage("iso");
            let a = stage_iso(opts, &work, &files, &src, &kargs, ignition.as_deref())?;
            s.done();
            a
        }
        super::Format::Pxe => {
            let s = p.stage("pxe");
            let a = stage_pxe(opts, &work, &files, &kargs)?;
            s.done();
            a
        }
        f => return Err(anyhow!("live::build called for format {}", f.name())),
    };
    record(opts, &src.info, &artifacts)?;

    Ok(LiveResult {
        output: opts.output.clone(),
        format: opts.format,
        commit: src.info.checksum,
        version: src.info.version,
        artifacts,
        kargs,
        root_fs: fs,
        root_image_size,
        timings: p.timings_json(),
    })
}

/// Deploys the commit into the work sysroot and marks it as live; returns the deployment.
/// Its own kernel arguments do not matter: the live ones are in the boot loader's config.
fn stage_deploy(
    opts: &ImageOptions,
    work: &Work,
    info: &crate::repo::CommitInfo,
    commit_kargs: &[String],
) -> Result<PathBuf> {
    let disk_kargs = super::image_kargs(commit_kargs, &[]);
    let deployment = super::deploy_into(&work.sysroot, opts, info, &disk_kargs)?;
    // The live system names the commit it was made from (boot marker, `kiln status`).
    let marker_dir = deployment.join("usr/lib/kiln");
    std::fs::create_dir_all(&marker_dir)
        .with_context(|| format!("creating {}", marker_dir.display()))?;
    std::fs::write(
        marker_dir.join("live-commit"),
        format!("{}\n", info.checksum),
    )
    .context("writing usr/lib/kiln/live-commit")?;
    Ok(deployment)
}

/// Stages the medium's files: `images/` with the commit's kernel and initramfs and the root
/// image wrapped as an initramfs (`rootfs.img`). Returns the staging directory and the
/// root image's size.
fn stage_root_image(
    work: &Work,
    deployment: &Path,
    fs: LiveFs,
    epoch: u64,
) -> Result<(PathBuf, u64)> {
    let kver = crate::compose::initramfs::find_kernel(deployment)?;
    let moddir = deployment.join("usr/lib/modules").join(&kver);
    let files = work.path().join("files");
    let images = files.join("images");
    std::fs::create_dir_all(&images).context("creating the staging directory")?;
    let root_img = work.path().join(format!("root.{}", fs.name()));
    make_root_image(deployment, fs, &root_img, epoch, &work.log)?;
    let root_image_size = std::fs::metadata(&root_img)
        .context("reading the root image")?
        .len();
    make_rootfs_img(&root_img, fs, &images.join("rootfs.img"), epoch)?;
    std::fs::remove_file(&root_img).ok();
    for (src, dst) in [("vmlinuz", "vmlinuz"), ("initramfs.img", "initramfs.img")] {
        let from = moddir.join(src);
        std::fs::copy(&from, images.join(dst))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok((files, root_image_size))
}

/// Makes the ISO from the staged files (grub.cfg, the kernel-arguments and Ignition
/// areas, the header that finds them), embeds the Ignition config, renames it into place.
fn stage_iso(
    opts: &ImageOptions,
    work: &Work,
    files: &Path,
    src: &Source,
    kargs: &[String],
    ignition: Option<&str>,
) -> Result<Vec<LiveArtifact>> {
    let (info, epoch) = (&src.info, src.epoch);
    let title = format!(
        "kiln live {} ({})",
        info.version.as_deref().unwrap_or(""),
        &info.checksum[..12]
    );
    let grub = files.join("boot/grub");
    std::fs::create_dir_all(&grub).context("creating boot/grub")?;
    std::fs::write(grub.join("grub.cfg"), grub_cfg(title.trim())).context("writing grub.cfg")?;
    std::fs::write(
        files.join(iso::KARGS_PATH),
        iso::kargs_area(kargs, iso::KARGS_AREA)?,
    )
    .context("writing kargs.cfg")?;
    std::fs::write(
        files.join(iso::IGNITION_PATH),
        vec![0u8; iso::IGNITION_AREA as usize],
    )
    .context("writing the Ignition area")?;
    super::normalize::clamp_times(files, epoch)?;
    let staged = work.path().join("out.iso");
    Cmd::new("grub-mkrescue")
        .arg("-o")
        .arg(&staged)
        .arg(files)
        .args(["--", "-volid", VOLUME_ID])
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run_logged(&work.log)
        .context("making the ISO with grub-mkrescue")?;
    let (ign_off, ign_len) = iso::file_extent(&staged, iso::IGNITION_PATH)?;
    let (k_off, k_len) = iso::file_extent(&staged, iso::KARGS_PATH)?;
    if ign_len != iso::IGNITION_AREA || k_len != iso::KARGS_AREA {
        bail!("xorriso reports unexpected sizes for the ISO's reserved areas");
    }
    iso::write_header(
        &staged,
        &iso::Areas {
            ignition_offset: ign_off,
            ignition_len: ign_len,
            kargs_offset: k_off,
            kargs_len: k_len,
        },
    )?;
    if let Some(cfg) = ignition {
        iso::ignition_embed(&staged, cfg, false)?;
    }
    std::fs::rename(&staged, &opts.output)
        .with_context(|| format!("moving the ISO to {}", opts.output.display()))?;
    Ok(vec![artifact(&opts.output)?])
}

/// Writes the iPXE script and kernel arguments beside the staged images and puts the
/// directory in place of the output as a whole.
fn stage_pxe(
    opts: &ImageOptions,
    work: &Work,
    files: &Path,
    kargs: &[String],
) -> Result<Vec<LiveArtifact>> {
    let images = files.join("images");
    std::fs::write(images.join("boot.ipxe"), ipxe_script(kargs)).context("writing boot.ipxe")?;
    std::fs::write(images.join("kargs.txt"), format!("{}\n", kargs.join(" ")))
        .context("writing kargs.txt")?;
    let old = work.path().join("old");
    if opts.output.exists() {
        std::fs::rename(&opts.output, &old)
            .with_context(|| format!("moving the old {} aside", opts.output.display()))?;
    }
    std::fs::rename(&images, &opts.output)
        .with_context(|| format!("moving the PXE files to {}", opts.output.display()))?;
    ["vmlinuz", "initramfs.img", "rootfs.img"]
        .iter()
        .map(|f| artifact(&opts.output.join(f)))
        .collect()
}

/// Records each artifact in the `manifest.json` beside it (PXE files: inside their
/// directory).
fn record(
    opts: &ImageOptions,
    info: &crate::repo::CommitInfo,
    artifacts: &[LiveArtifact],
) -> Result<()> {
    for a in artifacts {
        let name = a.path.file_name().unwrap_or_default().to_string_lossy();
        let format = if opts.format == super::Format::Iso {
            "iso".to_string()
        } else {
            format!("pxe-{}", name.trim_end_matches(".img"))
        };
        let entry = manifest::Artifact {
            sha256: a.sha256.clone(),
            size: a.size,
            format,
            commit: info.checksum.clone(),
            version: info.version.clone(),
            ref_: Some(opts.rev.clone()).filter(|r| *r != info.checksum),
            firmware: Some("hybrid".into()),
            platform: Some("metal".into()),
            virtual_size: None,
            secure_boot_import: None,
        };
        manifest::record(&a.path, entry)?;
    }
    // The SBOM beside the medium (ISO) or, for PXE, beside the root filesystem in the
    // directory, listed in the same manifest.
    let sbom = if opts.format == super::Format::Iso {
        let mut n = opts.output.as_os_str().to_os_string();
        n.push(".spdx.json");
        std::path::PathBuf::from(n)
    } else {
        opts.output.join("rootfs.img.spdx.json")
    };
    manifest::write_sbom(&opts.repo, &opts.rev, info, &sbom)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_kargs_drop_the_disk_root() {
        let k = live_kargs(
            &[
                "root=LABEL=root".into(),
                "rw".into(),
                "console=ttyS0,115200".into(),
            ],
            "iso",
            &["kiln.autologin".into()],
        );
        assert_eq!(
            k,
            vec![
                "console=ttyS0,115200",
                "kiln.live=iso",
                "console=tty0",
                "console=ttyS0,115200n8",
                "ignition.firstboot",
                "ignition.platform.id=metal",
                "kiln.autologin"
            ]
        );
    }

    #[test]
    fn grub_cfg_loads_the_areas_last() {
        let c = grub_cfg("kiln live");
        assert!(c.contains("source /boot/grub/kargs.cfg"));
        assert!(c.contains("linux /images/vmlinuz $kiln_kargs"));
        assert!(c.contains("initrd /images/initramfs.img /images/rootfs.img /images/ignition.img"));
        let s = ipxe_script(&["kiln.live=pxe".into()]);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("initrd rootfs.img"));
    }
}
