//! GRUB for BIOS (i386-pc) and UEFI (shim and Debian's signed GRUB), installed without a
//! device.
//!
//! One boot path for BIOS, UEFI and Secure Boot. libostree's `grub2` backend writes the
//! menu `/loader/grub.cfg` on the boot partition with kiln as its generator
//! ([`crate::deploy::grub`]), in the same atomic `boot/loader` swap as the boot entries.
//! The boot partition's static `/grub/grub.cfg` ([`grub_cfg_for`]) sets up the console and
//! first boot, then `source`s that menu. Whatever libostree does next (deploy, rollback,
//! kargs, a staged deployment finalized at shutdown) is what GRUB boots next. The menu
//! uses plain `linux`/`initrd` and GRUB script only, which Debian's signed GRUB has built
//! in (it cannot load modules under Secure Boot and has no `syslinuxcfg`).
//!
//! BIOS: `grub-mkimage -O i386-pc` gives `core.img` with an embedded early config that
//! finds the partition labelled `boot` and sets `$prefix` to its `/grub`; every module the
//! config needs is built in. It is written into the BIOS boot partition; `boot.img` goes
//! into the MBR's code area, patched the way `grub-bios-setup` does (the LBA of core.img,
//! boot drive 0xff, the drive-check jump turned into NOPs) while the protective MBR's
//! partition table is kept. core.img's own blocklist is pointed at the sectors after its
//! first one. The modules come from the commit's own tree (`grub-pc-bin` in the recipe),
//! else the host's.
//!
//! UEFI: the removable-media path every firmware boots without NVRAM entries,
//! `EFI/BOOT/BOOTX64.EFI`, is Debian's shim (`shimx64.efi.signed`, signed by the Microsoft
//! UEFI CA); shim loads `EFI/BOOT/grubx64.efi`, Debian's signed GRUB
//! (`grubx64.efi.signed`), and `EFI/BOOT/mmx64.efi` (MokManager) enrols user keys. The
//! signed GRUB reads `/EFI/debian/grub.cfg` on the ESP ([`ESP_CFG`]), which finds the boot
//! partition and hands over to its `/grub/grub.cfg`. Under Secure Boot shim checks GRUB and
//! GRUB checks the kernel through shim; the binaries come from the commit's tree when it
//! ships them (`shim-signed`, `grub-efi-amd64-signed`), else from the host (`make deps`).

use super::disk::{self, Layout, SECTOR};
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Which firmware the image boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
    /// Both: GRUB in the MBR + BIOS boot partition and on the ESP.
    Hybrid,
}

impl Firmware {
    pub fn bios(self) -> bool {
        matches!(self, Firmware::Bios | Firmware::Hybrid)
    }
    pub fn uefi(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::Hybrid)
    }
}

/// Modules built into both GRUB images.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "search_label",
    "search_fs_uuid",
    "search_fs_file",
    "normal",
    "configfile",
    "linux",
    "serial",
    "terminal",
    "echo",
    "test",
    "true",
    "loadenv",
    "sleep",
    "gzio",
    "xzio",
    "ls",
    "cat",
    "reboot",
    "halt",
    "boot",
];
const BIOS_MODULES: &[&str] = &["biosdisk"];

/// The config embedded in the BIOS GRUB image: find `/boot`, then normal mode reads
/// `$prefix/grub.cfg`.
pub const EARLY_CFG: &str = "search --no-floppy --label boot --set root\nset prefix=($root)/grub\n";

/// `/EFI/debian/grub.cfg` on the ESP, where Debian's signed GRUB looks for its config:
/// find the boot partition and read its static `/grub/grub.cfg`.
pub const ESP_CFG: &str = "# Written by kiln image; static. Hands over to the boot partition.
search --no-floppy --label boot --set root
set prefix=($root)/grub
configfile ($root)/grub/grub.cfg
";

/// The static `grub.cfg` on the boot partition. It never changes after the image is built:
/// the menu comes from `/loader/grub.cfg`.
pub const GRUB_CFG: &str = r#"# Written by kiln image; static. Boot entries come from /loader/grub.cfg, which
# libostree rewrites (through kiln) on every deployment change, swapping /boot/loader.
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
search --no-floppy --label boot --set root
"#;

/// [`GRUB_CFG`]'s serial console lines, left out for platforms whose GRUB talks on the
/// screen only ([`super::PlatformSpec::grub_serial`]).
const GRUB_SERIAL: &str = "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
";

/// What follows the first-boot fragment in `grub.cfg`: the menu libostree keeps current
/// ([`crate::deploy::grub`]: default entry first, the rollback second, a 3 s timeout).
const GRUB_CFG_TAIL: &str = "source /loader/grub.cfg\n";

/// The full static `grub.cfg`: [`GRUB_CFG`], the first-boot fragment
/// ([`super::firstboot::GRUB_FRAGMENT`]: `$ignition_firstboot` for the kernel arguments),
/// then the menu.
pub fn grub_cfg() -> String {
    grub_cfg_for(true)
}

/// The static `grub.cfg`, with or without GRUB on the serial port.
pub fn grub_cfg_for(serial: bool) -> String {
    let head = if serial {
        GRUB_CFG.to_string()
    } else {
        GRUB_CFG.replace(GRUB_SERIAL, "")
    };
    format!("{head}{}{GRUB_CFG_TAIL}", super::firstboot::GRUB_FRAGMENT)
}

/// Finds the GRUB module directory for `platform` (`i386-pc`, `x86_64-efi`): the tree's
/// own first, then the host's.
pub fn grub_dir(tree: &Path, platform: &str) -> Result<PathBuf> {
    let own = tree.join("usr/lib/grub").join(platform);
    if own.join("moddep.lst").is_file() {
        return Ok(own);
    }
    let host = Path::new("/usr/lib/grub").join(platform);
    if host.join("moddep.lst").is_file() {
        return Ok(host);
    }
    let pkg = if platform == "i386-pc" {
        "grub-pc-bin"
    } else {
        "grub-efi-amd64-bin"
    };
    bail!(
        "no GRUB modules for {platform}: neither the commit ({}) nor the host ({}) has them; \
         add {pkg} to the recipe's packages or install it on the host",
        own.display(),
        host.display()
    )
}

fn mkimage(dir: &Path, format: &str, modules: &[&str], out: &Path, work: &Path) -> Result<()> {
    let cfg = work.join("early.cfg");
    std::fs::write(&cfg, EARLY_CFG).with_context(|| format!("writing {}", cfg.display()))?;
    if !crate::cmd::have("grub-mkimage") {
        bail!("grub-mkimage not found: install grub-common (make deps)");
    }
    Cmd::new("grub-mkimage")
        .arg("-d")
        .arg(dir)
        .args(["-O", format, "-p", "/grub", "-c"])
        .arg(&cfg)
        .arg("-o")
        .arg(out)
        .args(modules)
        .run()
        .with_context(|| format!("building the {format} GRUB image from {}", dir.display()))?;
    Ok(())
}

/// Builds `core.img` for BIOS.
pub fn build_bios_core(tree: &Path, work: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = grub_dir(tree, "i386-pc")?;
    let out = work.join("core.img");
    let mods: Vec<&str> = COMMON_MODULES.iter().chain(BIOS_MODULES).copied().collect();
    mkimage(&dir, "i386-pc", &mods, &out, work)?;
    Ok((out, dir.join("boot.img")))
}

/// The signed UEFI chain of an image: (path on the ESP, file).
pub fn efi_files(tree: &Path, work: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let pick = |rel: &str, pkg: &str| -> Result<PathBuf> {
        let own = tree.join(rel);
        if own.is_file() {
            return Ok(own);
        }
        let host = Path::new("/").join(rel);
        if host.is_file() {
            return Ok(host);
        }
        bail!(
            "{} not found in the commit or on the host: install {pkg} (make deps) or add it \
             to the recipe",
            host.display()
        )
    };
    let cfg = work.join("esp-grub.cfg");
    std::fs::write(&cfg, ESP_CFG).with_context(|| format!("writing {}", cfg.display()))?;
    Ok(vec![
        (
            "EFI/BOOT/BOOTX64.EFI",
            pick("usr/lib/shim/shimx64.efi.signed", "shim-signed")?,
        ),
        (
            "EFI/BOOT/grubx64.efi",
            pick(
                "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                "grub-efi-amd64-signed",
            )?,
        ),
        (
            "EFI/BOOT/mmx64.efi",
            pick("usr/lib/shim/mmx64.efi.signed", "shim-signed")?,
        ),
        ("EFI/debian/grub.cfg", cfg),
    ])
}

// Offsets in boot.img (GRUB's include/grub/i386/pc/boot.h).
const BPB_START: usize = 0x3;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const WINDOWS_NT_MAGIC: usize = 0x1b8;
const PART_END: usize = 0x1fe;
/// core.img's first blocklist entry: the last 12 bytes of its first sector
/// (start: u64, len: u16, segment: u16).
const BLOCKLIST: usize = 512 - 12;

/// Patches `boot.img` and `core.img` for a core image starting at sector `core_lba`, given
/// the disk's current first sector (`mbr`, whose BPB area and partition table are kept).
pub fn patch_bios(
    boot_img: &[u8],
    core_img: &[u8],
    mbr: &[u8],
    core_lba: u64,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if boot_img.len() != 512 {
        bail!("boot.img is {} bytes, expected 512", boot_img.len());
    }
    if mbr.len() != 512 {
        bail!("MBR is {} bytes, expected 512", mbr.len());
    }
    if core_img.len() < 1024 {
        bail!("core.img is only {} bytes", core_img.len());
    }
    let mut boot = boot_img.to_vec();
    boot[BPB_START..BPB_END].copy_from_slice(&mbr[BPB_START..BPB_END]);
    boot[WINDOWS_NT_MAGIC..PART_END].copy_from_slice(&mbr[WINDOWS_NT_MAGIC..PART_END]);
    boot[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    boot[BOOT_DRIVE] = 0xff;
    boot[DRIVE_CHECK] = 0x90;
    boot[DRIVE_CHECK + 1] = 0x90;

    let mut core = core_img.to_vec();
    let sectors = core.len().div_ceil(512);
    core.resize(sectors * 512, 0);
    let len = u16::from_le_bytes([core[BLOCKLIST + 8], core[BLOCKLIST + 9]]) as usize;
    if len != sectors - 1 {
        bail!(
            "core.img's blocklist says {len} sectors follow, but the image has {} \
             (not an i386-pc core.img from grub-mkimage?)",
            sectors - 1
        );
    }
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok((boot, core))
}

/// Installs GRUB for BIOS into `disk` (already partitioned).
pub fn install_bios(disk: &Path, layout: &Layout, core: &Path, boot_img: &Path) -> Result<()> {
    let core_img = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let boot =
        std::fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
    if core_img.len() as u64 > layout.bios_boot.size {
        bail!(
            "GRUB core.img ({} bytes) does not fit the BIOS boot partition ({} bytes)",
            core_img.len(),
            layout.bios_boot.size
        );
    }
    let mbr = disk::read_bytes(disk, 0, 512)?;
    let lba = layout.bios_boot.offset / SECTOR;
    let (boot, core) = patch_bios(&boot, &core_img, &mbr, lba)?;
    disk::write_bytes(disk, layout.bios_boot.offset, &core)?;
    disk::write_bytes(disk, 0, &boot)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_keeps_partition_table_and_points_at_core() {
        let boot_img = vec![0xAAu8; 512];
        let mut mbr = vec![0u8; 512];
        mbr[0x1be..0x1ce].copy_from_slice(&[
            0x00, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        mbr[0x1fe] = 0x55;
        mbr[0x1ff] = 0xaa;
        let mut core = vec![0u8; 3 * 512 + 100];
        core[508..510].copy_from_slice(&3u16.to_le_bytes());
        let (b, c) = patch_bios(&boot_img, &core, &mbr, 2048).unwrap();
        assert_eq!(&b[0x1be..0x1ce], &mbr[0x1be..0x1ce]);
        assert_eq!(u64::from_le_bytes(b[0x5c..0x64].try_into().unwrap()), 2048);
        assert_eq!(b[0x64], 0xff);
        assert_eq!(&b[0x66..0x68], &[0x90, 0x90]);
        // boot.img's own signature bytes stay (0x1fe..0x200 come from boot.img).
        assert_eq!(b[0x1fe], 0xAA);
        assert_eq!(c.len(), 4 * 512);
        assert_eq!(u64::from_le_bytes(c[500..508].try_into().unwrap()), 2049);

        core[508..510].copy_from_slice(&7u16.to_le_bytes());
        assert!(patch_bios(&boot_img, &core, &mbr, 2048).is_err());
    }

    #[test]
    fn host_grub_images_build() {
        if !Path::new("/usr/lib/grub/i386-pc/moddep.lst").exists() {
            eprintln!("skipping: no host GRUB modules");
            return;
        }
        let td = tempfile::tempdir().unwrap();
        let (core, boot) = build_bios_core(Path::new("/nonexistent"), td.path()).unwrap();
        let n = std::fs::metadata(&core).unwrap().len();
        assert!(n > 1024 && n < 1024 * 1024, "core.img is {n} bytes");
        assert_eq!(std::fs::metadata(boot).unwrap().len(), 512);
    }
}
