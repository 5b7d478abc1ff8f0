//! First boot (Ignition): what an image carries so that Ignition runs once.
//!
//! - The GRUB fragment [`GRUB_FRAGMENT`] (in the static `grub.cfg`, before the menu
//!   `/loader/grub.cfg`) sets `$ignition_firstboot` to `ignition.firstboot` while the stamp
//!   `/ignition.firstboot` exists on the boot partition, and to nothing afterwards.
//! - The deployment's kernel arguments carry the literal `$ignition_firstboot` (libostree
//!   keeps it unexpanded in its entries; GRUB expands it at boot) and
//!   `ignition.platform.id=<platform>` ([`kargs`]).
//! - [`write_stamp`] puts the stamp on a fresh boot partition; the initramfs glue
//!   (`overlays/ignition`, dracut module `kiln-ignition`) removes it once Ignition
//!   succeeded. See docs/firstboot.md.

use anyhow::{Context, Result};
use std::path::Path;

/// Included in the static `grub.cfg` before the menu (`source /loader/grub.cfg`).
pub const GRUB_FRAGMENT: &str = include_str!("grub-firstboot.cfg");

/// The kernel argument GRUB expands: `ignition.firstboot` on first boot, empty after.
pub const FIRSTBOOT_KARG: &str = "$ignition_firstboot";

/// The first-boot stamp, relative to the boot partition's root.
pub const STAMP: &str = "ignition.firstboot";

/// Where Ignition looks for its config (`ignition.platform.id`): one row of the platform
/// table ([`super::platform::PLATFORMS`]).
pub use super::platform::Platform;

/// The first-boot kernel arguments of an image's deployment.
pub fn kargs(platform: Platform) -> Vec<String> {
    vec![
        FIRSTBOOT_KARG.to_string(),
        format!("ignition.platform.id={}", platform.id()),
    ]
}

/// Writes the first-boot stamp (empty: GRUB `source`s it, so it may later hold
/// `set ignition_network_kcmdline="..."`) on a boot partition's directory.
pub fn write_stamp(bootdir: &Path) -> Result<()> {
    let stamp = bootdir.join(STAMP);
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kargs_carry_the_grub_variable_and_platform() {
        assert_eq!(
            kargs(Platform::Metal),
            vec!["$ignition_firstboot", "ignition.platform.id=metal"]
        );
        assert_eq!(kargs(Platform::Qemu)[1], "ignition.platform.id=qemu");
        assert_eq!(Platform::default_for(true), Platform::Metal);
        assert_eq!(Platform::default_for(false), Platform::Qemu);
    }

    #[test]
    fn fragment_tests_the_stamp_and_exports_the_variable() {
        assert!(GRUB_FRAGMENT.contains(&format!("[ -f \"/{STAMP}\" ]")));
        assert!(GRUB_FRAGMENT.contains("set ignition_firstboot=\"ignition.firstboot"));
        assert!(GRUB_FRAGMENT.contains("export ignition_firstboot"));
        // Every non-comment line is GRUB script; no `$(...)` shell syntax slipped in.
        assert!(!GRUB_FRAGMENT.contains("$("));
    }

    #[test]
    fn grub_cfg_sets_the_variable_before_reading_the_entries() {
        let cfg = crate::image::bootloader::grub_cfg();
        let search = cfg.find("search --no-floppy --label boot").unwrap();
        let var = cfg.find("export ignition_firstboot").unwrap();
        let entries = cfg.find("\nsource /loader/grub.cfg").unwrap();
        assert!(search < var && var < entries, "{cfg}");
    }

    #[test]
    fn stamp_is_written() {
        let d = tempfile::tempdir().unwrap();
        write_stamp(d.path()).unwrap();
        assert!(d.path().join(STAMP).is_file());
    }
}
