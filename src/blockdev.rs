//! Block devices without a partitioning tool: the GPT of a disk read directly
//! ([`partitions`]), loop devices over a byte range of a file or disk ([`LoopDev`]) and
//! mounts undone on drop ([`Mount`]). `kiln install` provisions a written disk through
//! these, and the tests read installed disks back with them.

use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The logical sector size the GPT reader assumes (kiln images use 512-byte sectors).
const SECTOR: u64 = 512;

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
    f.read_exact_at(&mut hdr, SECTOR)
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
    let Some(table_at) = entries_lba.checked_mul(SECTOR) else {
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
        let bytes = |lba: u64| lba.checked_mul(SECTOR);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::disk;

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
}
