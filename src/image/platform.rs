//! Platforms an image is built for: ONE table, [`PLATFORMS`].
//!
//! A platform decides three things, all read from its row and nowhere else:
//! - `ignition.platform.id=<id>`: where the real Ignition looks for the machine's config
//!   on first boot (fw_cfg on QEMU, the cloud's metadata service or guestinfo, nothing on
//!   metal);
//! - the console: kernel `console=` arguments (the last one is `/dev/console`) and whether
//!   GRUB also talks on the first serial port. The values are Fedora CoreOS's per-platform
//!   table for x86_64 (fedora-coreos-config `platforms.yaml`);
//! - the artifact formats the platform imports (the first is the default);
//! - what the platform's image import must be told so that machines boot the image on
//!   UEFI with Secure Boot (GCP guest OS features, Azure Trusted Launch, the EC2 boot
//!   mode, VMware's firmware settings), recorded in `manifest.json`.
//!
//! docs/cloud.md shows the same table for users; a unit test keeps the two in step.

use super::formats::Format;

/// Where an image runs (`kiln image --platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// QEMU/KVM: the Ignition config comes by fw_cfg (`kiln run --ignition`).
    Qemu,
    /// Bare metal: the config comes from `/boot/ignition/config.ign` or
    /// `ignition.config.url=`.
    Metal,
    /// Amazon EC2: the config is the instance's user data.
    Aws,
    /// Google Compute Engine: the config is the `user-data` metadata key.
    Gcp,
    /// Microsoft Azure: the config is the VM's custom data.
    Azure,
    /// VMware vSphere/ESXi: the config is the `guestinfo.ignition.config.data` property.
    Vmware,
    /// OpenStack: the config is the instance's user data (config drive or metadata service).
    Openstack,
}

/// One row of the platform table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformSpec {
    pub platform: Platform,
    /// `ignition.platform.id`.
    pub id: &'static str,
    /// Kernel console arguments, in order (the last is `/dev/console`).
    pub console: &'static [&'static str],
    /// GRUB's menu and messages on the first serial port as well as the screen.
    pub grub_serial: bool,
    /// Formats the platform imports; the first is the default.
    pub formats: &'static [Format],
    /// Settings of the platform's image import (name as in its API, value) that make
    /// machines boot the image on UEFI with Secure Boot; only for images with the UEFI
    /// chain (`--firmware uefi|hybrid`). Empty: nothing to declare.
    pub secure_boot_import: &'static [(&'static str, &'static str)],
}

const TTY0_THEN_SERIAL: &[&str] = &["console=tty0", "console=ttyS0,115200n8"];
const SERIAL_THEN_TTY0: &[&str] = &["console=ttyS0,115200n8", "console=tty0"];

/// The platform table.
pub const PLATFORMS: &[PlatformSpec] = &[
    PlatformSpec {
        platform: Platform::Qemu,
        id: "qemu",
        console: TTY0_THEN_SERIAL,
        grub_serial: true,
        formats: &[Format::Qcow2, Format::Raw],
        secure_boot_import: &[],
    },
    PlatformSpec {
        // Fedora CoreOS leaves metal's console to the kernel's defaults (a recipe's
        // kernel-args, or `kiln kargs`, pick one).
        platform: Platform::Metal,
        id: "metal",
        console: &[],
        grub_serial: false,
        formats: &[Format::Raw, Format::Qcow2],
        secure_boot_import: &[],
    },
    PlatformSpec {
        platform: Platform::Aws,
        id: "aws",
        console: TTY0_THEN_SERIAL,
        grub_serial: true,
        formats: &[Format::Vmdk, Format::Raw],
        secure_boot_import: &[("BootMode", "uefi-preferred")],
    },
    PlatformSpec {
        platform: Platform::Gcp,
        id: "gcp",
        console: TTY0_THEN_SERIAL,
        grub_serial: true,
        formats: &[Format::Gce],
        secure_boot_import: &[("guestOsFeatures", "UEFI_COMPATIBLE,SECURE_BOOT")],
    },
    PlatformSpec {
        // GRUB writes to the screen only: Azure copies it to the serial log, and GRUB on
        // the serial port as well would double every line.
        platform: Platform::Azure,
        id: "azure",
        console: TTY0_THEN_SERIAL,
        grub_serial: false,
        formats: &[Format::Vhd],
        secure_boot_import: &[
            ("hyperVGeneration", "V2"),
            ("SecurityType", "TrustedLaunchSupported"),
        ],
    },
    PlatformSpec {
        // Graphical console first (the web console), serial for logging.
        platform: Platform::Vmware,
        id: "vmware",
        console: SERIAL_THEN_TTY0,
        grub_serial: true,
        formats: &[Format::Ova],
        secure_boot_import: &[
            ("firmware", "efi"),
            ("bootOptions.efiSecureBootEnabled", "true"),
        ],
    },
    PlatformSpec {
        platform: Platform::Openstack,
        id: "openstack",
        console: SERIAL_THEN_TTY0,
        grub_serial: true,
        formats: &[Format::Qcow2, Format::Raw],
        secure_boot_import: &[],
    },
];

impl Platform {
    /// This platform's row of [`PLATFORMS`].
    pub fn spec(self) -> &'static PlatformSpec {
        PLATFORMS
            .iter()
            .find(|s| s.platform == self)
            .expect("every platform has a row in PLATFORMS (unit-tested)")
    }

    /// `ignition.platform.id`.
    pub fn id(self) -> &'static str {
        self.spec().id
    }

    /// The format written when none was asked for.
    pub fn default_format(self) -> Format {
        self.spec().formats[0]
    }

    /// Whether the platform imports `format`.
    pub fn accepts(self, format: Format) -> bool {
        self.spec().formats.contains(&format)
    }

    /// The platform when none was asked for: `metal` when a config is embedded in
    /// /boot (`kiln image --ignition`), else `qemu`. Both read /boot/ignition/config.ign
    /// first, so either works for an embedded config.
    pub fn default_for(embedded_config: bool) -> Platform {
        if embedded_config {
            Platform::Metal
        } else {
            Platform::Qemu
        }
    }

    /// The import settings of [`PlatformSpec::secure_boot_import`] for an image with
    /// the UEFI chain, as `manifest.json` records them; `None` without UEFI or when the
    /// platform has none.
    pub fn secure_boot_import(
        self,
        uefi: bool,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let s = self.spec().secure_boot_import;
        (uefi && !s.is_empty()).then(|| {
            s.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Looks a platform up by its id.
    pub fn from_id(id: &str) -> Option<Platform> {
        PLATFORMS.iter().find(|s| s.id == id).map(|s| s.platform)
    }
}

/// The table as Markdown rows (`| id | console | GRUB serial | formats |`), as docs/cloud.md
/// shows it.
pub fn markdown_table() -> String {
    let mut s = String::from(
        "| platform | kernel console arguments | GRUB on serial | formats (first: default) |\n\
         |---|---|---|---|\n",
    );
    for p in PLATFORMS {
        let console = if p.console.is_empty() {
            "(kernel default)".to_string()
        } else {
            p.console
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let formats = p
            .formats
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            p.id,
            console,
            if p.grub_serial { "yes" } else { "no" },
            formats
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_platform_has_exactly_one_row_named_like_its_cli_value() {
        for p in Platform::value_variants() {
            let rows: Vec<_> = PLATFORMS.iter().filter(|s| s.platform == *p).collect();
            assert_eq!(rows.len(), 1, "{p:?}");
            let cli = p.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), rows[0].id);
            assert_eq!(Platform::from_id(rows[0].id), Some(*p));
            assert!(!rows[0].formats.is_empty(), "{p:?} has no format");
        }
        assert_eq!(PLATFORMS.len(), Platform::value_variants().len());
    }

    #[test]
    fn fedora_coreos_consoles() {
        assert_eq!(
            Platform::Vmware.spec().console,
            ["console=ttyS0,115200n8", "console=tty0"]
        );
        assert_eq!(
            Platform::Aws.spec().console,
            ["console=tty0", "console=ttyS0,115200n8"]
        );
        assert!(!Platform::Azure.spec().grub_serial);
        assert!(Platform::Metal.spec().console.is_empty());
        assert_eq!(Platform::Gcp.default_format(), Format::Gce);
        assert!(Platform::Aws.accepts(Format::Raw));
        assert!(!Platform::Azure.accepts(Format::Qcow2));
    }

    #[test]
    fn secure_boot_is_declared_where_the_platform_asks() {
        let gcp = Platform::Gcp.secure_boot_import(true).unwrap();
        assert_eq!(gcp["guestOsFeatures"], "UEFI_COMPATIBLE,SECURE_BOOT");
        let azure = Platform::Azure.secure_boot_import(true).unwrap();
        assert_eq!(azure["SecurityType"], "TrustedLaunchSupported");
        assert_eq!(azure["hyperVGeneration"], "V2");
        assert_eq!(
            Platform::Aws.secure_boot_import(true).unwrap()["BootMode"],
            "uefi-preferred"
        );
        // A BIOS-only image has no UEFI chain to declare.
        assert_eq!(Platform::Gcp.secure_boot_import(false), None);
        assert_eq!(Platform::Qemu.secure_boot_import(true), None);
    }

    #[test]
    fn docs_show_the_table() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cloud.md"),
        )
        .unwrap();
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/cloud.md does not show the platform table; paste this:\n{table}"
        );
    }
}
