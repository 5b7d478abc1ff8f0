//! The disk: a GPT on a sparse file and filesystems built from directories.
//!
//! No loop devices and no mounts: ext4 filesystems come from `mkfs.ext4 -d DIR` into
//! sparse files, the ESP from `mkfs.vfat` + mtools, the partition table from `sgdisk`, and
//! each filesystem's data extents are copied into place (holes stay holes).
//!
//! Layout (partition numbers are stable whatever the firmware; see docs/image.md):
//!
//! | # | name         | type                 | size              |
//! |---|--------------|----------------------|-------------------|
//! | 1 | `BIOS-BOOT`  | BIOS boot (EF02)     | 1 MiB             |
//! | 2 | `EFI-SYSTEM` | EFI system (EF00)    | 127 MiB, vfat     |
//! | 3 | `boot`       | Linux (8300)         | 512 MiB, ext4     |
//! | 4 | `root`       | Linux x86-64 root    | the rest, ext4    |

use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const MIB: u64 = 1024 * 1024;
pub const SECTOR: u64 = 512;

/// Partition sizes in MiB (the root partition takes what is left).
pub const BIOS_BOOT_MIB: u64 = 1;
pub const ESP_MIB: u64 = 127;
pub const BOOT_MIB: u64 = 512;
/// The first partition starts at 1 MiB; the backup GPT needs 33 sectors at the end: keep
/// the last MiB free.
pub const LEAD_MIB: u64 = 1;
pub const TAIL_MIB: u64 = 1;
/// Smallest root filesystem kiln accepts (a minimal tree plus one upgrade).
pub const MIN_ROOT_MIB: u64 = 1024;

/// The identifiers of one image, derived from the commit it holds: the same commit gives
/// the same disk bytes, two different commits' images do not share GUIDs and UUIDs (each
/// is `sha256("kiln:" + commit + ":" + role)`, cut to 128 bits with RFC 4122 version-4
/// and variant bits). A machine made from an image gets its own on first boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ids {
    pub disk_guid: String,
    pub bios_part_guid: String,
    pub esp_part_guid: String,
    pub boot_part_guid: String,
    pub root_part_guid: String,
    pub boot_fs_uuid: String,
    pub root_fs_uuid: String,
    /// vfat volume id (8 hex digits).
    pub esp_volume_id: String,
}

impl Ids {
    pub fn for_commit(commit: &str) -> Ids {
        let vol = derive_bytes(commit, "esp-volume-id");
        Ids {
            disk_guid: derive_uuid(commit, "disk"),
            bios_part_guid: derive_uuid(commit, "part-bios"),
            esp_part_guid: derive_uuid(commit, "part-esp"),
            boot_part_guid: derive_uuid(commit, "part-boot"),
            root_part_guid: derive_uuid(commit, "part-root"),
            boot_fs_uuid: derive_uuid(commit, "fs-boot"),
            root_fs_uuid: derive_uuid(commit, "fs-root"),
            esp_volume_id: hex::encode_upper(&vol[..4]),
        }
    }
}

fn derive_bytes(commit: &str, role: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("kiln:{commit}:{role}").as_bytes()).into()
}

/// A UUID (RFC 4122 layout, version 4 and variant bits set) derived from `commit` and
/// `role`.
pub fn derive_uuid(commit: &str, role: &str) -> String {
    let mut b = derive_bytes(commit, role);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&b[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Where each partition lives on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
}

impl Extent {
    pub fn first_sector(&self) -> u64 {
        self.offset / SECTOR
    }
    pub fn last_sector(&self) -> u64 {
        (self.offset + self.size) / SECTOR - 1
    }
}

/// The four partitions of a kiln disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub disk_size: u64,
    pub bios_boot: Extent,
    pub esp: Extent,
    pub boot: Extent,
    pub root: Extent,
}

impl Layout {
    /// Computes the layout for a disk of `disk_size` bytes (rounded down to whole MiB).
    pub fn for_size(disk_size: u64) -> Result<Layout> {
        let total_mib = disk_size / MIB;
        let fixed = LEAD_MIB + BIOS_BOOT_MIB + ESP_MIB + BOOT_MIB + TAIL_MIB;
        if total_mib < fixed + MIN_ROOT_MIB {
            bail!(
                "disk size {} MiB is too small: the fixed partitions take {fixed} MiB and the \
                 root filesystem needs at least {MIN_ROOT_MIB} MiB (use --size {}M or more)",
                total_mib,
                fixed + MIN_ROOT_MIB
            );
        }
        let mut at = LEAD_MIB * MIB;
        let mut next = |mib: u64| {
            let e = Extent {
                offset: at,
                size: mib * MIB,
            };
            at += mib * MIB;
            e
        };
        let bios_boot = next(BIOS_BOOT_MIB);
        let esp = next(ESP_MIB);
        let boot = next(BOOT_MIB);
        let root = next(total_mib - fixed);
        Ok(Layout {
            disk_size: total_mib * MIB,
            bios_boot,
            esp,
            boot,
            root,
        })
    }
}

/// Parses a size such as `4G`, `4096M`, `512MiB`, `8GB` or a plain byte count (the shared
/// size rule, [`crate::validate::size`]).
pub fn parse_size(s: &str) -> Result<u64> {
    crate::validate::size(s).map_err(anyhow::Error::msg)
}

/// A size given on the command line (`--size 4G`): parsed by the shared size rule
/// ([`crate::validate::size`]) when the command line is read, so a bad one is refused
/// (exit 2) before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for Size {
    type Err = crate::error::InputError;

    fn from_str(s: &str) -> Result<Size, Self::Err> {
        crate::validate::size(s)
            .map(Size)
            .map_err(|m| crate::error::InputError::new("command line", m).key("--size"))
    }
}

/// Environment for e2fsprogs so that filesystem timestamps follow the build epoch.
fn e2fs_env(cmd: Cmd, epoch: Option<u64>) -> Cmd {
    match epoch {
        Some(e) => cmd
            .env("E2FSPROGS_FAKE_TIME", e.to_string())
            .env("SOURCE_DATE_EPOCH", e.to_string()),
        None => cmd,
    }
}

/// Builds an ext4 filesystem image of exactly `size` bytes at `out` from the contents of
/// `dir` (owners, modes, xattrs and hard links preserved).
pub fn mkfs_ext4(
    dir: &Path,
    out: &Path,
    size: u64,
    label: &str,
    uuid: &str,
    epoch: Option<u64>,
    log: &Path,
) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(f);
    let cmd = Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-U", uuid])
        .arg("-E")
        // The directory hash seed follows the filesystem UUID (fixed per image).
        .arg(format!(
            "hash_seed={},nodiscard",
            derive_uuid(uuid, "hash-seed")
        ))
        // metadata_csum_seed lets the UUID change later (first boot) without rewriting
        // every checksum.
        .args(["-O", "metadata_csum_seed", "-d"])
        .arg(dir)
        .arg(out);
    e2fs_env(cmd, epoch)
        .run_logged(log)
        .with_context(|| format!("building the {label} filesystem from {}", dir.display()))?;
    Ok(())
}

/// Builds the FAT32 EFI system partition image with the given files (`(path in ESP,
/// source)`), directories created as needed.
pub fn mkfs_esp(
    out: &Path,
    size: u64,
    files: &[(&str, &Path)],
    volume_id: &str,
    epoch: u64,
    log: &Path,
) -> Result<()> {
    if out.exists() {
        std::fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    Cmd::new("mkfs.vfat")
        .args([
            "-F",
            "32",
            // Fixed creation time in the boot sector and volume label (docs/reproducible.md).
            "--invariant",
            "-n",
            "EFI-SYSTEM",
            "-i",
            volume_id,
            "-C",
        ])
        .arg(out)
        .arg((size / 1024).to_string())
        .run_logged(log)
        .context("building the EFI system partition (mkfs.vfat)")?;
    let mut made = std::collections::BTreeSet::new();
    for (dest, src) in files {
        let parts: Vec<&str> = dest.trim_start_matches('/').split('/').collect();
        let mut p = String::new();
        for d in &parts[..parts.len().saturating_sub(1)] {
            p.push('/');
            p.push_str(d);
            if made.insert(p.clone()) {
                Cmd::new("mmd")
                    .arg("-i")
                    .arg(out)
                    .arg(format!("::{p}"))
                    .env("MTOOLS_SKIP_CHECK", "1")
                    // mtools dates new entries with SOURCE_DATE_EPOCH when set.
                    .env("SOURCE_DATE_EPOCH", epoch.to_string())
                    .run_logged(log)
                    .with_context(|| format!("creating {p} on the ESP"))?;
            }
        }
        Cmd::new("mcopy")
            .args(["-o", "-i"])
            .arg(out)
            .arg(src)
            .arg(format!("::/{}", dest.trim_start_matches('/')))
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .run_logged(log)
            .with_context(|| format!("copying {} to the ESP", src.display()))?;
    }
    Ok(())
}

/// Creates the sparse disk file and writes the GPT.
pub fn partition(disk: &Path, layout: &Layout, ids: &Ids, log: &Path) -> Result<()> {
    let f = std::fs::File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(layout.disk_size)
        .with_context(|| format!("sizing {}", disk.display()))?;
    drop(f);
    let part = |n: u32, e: &Extent, code: &str, name: &str, guid: &String| -> Vec<String> {
        vec![
            format!("--new={n}:{}:{}", e.first_sector(), e.last_sector()),
            format!("--typecode={n}:{code}"),
            format!("--change-name={n}:{name}"),
            format!("--partition-guid={n}:{guid}"),
        ]
    };
    let mut args: Vec<String> = vec!["--clear".into(), format!("--disk-guid={}", ids.disk_guid)];
    args.extend(part(
        1,
        &layout.bios_boot,
        "EF02",
        "BIOS-BOOT",
        &ids.bios_part_guid,
    ));
    args.extend(part(
        2,
        &layout.esp,
        "EF00",
        "EFI-SYSTEM",
        &ids.esp_part_guid,
    ));
    args.extend(part(3, &layout.boot, "8300", "boot", &ids.boot_part_guid));
    // 8304: "Linux x86-64 root (/)" from the Discoverable Partitions Specification.
    args.extend(part(4, &layout.root, "8304", "root", &ids.root_part_guid));
    Cmd::new("sgdisk")
        .args(&args)
        .arg(disk)
        .run_logged(log)
        .context("writing the partition table (sgdisk)")?;
    Ok(())
}

/// Copies a filesystem image into the disk at `extent`. Only the source's data extents are
/// copied (`SEEK_DATA`/`SEEK_HOLE`, then `copy_file_range`), so a mostly empty 4 GB
/// filesystem costs what its data costs; holes stay holes in the disk file.
pub fn write_at(disk: &Path, fs: &Path, extent: &Extent) -> Result<()> {
    use std::os::fd::AsRawFd;
    let src = std::fs::File::open(fs).with_context(|| format!("opening {}", fs.display()))?;
    let len = src
        .metadata()
        .with_context(|| format!("reading {}", fs.display()))?
        .len();
    if len > extent.size {
        bail!(
            "{} is {} bytes, larger than its partition ({} bytes)",
            fs.display(),
            len,
            extent.size
        );
    }
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let ctx = || format!("copying {} into {}", fs.display(), disk.display());
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: plain syscalls on file descriptors owned by `src`/`dst` for this scope.
        let data = unsafe { libc::lseek(sfd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e).with_context(ctx);
        }
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error()).with_context(ctx);
        }
        let mut off_in = data;
        let mut off_out = extent.offset as i64 + data;
        while off_in < hole {
            let n = unsafe {
                libc::copy_file_range(
                    sfd,
                    &mut off_in,
                    dfd,
                    &mut off_out,
                    (hole - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).with_context(ctx);
            }
            if n == 0 {
                bail!("{}: unexpected end of file at {off_in}", fs.display());
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Writes `data` at byte `offset` of `disk` (for boot sectors).
pub fn write_bytes(disk: &Path, offset: u64, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    f.write_all_at(data, offset).with_context(|| {
        format!(
            "writing {} bytes at {offset} in {}",
            data.len(),
            disk.display()
        )
    })?;
    Ok(())
}

/// Reads `len` bytes at `offset` of `disk`.
pub fn read_bytes(disk: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .with_context(|| format!("reading {len} bytes at {offset} in {}", disk.display()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_commit() {
        let a = Ids::for_commit(&"a".repeat(64));
        let b = Ids::for_commit(&"b".repeat(64));
        assert_eq!(a, Ids::for_commit(&"a".repeat(64)));
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.boot_fs_uuid, a.root_fs_uuid);
        for u in [&a.disk_guid, &a.root_fs_uuid, &a.esp_part_guid] {
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4", "{u}");
            assert!("89ab".contains(&u[19..20]), "{u}");
        }
        assert_eq!(a.esp_volume_id.len(), 8);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G").unwrap(), 4096 * MIB);
        assert_eq!(parse_size("4096M").unwrap(), 4096 * MIB);
        assert_eq!(parse_size("2GiB").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("1048576").unwrap(), MIB);
        assert!(parse_size("G").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn layout_is_aligned_and_fills_the_disk() {
        let l = Layout::for_size(4096 * MIB).unwrap();
        assert_eq!(l.bios_boot.offset, MIB);
        assert_eq!(l.esp.offset, 2 * MIB);
        assert_eq!(l.boot.offset, 129 * MIB);
        assert_eq!(l.root.offset, 641 * MIB);
        assert_eq!(l.root.offset + l.root.size, l.disk_size - MIB);
        for e in [l.bios_boot, l.esp, l.boot, l.root] {
            assert_eq!(e.offset % MIB, 0);
            assert_eq!(e.size % MIB, 0);
        }
        let err = Layout::for_size(1024 * MIB).unwrap_err().to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
