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

use crate::cmd::Cmd;
use crate::error::InputError;
use crate::image::{self, disk, firstboot, manifest, Format, Platform};
use crate::progress::{Progress, Stage};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The start of the disk held back until the image is verified: protective MBR, primary
/// GPT and the BIOS boot code all live in the first MiB of a kiln disk.
pub const HEAD: u64 = disk::MIB;
/// Write granularity; all-zero chunks are zeroed on the target (holes in a file,
/// `BLKZEROOUT` on a block device) instead of written.
const CHUNK: usize = 1 << 20;
/// Image size for `--repo`/`--ref` installs when the disk is larger (the root partition
/// grows to the disk on first boot).
pub const DEFAULT_BUILD_SIZE: u64 = 4096 * disk::MIB;
/// Largest Ignition config fetched from a URL.
const MAX_IGNITION_BYTES: u64 = 16 * disk::MIB;
/// The qcow2 magic (`QFI\xfb`).
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

// <linux/fs.h>
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKZEROOUT: libc::c_ulong = 0x127f;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["image", "repo"])))]
pub struct InstallArgs {
    /// The disk to install to: a block device (/dev/sda, /dev/nvme0n1, /dev/loop0) or an
    /// existing regular file. Everything on it is overwritten.
    pub device: PathBuf,
    /// The disk image: a raw or qcow2 file, or an http:// or https:// URL of one (its
    /// sha256 comes from the manifest.json beside it or from --image-sha256).
    #[arg(long, value_name = "FILE|URL")]
    pub image: Option<String>,
    /// Build the image from this OSTree repository (with --ref) instead of --image.
    #[arg(long, requires = "ref_", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Ref or commit checksum in --repo.
    #[arg(long = "ref", requires = "repo", value_name = "REF")]
    pub ref_: Option<String>,
    /// Ignition config (file or http(s) URL) written to /boot/ignition/config.ign and
    /// applied on first boot.
    #[arg(long, value_name = "FILE|URL")]
    pub ignition: Option<String>,
    /// Expected hash of the Ignition config, `sha256-<hex>` or `sha512-<hex>`; the config is
    /// refused unless it matches. Required for a plain http:// --ignition URL.
    #[arg(long, value_name = "sha256-HEX", requires = "ignition")]
    pub ignition_hash: Option<String>,
    /// Accept a plain http:// --ignition URL without --ignition-hash (anyone on the network
    /// path can then change the machine's configuration).
    #[arg(long, requires = "ignition")]
    pub insecure_ignition: bool,
    /// Kernel argument to append (repeatable).
    #[arg(long = "karg", value_name = "K=V")]
    pub kargs: Vec<String>,
    /// Ignition platform of the installed system (`ignition.platform.id`).
    #[arg(long, value_enum, default_value = "metal")]
    pub platform: Platform,
    /// Expected sha256 of the image (--image); overrides manifest.json.
    #[arg(long, value_name = "HEX", conflicts_with = "repo")]
    pub image_sha256: Option<String>,
    /// Check everything and say what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A local raw or qcow2 file.
    File(PathBuf),
    /// An http(s) URL of a raw or qcow2 image.
    Url(String),
    /// Built from a commit by [`crate::image::build`].
    Commit { repo: PathBuf, rev: String },
}

impl ImageSource {
    /// `--image` value: a URL when it has an http(s) scheme, else a path.
    pub fn parse(s: &str) -> ImageSource {
        if is_url(s) {
            ImageSource::Url(s.to_string())
        } else {
            ImageSource::File(PathBuf::from(s))
        }
    }

    fn describe(&self) -> String {
        match self {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Url(u) => u.clone(),
            ImageSource::Commit { repo, rev } => format!("{rev} in {}", repo.display()),
        }
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
    pub ignition: Option<String>,
    /// Expected hash of the Ignition config (`sha256-<hex>` or `sha512-<hex>`).
    pub ignition_hash: Option<String>,
    /// Accept a plain http:// Ignition URL without a hash.
    pub insecure_ignition: bool,
    /// Kernel arguments to append.
    pub kargs: Vec<String>,
    pub platform: Platform,
    /// Expected sha256 (hex) of the image file or download.
    pub image_sha256: Option<String>,
    pub dry_run: bool,
}

/// What kind of target the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Block,
    File,
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

/// The install target, inspected.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    pub size: u64,
}

impl Target {
    /// Inspects `path` and refuses anything that is not an unused block device or an
    /// existing regular file.
    pub fn inspect(path: &Path) -> Result<Target> {
        let name = path.display().to_string();
        let md =
            match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(InputError::new(
                    name,
                    "no such device or file (name a disk such as /dev/sda, or an existing file)",
                )
                .into()),
                Err(e) => return Err(e).with_context(|| format!("inspecting {name}")),
            };
        let ft = md.file_type();
        let kind = if ft.is_block_device() {
            TargetKind::Block
        } else if ft.is_file() {
            TargetKind::File
        } else {
            return Err(InputError::new(name, "not a block device or a regular file").into());
        };
        let size = match kind {
            TargetKind::File => md.len(),
            TargetKind::Block => {
                let mut f = File::open(path).with_context(|| format!("opening {name}"))?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                    .with_context(|| format!("reading the size of {name}"))?
            }
        };
        if let Some(why) = in_use(path, kind, md.rdev())? {
            return Err(InputError::new(
                name,
                format!("{why}; refusing to overwrite a disk in use (unmount it first)"),
            )
            .into());
        }
        Ok(Target {
            path: path.to_path_buf(),
            kind,
            size,
        })
    }
}

/// `maj:min` of a device number.
fn dev_name(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// A block device and its partitions, as `maj:min` strings with their names.
fn block_family(rdev: u64) -> Vec<(String, String)> {
    let whole = dev_name(rdev);
    let sys = PathBuf::from(format!("/sys/dev/block/{whole}"));
    let name = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| whole.clone());
    let mut out = vec![(whole, name)];
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            if e.path().join("partition").is_file() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push((
                        d.trim().to_string(),
                        e.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// Why the target must not be written, if it is in use: mounted (itself or a partition),
/// swap, held by another block device, or (a file) backing a loop device that is.
fn in_use(path: &Path, kind: TargetKind, rdev: u64) -> Result<Option<String>> {
    let family = match kind {
        TargetKind::Block => block_family(rdev),
        TargetKind::File => {
            // A file is in use when a loop device over it is.
            let Ok(canon) = std::fs::canonicalize(path) else {
                return Ok(None);
            };
            let mut fam = Vec::new();
            if let Ok(rd) = std::fs::read_dir("/sys/block") {
                for e in rd.flatten() {
                    let bf = e.path().join("loop/backing_file");
                    let Ok(b) = std::fs::read_to_string(&bf) else {
                        continue;
                    };
                    if Path::new(b.trim()) != canon {
                        continue;
                    }
                    if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                        let d = d.trim();
                        if let Some((ma, mi)) = d.split_once(':') {
                            if let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) {
                                fam.extend(block_family(libc::makedev(ma, mi)));
                            }
                        }
                    }
                }
            }
            fam
        }
    };
    if family.is_empty() {
        return Ok(None);
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        if let Some((_, name)) = family.iter().find(|(d, _)| d == f[2]) {
            let what = if kind == TargetKind::File {
                format!("it backs /dev/{name}, which is mounted on {}", f[4])
            } else if family[0].0 == f[2] {
                format!("it is mounted on {}", f[4])
            } else {
                format!("its partition /dev/{name} is mounted on {}", f[4])
            };
            return Ok(Some(what));
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(dev) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(md) = std::fs::metadata(dev) {
                if md.file_type().is_block_device()
                    && family.iter().any(|(d, _)| *d == dev_name(md.rdev()))
                {
                    return Ok(Some(format!("{dev} on it is in use as swap")));
                }
            }
        }
    }
    for (d, name) in &family {
        if let Ok(rd) = std::fs::read_dir(format!("/sys/dev/block/{d}/holders")) {
            let holders: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !holders.is_empty() {
                return Ok(Some(format!(
                    "/dev/{name} is held by {} (device-mapper, RAID or LVM)",
                    holders.join(", ")
                )));
            }
        }
    }
    Ok(None)
}

/// The target opened for writing. A block device is opened exclusively (`O_EXCL`): the
/// kernel then refuses to mount it, or any of its partitions, while kiln writes.
struct Out {
    file: File,
    target: Target,
}

impl Out {
    fn open(target: &Target) -> Result<Out> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true);
        if target.kind == TargetKind::Block {
            o.custom_flags(libc::O_EXCL);
        }
        let file = match o.open(&target.path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(InputError::new(
                    target.path.display().to_string(),
                    "device is busy (mounted or held by another program); refusing to \
                     overwrite a disk in use",
                )
                .into())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("opening {} for writing", target.path.display()))
            }
        };
        Ok(Out {
            file,
            target: target.clone(),
        })
    }

    fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        self.file.write_all_at(data, off).with_context(|| {
            format!(
                "writing {} bytes at offset {off} of {}",
                data.len(),
                self.target.path.display()
            )
        })
    }

    /// Makes `len` bytes at `off` read as zeros: a hole in a file, `BLKZEROOUT` on a block
    /// device (cheap on disks with WRITE ZEROES and on loop devices), else written zeros.
    fn zero(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let fast = match self.target.kind {
            // SAFETY: fallocate on our own descriptor; KEEP_SIZE never grows the file.
            TargetKind::File => unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                ) == 0
            },
            TargetKind::Block => {
                let range: [u64; 2] = [off, len];
                // SAFETY: BLKZEROOUT reads a u64[2] {start, length}; both 512-aligned here.
                unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) == 0 }
            }
        };
        if fast {
            return Ok(());
        }
        let zeros = vec![0u8; CHUNK];
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(CHUNK as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("flushing {}", self.target.path.display()))
    }
}

/// The sha256 an image must match and where that value came from.
#[derive(Debug, Clone)]
struct Expected {
    sha256: String,
    from: String,
}

/// Parses a `--image-sha256` value.
pub fn parse_sha256(s: &str) -> Result<String> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(InputError::new(
            "command line",
            format!("{s:?} is not a sha256 (64 hexadecimal digits)"),
        )
        .key("--image-sha256")
        .into());
    }
    Ok(t)
}

/// Checks `--karg` values with the shared kernel-argument rule.
pub fn check_kargs(kargs: &[String]) -> Result<()> {
    for k in kargs {
        crate::validate::user_kernel_arg(k)
            .map_err(|m| InputError::new("command line", m).key("--karg"))?;
    }
    Ok(())
}

/// The curl options every fetch uses: http(s) only (also across redirects), errors on
/// HTTP failures, and a stalled transfer fails instead of hanging.
fn curl() -> Cmd {
    Cmd::new("curl").args([
        "--silent",
        "--show-error",
        "--location",
        "--proto",
        "=http,https",
        "--proto-redir",
        "=http,https",
        "--connect-timeout",
        "30",
        "--speed-limit",
        "1",
        "--speed-time",
        "120",
    ])
}

/// Fetches a small document; `Ok(None)` when the server says 404 or 410.
fn fetch_small(url: &str, max: u64, work: &Path) -> Result<Option<Vec<u8>>> {
    let out = work.join("fetch.out");
    let code = curl()
        .args(["--max-filesize", &max.to_string(), "--output"])
        .arg(&out)
        .args(["--write-out", "%{http_code}"])
        .arg(url)
        .read()
        .with_context(|| format!("fetching {url}"))?;
    match code.trim() {
        "200" => {
            let data = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
            let _ = std::fs::remove_file(&out);
            Ok(Some(data))
        }
        "404" | "410" => Ok(None),
        c => bail!("fetching {url}: the server answered HTTP {c}"),
    }
}

/// The `manifest.json` URL beside an image URL, and the image's file name in it.
pub fn manifest_url(url: &str) -> Option<(String, String)> {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let (dir, name) = no_query.rsplit_once('/')?;
    if name.is_empty() || dir.ends_with('/') || !dir.contains("://") {
        return None;
    }
    Some((format!("{dir}/{}", manifest::FILE_NAME), name.to_string()))
}

/// An image, located and checked, ready to be written.
struct Resolved {
    format: Format,
    /// Bytes of disk the image covers.
    size: Option<u64>,
    /// Size of the file or download itself, when known.
    file_size: Option<u64>,
    expected: Option<Expected>,
    /// sha256 of a local qcow2, checked against `expected` before `qemu-img` read it.
    verified_sha: Option<String>,
}

fn format_from_name(name: &str) -> Option<Format> {
    Format::from_path(Path::new(name))
}

fn qcow2_virtual_size(path: &Path) -> Result<u64> {
    if !crate::cmd::have("qemu-img") {
        bail!("missing host tool for qcow2 images: qemu-img (package qemu-utils)");
    }
    let info = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .read()
        .with_context(|| format!("reading the qcow2 header of {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&info).context("parsing qemu-img info")?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| anyhow!("qemu-img info gave no virtual-size for {}", path.display()))
}

fn resolve_file(path: &Path, sha: Option<&String>) -> Result<Resolved> {
    let name = path.display().to_string();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError::new(name, "image not found").into())
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {name}")),
    };
    if !md.is_file() {
        return Err(InputError::new(name, "the image is not a regular file").into());
    }
    let mut magic = [0u8; 4];
    let n = File::open(path)
        .and_then(|f| f.read_at(&mut magic, 0))
        .with_context(|| format!("reading {name}"))?;
    let format = if n == 4 && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    };
    let expected = match sha {
        Some(s) => Some(Expected {
            sha256: s.clone(),
            from: "--image-sha256".into(),
        }),
        None => {
            let mpath = manifest::path_for(path);
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            manifest::load(&mpath)?
                .artifacts
                .get(file_name)
                .map(|a| Expected {
                    sha256: a.sha256.clone(),
                    from: mpath.display().to_string(),
                })
        }
    };
    // A qcow2 is parsed by qemu-img: verify it whole first. A raw image is verified as
    // it streams (its head is written last).
    let mut verified_sha = None;
    let size = match format {
        Format::Raw
        | Format::Vmdk
        | Format::Vhd
        | Format::Gce
        | Format::Ova
        | Format::Iso
        | Format::Pxe => md.len(),
        Format::Qcow2 => {
            if let Some(e) = &expected {
                let actual = manifest::sha256_file(path)?;
                if actual != e.sha256 {
                    return Err(DigestMismatch {
                        source_name: name,
                        expected: e.sha256.clone(),
                        from: e.from.clone(),
                        actual,
                    }
                    .into());
                }
                verified_sha = Some(actual);
            }
            qcow2_virtual_size(path)?
        }
    };
    Ok(Resolved {
        format,
        size: Some(size),
        file_size: Some(md.len()),
        expected,
        verified_sha,
    })
}

fn resolve_url(url: &str, sha: Option<&String>, work: &Path) -> Result<Resolved> {
    let (entry, mfrom) = match manifest_url(url) {
        Some((murl, name)) => match fetch_small(&murl, 16 * disk::MIB, work)? {
            Some(bytes) => {
                let m: manifest::Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    InputError::new(murl.clone(), format!("not a kiln manifest: {e}"))
                        .at(e.line(), e.column())
                })?;
                (m.artifacts.get(&name).cloned(), murl)
            }
            None => (None, murl),
        },
        None => (None, String::new()),
    };
    let expected = match (sha, &entry) {
        (Some(s), _) => Expected {
            sha256: s.clone(),
            from: "--image-sha256".into(),
        },
        (None, Some(a)) => Expected {
            sha256: a.sha256.clone(),
            from: mfrom.clone(),
        },
        (None, None) => {
            return Err(InputError::new(
                url,
                format!(
                    "no sha256 to verify the download against: {} does not list it; pass \
                     --image-sha256 HEX or publish the manifest.json `kiln image` writes \
                     beside the image",
                    if mfrom.is_empty() {
                        "no manifest.json URL could be derived, so nothing".to_string()
                    } else {
                        mfrom.clone()
                    }
                ),
            )
            .key("--image")
            .into())
        }
    };
    let format = entry
        .as_ref()
        .and_then(|a| match a.format.as_str() {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        })
        .or_else(|| format_from_name(url.split(['?', '#']).next().unwrap_or(url)))
        .unwrap_or(Format::Raw);
    let file_size = entry.as_ref().map(|a| a.size);
    Ok(Resolved {
        format,
        // A raw image covers as many bytes as it has; a qcow2's virtual size is known
        // once it is downloaded.
        size: if format == Format::Raw {
            file_size
        } else {
            None
        },
        file_size,
        expected: Some(expected),
        verified_sha: None,
    })
}

/// Fails unless the image fits the target.
fn check_fits(target: &Target, image_size: u64, what: &str) -> Result<()> {
    if image_size > target.size {
        return Err(InputError::new(
            target.path.display().to_string(),
            format!(
                "the target is {} bytes ({}), smaller than the image {what} ({} bytes, {})",
                target.size,
                crate::progress::human_bytes(target.size),
                image_size,
                crate::progress::human_bytes(image_size)
            ),
        )
        .into());
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A sha256 mismatch: the caller knows nothing was accepted.
#[derive(Debug, thiserror::Error)]
#[error(
    "sha256 mismatch for {source_name}: expected {expected} (from {from}), got {actual}; \
     the image was not accepted"
)]
pub struct DigestMismatch {
    pub source_name: String,
    pub expected: String,
    pub from: String,
    pub actual: String,
}

/// Streams a raw image from `r` onto the target: hashed as it goes, all-zero chunks
/// zeroed instead of written, the first [`HEAD`] bytes held back until the stream ended
/// and matched `expected`. `head` is the first chunk, already read by the caller.
/// Returns the sha256 and the number of bytes.
fn stream_raw(
    head: Vec<u8>,
    r: &mut dyn Read,
    out: &Out,
    expected: Option<&Expected>,
    expected_len: Option<u64>,
    source_name: &str,
    stage: &mut Stage,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut pos = head.len() as u64;
    stage.inc(pos);
    let mut buf = vec![0u8; CHUNK];
    let mut zero_from: Option<u64> = None;
    let limit = out.target.size;
    loop {
        let n = read_full(r, &mut buf)
            .with_context(|| format!("reading the image from {source_name} after {pos} bytes"))?;
        if n == 0 {
            break;
        }
        if pos + n as u64 > limit {
            return Err(InputError::new(
                out.target.path.display().to_string(),
                format!(
                    "the image is larger than the target ({limit} bytes); the install was \
                     stopped"
                ),
            )
            .into());
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            zero_from.get_or_insert(pos);
        } else {
            if let Some(z) = zero_from.take() {
                out.zero(z, pos - z)?;
            }
            out.write_at(chunk, pos)?;
        }
        pos += n as u64;
        stage.set_position(pos);
    }
    if let Some(z) = zero_from.take() {
        out.zero(z, pos - z)?;
    }
    if let Some(len) = expected_len {
        if len != pos {
            bail!("{source_name} ended after {pos} bytes, but {len} were expected (truncated?)");
        }
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(e) = expected {
        if e.sha256 != actual {
            return Err(DigestMismatch {
                source_name: source_name.to_string(),
                expected: e.sha256.clone(),
                from: e.from.clone(),
                actual,
            }
            .into());
        }
    }
    // Verified: only now does the disk get its partition table and boot code.
    out.write_at(&head, 0)?;
    out.sync()?;
    Ok((actual, pos))
}

/// Opens the image as a stream: a file, or curl's output for a URL (a failed download
/// is an error at the end of the stream, never a short success).
fn open_stream(source: &ImageSource, log: &Path) -> Result<Box<dyn Read>> {
    match source {
        ImageSource::File(p) => Ok(Box::new(SparseReader::open(p)?)),
        ImageSource::Url(u) => {
            let r = curl().arg("--fail").arg(u).reader_logged(log)?;
            Ok(Box::new(CurlReader {
                inner: r,
                log: log.to_path_buf(),
            }))
        }
        ImageSource::Commit { .. } => bail!("a commit is built first, not streamed"),
    }
}

/// A local file read in order, its holes (`SEEK_HOLE`) returned as zeros without asking
/// the kernel to fill pages: a 4 GiB image that is mostly holes reads at memory speed.
struct SparseReader {
    f: File,
    pos: u64,
    len: u64,
    /// `pos..hole_end` is a hole; `pos..data_end` is data.
    hole_end: u64,
    data_end: u64,
}

impl SparseReader {
    fn open(p: &Path) -> Result<SparseReader> {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        Ok(SparseReader {
            f,
            pos: 0,
            len,
            hole_end: 0,
            data_end: 0,
        })
    }

    /// Finds the extent at `pos`: a hole up to the next data, or data up to the next hole.
    fn probe(&mut self) -> std::io::Result<()> {
        let fd = self.f.as_raw_fd();
        // SAFETY: lseek on our own descriptor; the offset is only read back.
        let data = unsafe { libc::lseek(fd, self.pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                self.hole_end = self.len; // only a hole remains
                return Ok(());
            }
            // No SEEK_DATA support: treat everything as data.
            self.data_end = self.len;
            return Ok(());
        }
        let data = data as u64;
        if data > self.pos {
            self.hole_end = data.min(self.len);
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, self.pos as libc::off_t, libc::SEEK_HOLE) };
        self.data_end = if hole < 0 {
            self.len
        } else {
            (hole as u64).min(self.len)
        };
        if self.data_end <= self.pos {
            self.data_end = self.len;
        }
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.hole_end && self.pos >= self.data_end {
            self.probe()?;
        }
        let n = if self.pos < self.hole_end {
            let n = (self.hole_end - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            n
        } else {
            let want = (self.data_end - self.pos).min(buf.len() as u64) as usize;
            let n = self.f.read_at(&mut buf[..want], self.pos)?;
            if n == 0 {
                return Ok(0);
            }
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// curl's stdout; a failed transfer's error carries curl's message.
struct CurlReader {
    inner: duct::ReaderHandle,
    log: PathBuf,
}

impl Read for CurlReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("download failed: {e}: {}", crate::cmd::log_tail(&self.log)),
            )
        })
    }
}

/// Reads a whole stream into `dst` (a temp file) while hashing it; returns sha256 and size.
fn download_verified(
    source: &ImageSource,
    dst: &Path,
    expected: Option<&Expected>,
    log: &Path,
    stage: &mut Stage,
) -> Result<(String, u64)> {
    let mut r = open_stream(source, log)?;
    let mut f = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut r, &mut buf)
            .with_context(|| format!("reading {} after {pos} bytes", source.describe()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n])
            .with_context(|| format!("writing {}", dst.display()))?;
        pos += n as u64;
        stage.set_position(pos);
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(e) = expected {
        if e.sha256 != actual {
            return Err(DigestMismatch {
                source_name: source.describe(),
                expected: e.sha256.clone(),
                from: e.from.clone(),
                actual,
            }
            .into());
        }
    }
    Ok((actual, pos))
}

/// Converts a (verified) qcow2 onto the target with `qemu-img`, feeding its progress to
/// the bar.
fn write_qcow2(
    src: &Path,
    out: &Out,
    virtual_size: u64,
    log: &Path,
    stage: &mut Stage,
) -> Result<()> {
    let mut r = Cmd::new("qemu-img")
        .args(["convert", "-p", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(&out.target.path)
        .reader_logged(log)?;
    let mut buf = [0u8; 4096];
    let mut line = String::new();
    loop {
        let n = r.read(&mut buf).map_err(|e| {
            anyhow!(
                "qemu-img convert onto {} failed: {e}: {}",
                out.target.path.display(),
                crate::cmd::log_tail(log)
            )
        })?;
        if n == 0 {
            break;
        }
        for c in String::from_utf8_lossy(&buf[..n]).chars() {
            if c == '\r' || c == '\n' {
                // "    (12.34/100%)"
                if let Some(pct) = line
                    .trim()
                    .strip_prefix('(')
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.parse::<f64>().ok())
                {
                    stage.set_position((virtual_size as f64 * pct / 100.0) as u64);
                }
                line.clear();
            } else {
                line.push(c);
            }
        }
    }
    stage.set_position(virtual_size);
    out.sync()
}

/// One GPT partition, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// The partitions of the GPT at the start of `disk` (512-byte sectors, as kiln images
/// have), read directly: the installer needs no partitioning tool to find them.
pub fn partitions(disk: &Path) -> Result<Vec<Partition>> {
    let name = disk.display();
    let f = File::open(disk).with_context(|| format!("opening {name}"))?;
    let mut hdr = [0u8; 92];
    f.read_exact_at(&mut hdr, disk::SECTOR)
        .with_context(|| format!("reading the GPT header of {name}"))?;
    if &hdr[..8] != b"EFI PART" {
        bail!("{name} has no GPT (no \"EFI PART\" signature at sector 1)");
    }
    let le64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80);
    let entry_size = le32(&hdr, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        bail!("{name}: implausible GPT (entry size {entry_size}, {count} entries)");
    }
    // A hostile header can put the table beyond any disk: no wrapping offset.
    let Some(table_at) = entries_lba.checked_mul(disk::SECTOR) else {
        bail!("{name}: implausible GPT (entries at LBA {entries_lba})");
    };
    // Read only a table the disk holds (seeking to the end sizes block devices too).
    let disk_len = std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0))
        .with_context(|| format!("sizing {name}"))?;
    let table_len = (entry_size * count as usize) as u64;
    if table_at
        .checked_add(table_len)
        .is_none_or(|end| end > disk_len)
    {
        bail!("{name}: implausible GPT (entries at LBA {entries_lba} lie beyond the disk's end)");
    }
    let mut table = vec![0u8; table_len as usize];
    f.read_exact_at(&mut table, table_at)
        .with_context(|| format!("reading the GPT entries of {name}"))?;
    let mut out = Vec::new();
    for (i, e) in table.chunks(entry_size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue; // unused entry
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            bail!("{name}: GPT entry {} ends before it starts", i + 1);
        }
        let bytes = |lba: u64| lba.checked_mul(disk::SECTOR);
        let (Some(offset), Some(end)) = (bytes(first), last.checked_add(1).and_then(bytes)) else {
            bail!("{name}: GPT entry {} lies beyond any disk", i + 1);
        };
        let utf16: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Partition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&utf16),
            offset,
            size: end - offset,
        });
    }
    Ok(out)
}

/// A loop device over a byte range of a file or block device; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    pub fn attach(backing: &Path, offset: u64, size: u64) -> Result<LoopDev> {
        let dev = Cmd::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(size.to_string())
            .arg(backing)
            .read()
            .with_context(|| {
                format!(
                    "attaching a loop device to {} at offset {offset}",
                    backing.display()
                )
            })?;
        Ok(LoopDev {
            dev: PathBuf::from(dev.trim()),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").arg("-d").arg(&self.dev).run();
    }
}

/// A mounted filesystem; unmounted by [`Mount::unmount`] (errors reported) or on drop.
pub struct Mount {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path, fstype: &str) -> Result<Mount> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Cmd::new("mount")
            .args(["-t", fstype])
            .arg(dev)
            .arg(dir)
            .run()
            .with_context(|| format!("mounting {} on {}", dev.display(), dir.display()))?;
        Ok(Mount {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        Cmd::new("umount")
            .arg(&self.dir)
            .run()
            .with_context(|| format!("unmounting {}", self.dir.display()))?;
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Cmd::new("umount").arg(&self.dir).run();
        }
    }
}

/// The kernel-argument edit for an install: `ignition.platform.id` set to `platform`, then
/// `extra` appended (arguments already present are not repeated).
pub fn kargs_edit(
    current: &[String],
    platform: Platform,
    extra: &[String],
) -> crate::deploy::ops::KargsEdit {
    let mut edit = crate::deploy::ops::KargsEdit::default();
    let want = format!("ignition.platform.id={}", platform.id());
    let ids: Vec<&String> = current
        .iter()
        .filter(|a| a.starts_with("ignition.platform.id="))
        .collect();
    match ids.as_slice() {
        [] => edit.append.push(want),
        [one] if **one == want => {}
        [_] => edit.replace.push(want),
        many => {
            edit.delete.extend(many.iter().map(|s| s.to_string()));
            edit.append.push(want);
        }
    }
    for k in extra {
        if !current.contains(k) && !edit.append.contains(k) {
            edit.append.push(k.clone());
        }
    }
    edit
}

/// What provisioning a written disk did.
struct Provisioned {
    kargs: Vec<String>,
    ignition: Option<String>,
}

/// Mounts the written disk's root and boot partitions and applies the platform, kernel
/// arguments, Ignition config and first-boot stamp.
fn provision(
    disk_path: &Path,
    ignition: Option<&str>,
    platform: Platform,
    extra_kargs: &[String],
    work: &Path,
) -> Result<Provisioned> {
    let parts = partitions(disk_path)?;
    let find = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                "the image written to {} has no partition named {name:?}: not a kiln disk image",
                disk_path.display()
            )
            })
    };
    let (root, boot) = (find("root")?, find("boot")?);
    let root_loop = LoopDev::attach(disk_path, root.offset, root.size)?;
    let boot_loop = LoopDev::attach(disk_path, boot.offset, boot.size)?;
    let mnt = work.join("sysroot");
    let root_mount = Mount::new(&root_loop.dev, &mnt, "ext4")?;
    let boot_mount = Mount::new(&boot_loop.dev, &mnt.join("boot"), "ext4")?;
    let bootdir = mnt.join("boot");

    let os = crate::deploy::ops::default_os(&mnt);
    let empty = crate::deploy::ops::KargsEdit::default();
    let current = crate::deploy::ops::kargs(&mnt, &os, &empty, true)
        .context("reading the installed deployment's kernel arguments")?
        .before;
    let edit = kargs_edit(&current, platform, extra_kargs);
    let kargs = if edit.is_empty() {
        current
    } else {
        crate::deploy::ops::kargs(&mnt, &os, &edit, true)
            .context("changing the installed deployment's kernel arguments")?
            .after
    };
    let ignition = match ignition {
        Some(text) => {
            image::write_ignition_config(text, &bootdir)?;
            Some(format!("/boot/{}", image::IGNITION_CONFIG))
        }
        None => None,
    };
    if !bootdir.join(firstboot::STAMP).exists() {
        firstboot::write_stamp(&bootdir)?;
    }
    boot_mount.unmount()?;
    root_mount.unmount()?;
    drop(boot_loop);
    drop(root_loop);
    Ok(Provisioned { kargs, ignition })
}

/// An expected hash of an Ignition config (`--ignition-hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnitionHash {
    Sha256(String),
    Sha512(String),
}

impl IgnitionHash {
    /// Parses `sha256-<64 hex>` or `sha512-<128 hex>` (Ignition's own spelling).
    pub fn parse(s: &str) -> std::result::Result<IgnitionHash, String> {
        let bad = || {
            format!(
                "{s:?} is not an Ignition config hash: write sha256-<64 hex digits> or \
                 sha512-<128 hex digits> (e.g. sha256-$(sha256sum config.ign | cut -d' ' -f1))"
            )
        };
        let (func, hex) = s.split_once('-').ok_or_else(bad)?;
        let hex = hex.to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match (func, hex.len()) {
            ("sha256", 64) => Ok(IgnitionHash::Sha256(hex)),
            ("sha512", 128) => Ok(IgnitionHash::Sha512(hex)),
            _ => Err(bad()),
        }
    }

    /// Checks `data` against the hash; the message names both sums.
    pub fn verify(&self, data: &[u8]) -> std::result::Result<(), String> {
        let (name, want, got) = match self {
            IgnitionHash::Sha256(w) => ("sha256", w, hex::encode(Sha256::digest(data))),
            IgnitionHash::Sha512(w) => ("sha512", w, hex::encode(sha2::Sha512::digest(data))),
        };
        if *want == got {
            Ok(())
        } else {
            Err(format!(
                "the Ignition config's {name} is {got}, not the expected {want}: refusing it"
            ))
        }
    }
}

/// Decides whether an Ignition source may be used, before anything is fetched or written:
/// a URL must be a valid http(s) URL ([`crate::validate::url`]); a plain `http://` URL
/// needs a hash (anyone on the network path could otherwise hand the machine a config of
/// their choosing, as coreos-installer also refuses) unless `insecure`. Returns the parsed
/// hash. `hash_key`/`insecure_key` name the options in messages.
pub fn ignition_policy(
    src: &str,
    hash: Option<&str>,
    insecure: bool,
) -> std::result::Result<Option<IgnitionHash>, (&'static str, String)> {
    let hash = hash
        .map(IgnitionHash::parse)
        .transpose()
        .map_err(|m| ("--ignition-hash", m))?;
    if src.contains("://") {
        crate::validate::url(src, crate::validate::Schemes::Http).map_err(|m| ("--ignition", m))?;
        if crate::validate::is_plain_http(src) && hash.is_none() && !insecure {
            return Err((
                "--ignition",
                format!(
                    "{src} is plain http: anyone on the network path could change the config \
                     and so own the machine. Give its hash with --ignition-hash \
                     sha256-<hex>, serve it over https://, or accept the risk with \
                     --insecure-ignition"
                ),
            ));
        }
    }
    Ok(hash)
}

/// Reads the Ignition config from a file or URL and checks it.
fn load_ignition(src: &str, hash: Option<&IgnitionHash>, work: &Path) -> Result<String> {
    let bytes = if is_url(src) {
        fetch_small(src, MAX_IGNITION_BYTES, work)?.ok_or_else(|| {
            InputError::new(src, "Ignition config not found (HTTP 404)").key("--ignition")
        })?
    } else {
        match std::fs::read(src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InputError::new(src, "Ignition config not found")
                    .key("--ignition")
                    .into())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {src}")),
        }
    };
    if let Some(h) = hash {
        h.verify(&bytes)
            .map_err(|m| anyhow::anyhow!("{src}: {m}"))?;
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| InputError::new(src, "the Ignition config is not UTF-8 text"))?;
    image::check_ignition_config(&text, src)?;
    Ok(text)
}

/// Tools the installer runs.
fn preflight(opts: &InstallOptions) -> Result<()> {
    let mut need = vec![("sgdisk", "gdisk")];
    if !matches!(opts.source, ImageSource::Commit { .. }) {
        need.extend([("losetup", "mount"), ("mount", "mount")]);
    }
    if matches!(opts.source, ImageSource::Url(_)) || opts.ignition.as_deref().is_some_and(is_url) {
        need.push(("curl", "curl"));
    }
    let missing: Vec<String> = need
        .iter()
        .filter(|(p, _)| !crate::cmd::have(p))
        .map(|(p, pkg)| format!("{p} (package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing host tools: {}", missing.join(", "));
    }
    Ok(())
}

/// A disk-image file that will hold an Ignition config (password hashes, keys) loses group
/// and other access before anything is written to it. Block devices keep their mode
/// (udev's, root-only writable and readable by the disk group).
fn private_target(out: &Out, has_ignition: bool) -> Result<()> {
    if has_ignition && out.target.kind == TargetKind::File {
        crate::ignition::make_private(&out.file, &out.target.path)?;
    }
    Ok(())
}

/// Zeroes the head of a partly written disk so it cannot pass for an installed one.
fn invalidate(out: &Out) {
    let _ = out.zero(0, HEAD.min(out.target.size));
    let _ = out.sync();
}

/// Installs an image on a disk (see the module documentation for the steps).
pub fn install(opts: &InstallOptions, p: &mut Progress) -> Result<InstallResult> {
    check_kargs(&opts.kargs)?;
    let sha = opts.image_sha256.as_deref().map(parse_sha256).transpose()?;
    let ignition_hash = match &opts.ignition {
        Some(src) => ignition_policy(src, opts.ignition_hash.as_deref(), opts.insecure_ignition)
            .map_err(|(key, m)| InputError::new("command line", m).key(key))?,
        None => None,
    };
    preflight(opts)?;
    let work = crate::cleanup::TempDir::new("kiln-install-")
        .context("creating a temp directory (set TMPDIR to choose where)")?;
    let log = work.path().join("install.log");
    let ignition = opts
        .ignition
        .as_deref()
        .map(|s| load_ignition(s, ignition_hash.as_ref(), work.path()))
        .transpose()?;
    let target = Target::inspect(&opts.device)?;
    let dev_name = target.path.display().to_string();

    let mut result = InstallResult {
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
    };

    // Build a commit's image first (it carries kargs, platform and Ignition itself).
    let mut built_dir: Option<crate::cleanup::TempDir> = None;
    let (source, resolved) = match &opts.source {
        ImageSource::Commit { repo, rev } => {
            let size = DEFAULT_BUILD_SIZE.min(target.size / disk::MIB * disk::MIB);
            disk::Layout::for_size(size).map_err(|e| {
                InputError::new(dev_name.clone(), format!("the target is too small: {e:#}"))
            })?;
            let r = crate::repo::open(repo)?;
            let info = crate::repo::read_commit(&r, rev)
                .with_context(|| format!("looking up {rev:?} in {}", repo.display()))?;
            result.commit = Some(info.checksum.clone());
            result.image_size = size;
            if opts.dry_run {
                result.timings = p.timings_json();
                return Ok(result);
            }
            let bdir = built_dir
                .insert(
                    crate::cleanup::TempDir::new("kiln-install-image-")
                        .context("creating a temp directory for the image")?,
                )
                .path()
                .to_path_buf();
            let out = bdir.join("disk.raw");
            let ign_file = match &ignition {
                Some(text) => {
                    let f = bdir.join("config.ign");
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
            result.ignition = ignition
                .as_ref()
                .map(|_| format!("/boot/{}", image::IGNITION_CONFIG));
            (
                ImageSource::File(out),
                Resolved {
                    format: Format::Raw,
                    size: Some(built.size),
                    file_size: Some(built.size),
                    expected: Some(Expected {
                        sha256: built.sha256,
                        from: "built".into(),
                    }),
                    verified_sha: None,
                },
            )
        }
        ImageSource::File(f) => (opts.source.clone(), resolve_file(f, sha.as_ref())?),
        ImageSource::Url(u) => (
            opts.source.clone(),
            resolve_url(u, sha.as_ref(), work.path())?,
        ),
    };
    result.format = resolved.format;
    result.verified_against = resolved.expected.as_ref().map(|e| e.from.clone());
    if let Some(size) = resolved.size {
        check_fits(&target, size, &source.describe())?;
        result.image_size = size;
    }
    if opts.dry_run {
        result.timings = p.timings_json();
        return Ok(result);
    }
    if !matches!(opts.source, ImageSource::Commit { .. }) && resolved.expected.is_none() {
        p.note(&format!(
            "{} is not listed in a manifest.json beside it and no --image-sha256 was given: \
             writing it unverified",
            source.describe()
        ));
    }

    // The write.
    let (sha256, image_size) = match resolved.format {
        Format::Raw => {
            let mut r = open_stream(&source, &log)?;
            // The first MiB proves the source is readable (and not a misnamed qcow2)
            // before the target is touched.
            let mut head = vec![0u8; HEAD as usize];
            let n = read_full(&mut r, &mut head)
                .with_context(|| format!("reading the image from {}", source.describe()))?;
            head.truncate(n);
            if n == 0 {
                return Err(InputError::new(source.describe(), "the image is empty").into());
            }
            if head.starts_with(QCOW2_MAGIC) {
                return Err(InputError::new(
                    source.describe(),
                    "this is a qcow2 image, not raw (name it *.qcow2 or list it as qcow2 in \
                     manifest.json)",
                )
                .into());
            }
            let out = Out::open(&target)?;
            private_target(&out, ignition.is_some())?;
            out.zero(0, HEAD.min(target.size))?;
            out.zero(target.size.saturating_sub(HEAD), HEAD.min(target.size))?;
            let mut stage = p.bytes_stage("write", resolved.size.or(resolved.file_size));
            let r = stream_raw(
                head,
                &mut r,
                &out,
                resolved.expected.as_ref(),
                resolved.file_size,
                &source.describe(),
                &mut stage,
            );
            stage.done();
            let (sha, len) = r.with_context(|| {
                format!(
                    "installing to {dev_name} failed; nothing was accepted: its partition \
                     table is erased (first MiB zeroed), so it does not boot"
                )
            })?;
            (sha, len)
        }
        Format::Qcow2 => {
            let (local, sha) = match &source {
                ImageSource::File(f) => {
                    // Verified whole (if a sha256 was known) before qemu-img read it.
                    (f.clone(), resolved.verified_sha.clone())
                }
                _ => {
                    let dst = work.path().join("image.qcow2");
                    let mut stage = p.bytes_stage("download", resolved.file_size);
                    let r = download_verified(
                        &source,
                        &dst,
                        resolved.expected.as_ref(),
                        &log,
                        &mut stage,
                    );
                    stage.done();
                    let (sha, _) =
                        r.with_context(|| format!("nothing was written to {dev_name}"))?;
                    (dst, Some(sha))
                }
            };
            let vsize = qcow2_virtual_size(&local)?;
            check_fits(&target, vsize, &source.describe())?;
            let out = Out::open(&target)?;
            private_target(&out, ignition.is_some())?;
            out.zero(0, HEAD.min(target.size))?;
            out.zero(target.size.saturating_sub(HEAD), HEAD.min(target.size))?;
            let mut stage = p.bytes_stage("write", Some(vsize));
            let r = write_qcow2(&local, &out, vsize, &log, &mut stage);
            stage.done();
            if let Err(e) = r {
                invalidate(&out);
                return Err(e.context(format!(
                    "installing to {dev_name} failed; its partition table is erased (first \
                     MiB zeroed), so it does not boot"
                )));
            }
            let sha = match sha {
                Some(s) => s,
                None => manifest::sha256_file(&local)?,
            };
            (sha, vsize)
        }
        other => bail!(
            "cannot install a {} image: give a raw or qcow2 disk image",
            other.name()
        ),
    };
    result.sha256 = Some(sha256);
    result.image_size = image_size;

    // From here on a failure must not leave a disk that looks installed.
    let finish = (|| -> Result<()> {
        if target.size > image_size {
            // The backup GPT goes to the end of the disk.
            Cmd::new("sgdisk")
                .arg("--move-second-header")
                .arg(&target.path)
                .run_logged(&log)
                .with_context(|| format!("moving the backup GPT to the end of {dev_name}"))?;
        }
        if !matches!(opts.source, ImageSource::Commit { .. }) {
            let s = p.stage("provision");
            let prov = provision(
                &target.path,
                ignition.as_deref(),
                opts.platform,
                &opts.kargs,
                work.path(),
            )?;
            s.done();
            result.kargs = prov.kargs;
            result.ignition = prov.ignition;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target.path)
            .with_context(|| format!("opening {dev_name}"))?;
        f.sync_all()
            .with_context(|| format!("flushing {dev_name}"))?;
        if target.kind == TargetKind::Block {
            // Let the kernel see the new partitions (fails harmlessly on a loop device
            // without partition scanning).
            // SAFETY: BLKRRPART takes no argument.
            unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) };
        }
        Ok(())
    })();
    if let Err(e) = finish {
        if let Ok(out) = Out::open(&target) {
            invalidate(&out);
        }
        return Err(e.context(format!(
            "installing to {dev_name} failed after the image was written; its partition \
             table is erased (first MiB zeroed), so it does not boot"
        )));
    }
    result.timings = p.timings_json();
    Ok(result)
}

/// `kiln install`.
pub fn cmd_install(a: InstallArgs) -> Result<()> {
    let source = match (&a.image, &a.repo, &a.ref_) {
        (Some(i), None, None) => ImageSource::parse(i),
        (None, Some(repo), Some(rev)) => ImageSource::Commit {
            repo: repo.clone(),
            rev: rev.clone(),
        },
        _ => {
            return Err(InputError::new(
                "command line",
                "give either --image FILE|URL or --repo DIR --ref REF",
            )
            .into())
        }
    };
    let opts = InstallOptions {
        device: a.device,
        source,
        ignition: a.ignition,
        ignition_hash: a.ignition_hash,
        insecure_ignition: a.insecure_ignition,
        kargs: a.kargs,
        platform: a.platform,
        image_sha256: a.image_sha256,
        dry_run: a.dry_run,
    };
    let mut p = Progress::new(false);
    let r = install(&opts, &mut p)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("encoding JSON")?
        );
    } else if r.dry_run {
        eprintln!(
            "kiln: dry run: would install {} ({}, {} bytes{}) to {} ({} bytes); nothing \
             was written",
            r.source,
            r.format.name(),
            r.image_size,
            r.verified_against
                .as_deref()
                .map(|v| format!(", sha256 checked against {v}"))
                .unwrap_or_default(),
            r.device.display(),
            r.device_size
        );
    } else {
        eprintln!(
            "kiln: installed {} ({}, {} bytes, sha256 {}{}) to {}{}",
            r.source,
            r.format.name(),
            r.image_size,
            r.sha256.as_deref().unwrap_or("?"),
            r.verified_against
                .as_deref()
                .map(|v| format!(" verified against {v}"))
                .unwrap_or_else(|| " unverified".into()),
            r.device.display(),
            r.ignition
                .as_deref()
                .map(|i| format!("; Ignition config at {i}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_url_is_beside_the_image() {
        assert_eq!(
            manifest_url("http://127.0.0.1:8000/a/b/disk.raw?x=1"),
            Some((
                "http://127.0.0.1:8000/a/b/manifest.json".into(),
                "disk.raw".into()
            ))
        );
        assert_eq!(manifest_url("http://host/"), None);
        assert_eq!(manifest_url("http://host"), None);
    }

    #[test]
    fn plain_http_ignition_needs_a_hash_or_insecure() {
        let h256 = format!("sha256-{}", "ab".repeat(32));
        let h512 = format!("sha512-{}", "CD".repeat(64));
        // https and files: fine without a hash.
        assert_eq!(ignition_policy("https://h/c.ign", None, false), Ok(None));
        assert_eq!(ignition_policy("/srv/c.ign", None, false), Ok(None));
        assert_eq!(ignition_policy("c.ign", None, false), Ok(None));
        // Plain http: refused without a hash, naming the way out.
        let (key, m) = ignition_policy("http://10.0.0.1/c.ign", None, false).unwrap_err();
        assert_eq!(key, "--ignition");
        assert!(
            m.contains("--ignition-hash") && m.contains("--insecure-ignition"),
            "{m}"
        );
        assert!(ignition_policy("HTTP://10.0.0.1/c.ign", None, false).is_err());
        // ... accepted with a hash or the explicit flag.
        assert_eq!(
            ignition_policy("http://10.0.0.1/c.ign", Some(&h256), false),
            Ok(Some(IgnitionHash::Sha256("ab".repeat(32))))
        );
        assert_eq!(
            ignition_policy("http://10.0.0.1/c.ign", Some(&h512), false),
            Ok(Some(IgnitionHash::Sha512("cd".repeat(64))))
        );
        assert_eq!(ignition_policy("http://h/c.ign", None, true), Ok(None));
        // Bad hashes and URLs are refused at the door.
        for bad in [
            "ab".repeat(32),
            format!("md5-{}", "ab".repeat(16)),
            format!("sha256-{}", "ab".repeat(31)),
            format!("sha256-{}", "zz".repeat(32)),
            format!("sha512-{}", "ab".repeat(32)),
        ] {
            let (key, _) = ignition_policy("https://h/c", Some(&bad), false).unwrap_err();
            assert_eq!(key, "--ignition-hash", "{bad}");
        }
        for bad in ["http:///c.ign", "ftp://h/c.ign", "https://h:0/c"] {
            assert!(ignition_policy(bad, Some(&h256), true).is_err(), "{bad}");
        }
        // Verification.
        let data = b"{\"ignition\":{\"version\":\"3.3.0\"}}";
        let good =
            IgnitionHash::parse(&format!("sha256-{}", hex::encode(Sha256::digest(data)))).unwrap();
        good.verify(data).unwrap();
        let e = good.verify(b"{}").unwrap_err();
        assert!(e.contains("not the expected"), "{e}");
        let good512 = IgnitionHash::parse(&format!(
            "sha512-{}",
            hex::encode(sha2::Sha512::digest(data))
        ))
        .unwrap();
        good512.verify(data).unwrap();
        assert!(good512.verify(b"x").is_err());
    }

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

    #[test]
    fn platform_is_replaced_and_kargs_appended_once() {
        let cur: Vec<String> = ["rw", "$ignition_firstboot", "ignition.platform.id=qemu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = kargs_edit(
            &cur,
            Platform::Metal,
            &["rw".into(), "a=1".into(), "a=1".into()],
        );
        assert_eq!(e.replace, vec!["ignition.platform.id=metal"]);
        assert_eq!(e.append, vec!["a=1"]);
        assert_eq!(
            e.apply(&cur).unwrap(),
            vec![
                "rw",
                "$ignition_firstboot",
                "ignition.platform.id=metal",
                "a=1"
            ]
        );
        let e = kargs_edit(&cur, Platform::Qemu, &[]);
        assert!(e.is_empty());
        let e = kargs_edit(&["rw".into()], Platform::Metal, &[]);
        assert_eq!(e.append, vec!["ignition.platform.id=metal"]);
    }

    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let c = &mut self.0[0];
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            c.drain(..n);
            if c.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    fn file_target(dir: &Path, size: u64, fill: u8) -> Target {
        let path = dir.join("disk");
        std::fs::write(&path, vec![fill; size as usize]).unwrap();
        Target {
            path,
            kind: TargetKind::File,
            size,
        }
    }

    fn image(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            // Data in the head and at the end, a zero run in the middle.
            if i < CHUNK + 100 || i >= len - 10 {
                *b = (i % 251) as u8 + 1;
            }
        }
        v
    }

    #[test]
    fn verified_stream_lands_whole_with_its_head_last() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK + 77);
        let t = file_target(td.path(), 5 * CHUNK as u64, 0xAB);
        let out = Out::open(&t).unwrap();
        let exp = Expected {
            sha256: hex::encode(Sha256::digest(&img)),
            from: "test".into(),
        };
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let (sha, n) = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            Some(&exp),
            Some(img.len() as u64),
            "img",
            &mut s,
        )
        .unwrap();
        assert_eq!(sha, exp.sha256);
        assert_eq!(n, img.len() as u64);
        let disk = std::fs::read(&t.path).unwrap();
        assert_eq!(&disk[..img.len()], &img[..]);
        // Past the image, the target is untouched.
        assert!(disk[img.len()..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn bad_digest_never_writes_the_head() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK);
        let t = file_target(td.path(), 4 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let exp = Expected {
            sha256: "0".repeat(64),
            from: "manifest.json".into(),
        };
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            Some(&exp),
            None,
            "img",
            &mut s,
        )
        .unwrap_err();
        let m = err
            .downcast_ref::<DigestMismatch>()
            .expect("a digest mismatch");
        assert_eq!(m.from, "manifest.json");
        let disk = std::fs::read(&t.path).unwrap();
        assert!(disk[..CHUNK].iter().all(|&b| b == 0), "head written");
    }

    #[test]
    fn sparse_reader_reads_holes_as_zeros() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(8 * CHUNK as u64 + 5).unwrap();
        f.write_all_at(b"hello", 3 * CHUNK as u64 - 2).unwrap();
        f.write_all_at(b"end", 8 * CHUNK as u64 + 2).unwrap();
        drop(f);
        let mut got = Vec::new();
        SparseReader::open(&p)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, std::fs::read(&p).unwrap());
    }

    #[test]
    fn gpt_is_read_like_sgdisk_wrote_it() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("disk");
        let layout = disk::Layout::for_size(2048 * disk::MIB).unwrap();
        let ids = disk::Ids::for_commit(&"c".repeat(64));
        disk::partition(&p, &layout, &ids, &td.path().join("log")).unwrap();
        let parts = partitions(&p).unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["BIOS-BOOT", "EFI-SYSTEM", "boot", "root"]);
        assert_eq!(parts[2].offset, layout.boot.offset);
        assert_eq!(parts[2].size, layout.boot.size);
        assert_eq!(parts[3].offset, layout.root.offset);
        assert_eq!(parts[3].size, layout.root.size);
        assert_eq!(parts[3].number, 4);
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(format!("{:#}", partitions(&p).unwrap_err()).contains("no GPT"));
    }

    #[test]
    fn oversized_and_truncated_streams_fail() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK);
        let t = file_target(td.path(), 2 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            None,
            None,
            "img",
            &mut s,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("larger than the target"),
            "{err:#}"
        );
        let t = file_target(td.path(), 4 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let mut r = Chunks(vec![img[CHUNK..2 * CHUNK].to_vec()]);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            None,
            Some(img.len() as u64),
            "img",
            &mut s,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        let disk = std::fs::read(&t.path).unwrap();
        assert!(disk[..CHUNK].iter().all(|&b| b == 0), "head written");
    }
}
