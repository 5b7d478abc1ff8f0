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

use super::{cpio, iso, manifest, ImageOptions, CONSOLE_KARGS};
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
    let missing: Vec<String> = need
        .iter()
        .filter(|(p, _)| !crate::cmd::have(p))
        .map(|(p, pkg)| format!("{p} (package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing host tools: {} (run `make deps`)",
            missing.join(", ")
        );
    }
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

/// Builds the live ISO or PXE files described by `opts` (format `iso` or `pxe`).
pub fn build(opts: &ImageOptions, p: &mut Progress) -> Result<LiveResult> {
    let fs = opts.live_fs;
    preflight(opts, fs)?;
    let ignition = match &opts.ignition {
        Some(f) => Some(super::read_ignition_config(f)?),
        None => None,
    };
    let repo = crate::repo::open(&opts.repo)?;
    let info = crate::repo::read_commit(&repo, &opts.rev)
        .with_context(|| format!("looking up {:?} in {}", opts.rev, opts.repo.display()))?;
    drop(repo);
    let commit_kargs = info.meta_list(crate::repo::keys::KARGS);
    let media = opts.format.name();
    let kargs = live_kargs(&commit_kargs, media, &opts.extra_kargs);
    for k in &kargs {
        iso::check_karg(k)?;
    }
    let epoch = opts
        .epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(info.timestamp);

    let out_dir = opts
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    // Removed on every exit path, SIGINT and SIGTERM included (crate::cleanup).
    let work = crate::cleanup::TempDir::new_in(&out_dir, ".kiln-live-")?;
    let log = work.path().join("live.log");
    let sysroot = work.path().join("sysroot");
    std::fs::create_dir_all(&sysroot).context("creating the sysroot directory")?;

    // 1. Deploy (the deployment's own kargs do not matter: the live kargs are in the boot
    //    loader's config).
    let s = p.stage("deploy");
    let disk_kargs = super::image_kargs(&commit_kargs, &[]);
    let deployment = super::deploy_into(&sysroot, opts, &info, &disk_kargs)?;
    // The live system names the commit it was made from (boot marker, `kiln status`).
    let marker_dir = deployment.join("usr/lib/kiln");
    std::fs::create_dir_all(&marker_dir)
        .with_context(|| format!("creating {}", marker_dir.display()))?;
    std::fs::write(
        marker_dir.join("live-commit"),
        format!("{}\n", info.checksum),
    )
    .context("writing usr/lib/kiln/live-commit")?;
    let kver = crate::compose::initramfs::find_kernel(&deployment)?;
    let moddir = deployment.join("usr/lib/modules").join(&kver);
    s.done();

    // 2. The root image, wrapped as an initramfs.
    let s = p.stage("root-image");
    let files = work.path().join("files");
    let images = files.join("images");
    std::fs::create_dir_all(&images).context("creating the staging directory")?;
    let root_img = work.path().join(format!("root.{}", fs.name()));
    make_root_image(&deployment, fs, &root_img, epoch, &log)?;
    let root_image_size = std::fs::metadata(&root_img)
        .context("reading the root image")?
        .len();
    let rootfs = images.join("rootfs.img");
    make_rootfs_img(&root_img, fs, &rootfs, epoch)?;
    std::fs::remove_file(&root_img).ok();
    for (src, dst) in [("vmlinuz", "vmlinuz"), ("initramfs.img", "initramfs.img")] {
        let from = moddir.join(src);
        std::fs::copy(&from, images.join(dst))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    s.done();

    let title = format!(
        "kiln live {} ({})",
        info.version.as_deref().unwrap_or(""),
        &info.checksum[..12]
    );
    let mut artifacts = Vec::new();
    match opts.format {
        super::Format::Iso => {
            let s = p.stage("iso");
            let grub = files.join("boot/grub");
            std::fs::create_dir_all(&grub).context("creating boot/grub")?;
            std::fs::write(grub.join("grub.cfg"), grub_cfg(title.trim()))
                .context("writing grub.cfg")?;
            std::fs::write(
                files.join(iso::KARGS_PATH),
                iso::kargs_area(&kargs, iso::KARGS_AREA)?,
            )
            .context("writing kargs.cfg")?;
            std::fs::write(
                files.join(iso::IGNITION_PATH),
                vec![0u8; iso::IGNITION_AREA as usize],
            )
            .context("writing the Ignition area")?;
            super::normalize::clamp_times(&files, epoch)?;
            let staged = work.path().join("out.iso");
            Cmd::new("grub-mkrescue")
                .arg("-o")
                .arg(&staged)
                .arg(&files)
                .args(["--", "-volid", VOLUME_ID])
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .run_logged(&log)
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
            if let Some(cfg) = &ignition {
                iso::ignition_embed(&staged, cfg, false)?;
            }
            std::fs::rename(&staged, &opts.output)
                .with_context(|| format!("moving the ISO to {}", opts.output.display()))?;
            artifacts.push(artifact(&opts.output)?);
            s.done();
        }
        super::Format::Pxe => {
            let s = p.stage("pxe");
            std::fs::write(images.join("boot.ipxe"), ipxe_script(&kargs))
                .context("writing boot.ipxe")?;
            std::fs::write(images.join("kargs.txt"), format!("{}\n", kargs.join(" ")))
                .context("writing kargs.txt")?;
            // Replace the output directory as a whole.
            let old = work.path().join("old");
            if opts.output.exists() {
                std::fs::rename(&opts.output, &old)
                    .with_context(|| format!("moving the old {} aside", opts.output.display()))?;
            }
            std::fs::rename(&images, &opts.output)
                .with_context(|| format!("moving the PXE files to {}", opts.output.display()))?;
            for f in ["vmlinuz", "initramfs.img", "rootfs.img"] {
                artifacts.push(artifact(&opts.output.join(f))?);
            }
            s.done();
        }
        f => return Err(anyhow!("live::build called for format {}", f.name())),
    }

    for a in &artifacts {
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
        };
        // PXE files are recorded in the manifest inside their directory.
        manifest::record(&a.path, entry)?;
    }

    Ok(LiveResult {
        output: opts.output.clone(),
        format: opts.format,
        commit: info.checksum,
        version: info.version,
        artifacts,
        kargs,
        root_fs: fs,
        root_image_size,
        timings: p.timings_json(),
    })
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
