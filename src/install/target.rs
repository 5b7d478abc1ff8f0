//! The install target: a block device or a regular file, inspected (in use? how large?)
//! before anything is written, and opened for writing ([`Out`]).

use super::{CHUNK, HEAD};
use crate::error::InputError;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

// <linux/fs.h>
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// What kind of target the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Block,
    File,
}

/// The install target, inspected.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    pub size: u64,
}

impl Target {
    /// Flushes the written disk and, for a block device, lets the kernel see the new
    /// partitions (which fails harmlessly on a loop device without partition scanning).
    pub(super) fn flush_and_reread(&self) -> Result<()> {
        let dev_name = self.path.display();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .with_context(|| format!("opening {dev_name}"))?;
        f.sync_all()
            .with_context(|| format!("flushing {dev_name}"))?;
        if self.kind == TargetKind::Block {
            // SAFETY: BLKRRPART takes no argument.
            unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) };
        }
        Ok(())
    }

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
pub(super) struct Out {
    pub(super) file: File,
    pub(super) target: Target,
}

impl Out {
    pub(super) fn open(target: &Target) -> Result<Out> {
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

    pub(super) fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
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
    pub(super) fn zero(&self, off: u64, len: u64) -> Result<()> {
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

    pub(super) fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("flushing {}", self.target.path.display()))
    }
}

/// Fails unless the image fits the target.
pub(super) fn check_fits(target: &Target, image_size: u64, what: &str) -> Result<()> {
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

/// A disk-image file that will hold an Ignition config (password hashes, keys) loses group
/// and other access before anything is written to it. Block devices keep their mode
/// (udev's, root-only writable and readable by the disk group).
pub(super) fn private_target(out: &Out, has_ignition: bool) -> Result<()> {
    if has_ignition && out.target.kind == TargetKind::File {
        crate::ignition::make_private(&out.file, &out.target.path)?;
    }
    Ok(())
}

/// Zeroes the head of a partly written disk so it cannot pass for an installed one.
pub(super) fn invalidate(out: &Out) {
    let _ = out.zero(0, HEAD.min(out.target.size));
    let _ = out.sync();
}
