//! Output formats: the raw disk as is, converted with `qemu-img`, or packed the way a cloud
//! imports it.
//!
//! | format  | file          | what it is                                                   |
//! |---------|---------------|--------------------------------------------------------------|
//! | `raw`   | `.raw`        | the disk, byte for byte (sparse)                             |
//! | `qcow2` | `.qcow2`      | QEMU copy-on-write v3, zstd-compressed clusters              |
//! | `vmdk`  | `.vmdk`       | VMware streamOptimized (compressed, for AWS and VMware)     |
//! | `vhd`   | `.vhd`        | fixed VHD, virtual size a whole number of MiB (Azure)        |
//! | `gce`   | `.tar.gz`     | `disk.raw` alone in a GNU-format tar, gzip (Compute Engine)  |
//! | `ova`   | `.ova`        | OVF descriptor + manifest + streamOptimized vmdk (VMware)    |
//!
//! Every conversion is checked right after by [`check`]: `qemu-img info`/`check` for the
//! disk formats, the VHD footer, the archives' member lists, the OVF's references.

use super::disk::MIB;
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A disk image format kiln writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain disk image (`dd` it to a disk).
    Raw,
    /// QEMU copy-on-write v3, compressed clusters (zstd).
    Qcow2,
    /// VMware streamOptimized VMDK (AWS `import-snapshot`, VMware).
    Vmdk,
    /// Fixed-size VHD, virtual size rounded up to whole MiB (Azure).
    Vhd,
    /// `disk.raw` in a GNU-format tar.gz (Google Compute Engine).
    Gce,
    /// OVA: OVF descriptor, manifest and streamOptimized VMDK in one tar (VMware).
    Ova,
    /// A live ISO (BIOS + UEFI, CD or USB stick) that runs the commit from RAM and can
    /// install it (docs/install.md).
    Iso,
    /// Live system files for network boot: a directory with vmlinuz, initramfs.img and
    /// rootfs.img (docs/install.md).
    Pxe,
}

/// The name of the disk inside a `gce` tarball (Compute Engine requires it).
pub const GCE_DISK_NAME: &str = "disk.raw";

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Gce => "gce",
            Format::Ova => "ova",
            Format::Iso => "iso",
            Format::Pxe => "pxe",
        }
    }

    /// The file name extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Gce => "tar.gz",
            other => other.name(),
        }
    }

    /// `qemu-img`'s name for the format, for the formats that are disks themselves.
    pub fn qemu_format(self) -> Option<&'static str> {
        match self {
            Format::Raw => Some("raw"),
            Format::Qcow2 => Some("qcow2"),
            Format::Vmdk => Some("vmdk"),
            Format::Vhd => Some("vpc"),
            Format::Gce | Format::Ova | Format::Iso | Format::Pxe => None,
        }
    }

    /// A live medium (built by [`super::live`]), not a disk image.
    pub fn is_live(self) -> bool {
        matches!(self, Format::Iso | Format::Pxe)
    }

    /// Guesses the format from a file name's extension.
    pub fn from_path(p: &Path) -> Option<Format> {
        let name = p.file_name()?.to_str()?;
        if name.ends_with(".tar.gz") {
            return Some(Format::Gce);
        }
        match p.extension()?.to_str()? {
            "raw" | "img" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            "vmdk" => Some(Format::Vmdk),
            "vhd" => Some(Format::Vhd),
            "ova" => Some(Format::Ova),
            "iso" => Some(Format::Iso),
            _ => None,
        }
    }

    /// Host tools the conversion needs: (program, Debian package).
    pub fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Format::Raw => &[],
            Format::Qcow2 | Format::Vmdk | Format::Vhd => &[("qemu-img", "qemu-utils")],
            Format::Gce => &[("tar", "tar"), ("gzip", "gzip")],
            Format::Ova => &[("qemu-img", "qemu-utils"), ("tar", "tar")],
            // Live media are built by image::live, which checks its own tools.
            Format::Iso | Format::Pxe => &[],
        }
    }
}

/// The file times and owners written into archives: `SOURCE_DATE_EPOCH`, else 0, so the
/// same disk gives the same archive bytes.
fn archive_mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn qemu_convert(
    raw: &Path,
    out: &Path,
    to: &str,
    opts: &str,
    compress: bool,
    log: &Path,
) -> Result<()> {
    let mut c = Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", to]);
    if compress {
        c = c.arg("-c");
    }
    // No `-W`: out-of-order writes would make the file's bytes depend on thread timing
    // (docs/reproducible.md).
    c.args(["-m", "4", "-o", opts])
        .arg(raw)
        .arg(out)
        .run_logged(log)
        .with_context(|| format!("converting {} to {to}", raw.display()))?;
    Ok(())
}

/// `qemu-img convert` options for the streamOptimized VMDK of `vmdk` and `ova` (what
/// both AWS and VMware import).
const VMDK_OPTS: &str = "subformat=streamOptimized,adapter_type=lsilogic,compat6";

/// Turns the raw disk at `raw` into `out` in `format`. For raw the file is renamed (same
/// filesystem), otherwise converted; `raw` may be consumed.
///
/// qcow2 clusters are compressed with zstd (`compression_type=zstd`, QEMU ≥ 5.1): about as
/// small as zlib and several times faster to write, which keeps commit→qcow2 inside its
/// time budget.
pub fn convert(raw: &Path, format: Format, out: &Path, log: &Path) -> Result<()> {
    match format {
        Format::Raw => std::fs::rename(raw, out)
            .with_context(|| format!("moving {} to {}", raw.display(), out.display())),
        Format::Qcow2 => qemu_convert(
            raw,
            out,
            "qcow2",
            "compression_type=zstd,compat=1.1",
            true,
            log,
        ),
        Format::Vmdk => qemu_convert(raw, out, "vmdk", VMDK_OPTS, false, log),
        Format::Vhd => {
            round_up_to_mib(raw)?;
            // force_size: the footer's size is the disk's size, not a CHS approximation.
            qemu_convert(raw, out, "vpc", "subformat=fixed,force_size=on", false, log)
        }
        Format::Gce => gce_tarball(raw, out, log),
        Format::Ova => ova(raw, out, log),
        Format::Iso | Format::Pxe => anyhow::bail!(
            "{} is a live medium, not a conversion of a disk image (image::live builds it)",
            format.name()
        ),
    }
}

/// Extends a raw disk to a whole number of MiB (Azure refuses anything else).
fn round_up_to_mib(raw: &Path) -> Result<()> {
    let len = std::fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    let rounded = len.div_ceil(MIB) * MIB;
    if rounded != len {
        std::fs::OpenOptions::new()
            .write(true)
            .open(raw)
            .and_then(|f| f.set_len(rounded))
            .with_context(|| format!("extending {} to {rounded} bytes", raw.display()))?;
    }
    Ok(())
}

/// A scratch directory next to `out` (same filesystem, so hard links and renames work).
fn scratch_beside(out: &Path) -> Result<crate::cleanup::TempDir> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::cleanup::TempDir::new_in(dir, ".kiln-format-")
        .with_context(|| format!("creating a scratch directory in {}", dir.display()))
}

fn tar_common(c: Cmd) -> Cmd {
    c.args(["--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", archive_mtime()))
}

/// `disk.raw` alone in a tar.gz, GNU format (`oldgnu`, as Compute Engine's import
/// documentation asks), holes kept as holes (`-S`).
fn gce_tarball(raw: &Path, out: &Path, log: &Path) -> Result<()> {
    let scratch = scratch_beside(out)?;
    let disk = scratch.path().join(GCE_DISK_NAME);
    std::fs::hard_link(raw, &disk)
        .or_else(|_| std::fs::copy(raw, &disk).map(|_| ()))
        .with_context(|| format!("linking {} as {}", raw.display(), disk.display()))?;
    // gzip -n: no name or time in the gzip header; -1: about 3x faster than the default
    // level, for a tarball only carried to Cloud Storage (~15% bigger).
    tar_common(Cmd::new("tar"))
        .args([
            "--format=oldgnu",
            "-S",
            "--use-compress-program=gzip -n -1",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(scratch.path())
        .arg(GCE_DISK_NAME)
        .run_logged(log)
        .with_context(|| format!("packing {} into {}", raw.display(), out.display()))?;
    Ok(())
}

/// What an OVA's descriptor says about its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    /// File name of the VMDK inside the OVA.
    pub href: String,
    /// Its size in bytes.
    pub size: u64,
    /// The disk's virtual size in bytes.
    pub capacity: u64,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The OVF descriptor of a kiln VM: 2 vCPUs, 4 GiB, one streamOptimized disk on an LSI
/// Logic SCSI controller, one vmxnet3 NIC, UEFI firmware with Secure Boot on (the image's
/// ESP has Debian's signed chain), and the `guestinfo.ignition.config.data`
/// (+ `.encoding`) properties Ignition's VMware provider reads.
pub fn ovf_descriptor(name: &str, disk: &OvfDisk) -> String {
    let name = xml_escape(name);
    let href = xml_escape(&disk.href);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by kiln image (platform vmware). -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A kiln virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian12_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <ProductSection ovf:class="guestinfo" ovf:required="false">
      <Info>Ignition: the machine's configuration on first boot</Info>
      <Product>{name}</Product>
      <Property ovf:key="ignition.config.data" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>Ignition config data</Label>
        <Description>The Ignition config (JSON), plain or encoded as the next property says.</Description>
      </Property>
      <Property ovf:key="ignition.config.data.encoding" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>Ignition config data encoding</Label>
        <Description>Empty for plain JSON, or "base64", or "gzip+base64".</Description>
      </Property>
    </ProductSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>4096MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        size = disk.size,
        capacity = disk.capacity,
    )
}

/// Reads the disk reference back from an OVF descriptor (the first `File` and `Disk`).
pub fn parse_ovf(text: &str) -> Result<OvfDisk> {
    fn attr(text: &str, elem: &str, name: &str) -> Result<String> {
        let start = text
            .find(&format!("<{elem} "))
            .with_context(|| format!("OVF has no <{elem}> element"))?;
        let tag = &text[start..start + text[start..].find('>').unwrap_or(text.len() - start)];
        let key = format!("{name}=\"");
        let at = tag
            .find(&key)
            .with_context(|| format!("OVF <{elem}> has no {name}"))?;
        let rest = &tag[at + key.len()..];
        let end = rest.find('"').context("unterminated OVF attribute")?;
        Ok(rest[..end].to_string())
    }
    let num = |elem: &str, name: &str| -> Result<u64> {
        let v = attr(text, elem, name)?;
        v.parse()
            .with_context(|| format!("OVF <{elem} {name}={v:?}> is not a number"))
    };
    Ok(OvfDisk {
        href: attr(text, "File", "ovf:href")?,
        size: num("File", "ovf:size")?,
        capacity: num("Disk", "ovf:capacity")?,
    })
}

/// The OVA: `<stem>.ovf`, `<stem>.mf` (SHA256 of both other files) and `<stem>.vmdk`, in
/// that order (the descriptor must come first), ustar format.
fn ova(raw: &Path, out: &Path, log: &Path) -> Result<()> {
    let stem = out
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".ova").unwrap_or(n).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kiln".into());
    let capacity = std::fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    let scratch = scratch_beside(out)?;
    let vmdk_name = format!("{stem}.vmdk");
    let ovf_name = format!("{stem}.ovf");
    let mf_name = format!("{stem}.mf");
    let vmdk = scratch.path().join(&vmdk_name);
    qemu_convert(raw, &vmdk, "vmdk", VMDK_OPTS, false, log)?;
    let size = std::fs::metadata(&vmdk)
        .with_context(|| format!("reading {}", vmdk.display()))?
        .len();
    let ovf = ovf_descriptor(
        &stem,
        &OvfDisk {
            href: vmdk_name.clone(),
            size,
            capacity,
        },
    );
    let ovf_path = scratch.path().join(&ovf_name);
    std::fs::write(&ovf_path, &ovf).with_context(|| format!("writing {}", ovf_path.display()))?;
    let mf = format!(
        "SHA256({ovf_name})= {}\nSHA256({vmdk_name})= {}\n",
        super::manifest::sha256_file(&ovf_path)?,
        super::manifest::sha256_file(&vmdk)?
    );
    let mf_path = scratch.path().join(&mf_name);
    std::fs::write(&mf_path, mf).with_context(|| format!("writing {}", mf_path.display()))?;
    tar_common(Cmd::new("tar"))
        .args(["--format=ustar", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(scratch.path())
        .args([&ovf_name, &mf_name, &vmdk_name])
        .run_logged(log)
        .with_context(|| format!("packing the OVA {}", out.display()))?;
    Ok(())
}

/// What [`check`] found out about an artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    /// The disk's virtual size in bytes.
    pub virtual_size: u64,
    /// `qemu-img`'s name of the disk's format (for archives: of the disk inside).
    pub disk_format: String,
}

/// `qemu-img info --output=json` → (format, virtual size).
pub fn qemu_info(path: &Path, fmt: &str) -> Result<(String, u64)> {
    let text = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", fmt])
        .arg(path)
        .read()
        .with_context(|| format!("qemu-img info {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing qemu-img info of {}", path.display()))?;
    let format = v["format"].as_str().unwrap_or_default().to_string();
    let size = v["virtual-size"]
        .as_u64()
        .with_context(|| format!("qemu-img info of {} has no virtual-size", path.display()))?;
    Ok((format, size))
}

/// The fields of a VHD footer (the file's last 512 bytes) kiln checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdFooter {
    /// 2 = fixed, 3 = dynamic, 4 = differencing.
    pub disk_type: u32,
    pub current_size: u64,
    pub creator_app: String,
}

/// Parses and verifies a VHD footer (cookie, checksum).
pub fn vhd_footer(path: &Path) -> Result<VhdFooter> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().context("reading the VHD's size")?.len();
    if len < 512 {
        bail!("{} is too short for a VHD", path.display());
    }
    let mut b = [0u8; 512];
    f.seek(SeekFrom::Start(len - 512))
        .and_then(|_| f.read_exact(&mut b))
        .with_context(|| format!("reading the VHD footer of {}", path.display()))?;
    if &b[..8] != b"conectix" {
        bail!("{}: no VHD footer (cookie {:?})", path.display(), &b[..8]);
    }
    let be32 = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let be64 = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    // One's complement of the byte sum with the checksum field (offset 64) as zero.
    let sum: u32 = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &x)| u32::from(x))
        .sum();
    if !sum != be32(64) {
        bail!("{}: VHD footer checksum mismatch", path.display());
    }
    Ok(VhdFooter {
        disk_type: be32(60),
        current_size: be64(48),
        creator_app: String::from_utf8_lossy(&b[28..32]).into_owned(),
    })
}

/// Lists a tar archive's members (`tar -tf`, compression detected by tar).
pub fn tar_members(path: &Path) -> Result<Vec<String>> {
    let out = Cmd::new("tar")
        .arg("-tf")
        .arg(path)
        .read()
        .with_context(|| format!("listing {}", path.display()))?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Checks an artifact right after conversion: the real tools must see the format asked
/// for and a disk of `virtual_size` bytes.
pub fn check(path: &Path, format: Format, virtual_size: u64) -> Result<Checked> {
    let expect = |got_fmt: &str, got_size: u64, want_fmt: &str| -> Result<Checked> {
        if got_fmt != want_fmt {
            bail!(
                "{}: qemu-img sees format {got_fmt:?}, expected {want_fmt:?}",
                path.display()
            );
        }
        if got_size != virtual_size {
            bail!(
                "{}: virtual size {got_size} bytes, expected {virtual_size}",
                path.display()
            );
        }
        Ok(Checked {
            virtual_size: got_size,
            disk_format: got_fmt.to_string(),
        })
    };
    match format {
        Format::Raw => {
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            expect("raw", len, "raw")
        }
        Format::Qcow2 | Format::Vmdk => {
            let fmt = format.qemu_format().expect("disk format");
            Cmd::new("qemu-img")
                .args(["check", "-q", "-f", fmt])
                .arg(path)
                .run()
                .with_context(|| format!("checking {}", path.display()))?;
            let (f, s) = qemu_info(path, fmt)?;
            expect(&f, s, fmt)
        }
        Format::Vhd => {
            let (f, s) = qemu_info(path, "vpc")?;
            let footer = vhd_footer(path)?;
            if footer.disk_type != 2 {
                bail!(
                    "{}: VHD disk type {}, expected 2 (fixed)",
                    path.display(),
                    footer.disk_type
                );
            }
            if footer.current_size % MIB != 0 {
                bail!(
                    "{}: VHD size {} is not a whole number of MiB",
                    path.display(),
                    footer.current_size
                );
            }
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            if len != footer.current_size + 512 {
                bail!(
                    "{}: a fixed VHD of {} bytes should be {} bytes long, not {len}",
                    path.display(),
                    footer.current_size,
                    footer.current_size + 512
                );
            }
            let want = virtual_size.div_ceil(MIB) * MIB;
            if footer.current_size != want {
                bail!(
                    "{}: VHD footer says {} bytes, expected {want}",
                    path.display(),
                    footer.current_size
                );
            }
            Ok(Checked {
                virtual_size: s,
                disk_format: f,
            })
            .and_then(|c| {
                if c.disk_format != "vpc" || c.virtual_size != want {
                    bail!(
                        "{}: qemu-img sees {} of {} bytes, expected vpc of {want}",
                        path.display(),
                        c.disk_format,
                        c.virtual_size
                    );
                }
                Ok(c)
            })
        }
        Format::Gce => {
            let members = tar_members(path)?;
            if members != [GCE_DISK_NAME] {
                bail!(
                    "{}: a Compute Engine tarball must hold exactly {GCE_DISK_NAME}, it holds {members:?}",
                    path.display()
                );
            }
            Ok(Checked {
                virtual_size,
                disk_format: "raw".into(),
            })
        }
        Format::Ova => {
            let members = tar_members(path)?;
            let ok = members.len() == 3
                && members[0].ends_with(".ovf")
                && members[1].ends_with(".mf")
                && members[2].ends_with(".vmdk");
            if !ok {
                bail!(
                    "{}: an OVA must hold the .ovf first, then .mf and .vmdk; it holds {members:?}",
                    path.display()
                );
            }
            let ovf = Cmd::new("tar")
                .args(["-xOf"])
                .arg(path)
                .arg(&members[0])
                .read()
                .with_context(|| format!("reading {} from {}", members[0], path.display()))?;
            let d = parse_ovf(&ovf)?;
            if d.href != members[2] || d.capacity != virtual_size {
                bail!(
                    "{}: the OVF references {} of capacity {}, expected {} of {virtual_size}",
                    path.display(),
                    d.href,
                    d.capacity,
                    members[2]
                );
            }
            Ok(Checked {
                virtual_size,
                disk_format: "vmdk".into(),
            })
        }
        Format::Iso | Format::Pxe => {
            anyhow::bail!("{} is a live medium, not a disk format", format.name())
        }
    }
}

/// The artifact path for `format` given a base path without extension.
pub fn with_extension(base: &Path, format: Format) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(format.extension());
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions() {
        assert_eq!(
            Format::from_path(Path::new("a/b.tar.gz")),
            Some(Format::Gce)
        );
        assert_eq!(Format::from_path(Path::new("x.vhd")), Some(Format::Vhd));
        assert_eq!(Format::from_path(Path::new("x.ova")), Some(Format::Ova));
        assert_eq!(Format::from_path(Path::new("x.vmdk")), Some(Format::Vmdk));
        assert_eq!(Format::from_path(Path::new("x.img")), Some(Format::Raw));
        assert_eq!(Format::from_path(Path::new("x.gz")), None);
        assert_eq!(
            with_extension(Path::new("out/gcp"), Format::Gce),
            Path::new("out/gcp.tar.gz")
        );
        assert_eq!(Format::Vhd.qemu_format(), Some("vpc"));
        assert_eq!(Format::Ova.qemu_format(), None);
    }

    #[test]
    fn ovf_round_trips_and_escapes() {
        let d = OvfDisk {
            href: "a&b.vmdk".into(),
            size: 123,
            capacity: 4096 * MIB,
        };
        let text = ovf_descriptor("a&b", &d);
        assert!(text.contains("ovf:href=\"a&amp;b.vmdk\""));
        assert!(text.contains("ovf:key=\"ignition.config.data\""));
        let back = parse_ovf(&text).unwrap();
        assert_eq!(back.size, 123);
        assert_eq!(back.capacity, 4096 * MIB);
        assert!(parse_ovf("<Envelope/>").is_err());
    }

    #[test]
    fn vhd_footer_needs_cookie_and_checksum() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("x.vhd");
        let mut b = vec![0u8; 1024];
        let f = &mut b[512..];
        f[..8].copy_from_slice(b"conectix");
        f[48..56].copy_from_slice(&(MIB).to_be_bytes());
        f[60..64].copy_from_slice(&2u32.to_be_bytes());
        let sum: u32 = f.iter().map(|&x| u32::from(x)).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        std::fs::write(&p, &b).unwrap();
        let v = vhd_footer(&p).unwrap();
        assert_eq!(v.disk_type, 2);
        assert_eq!(v.current_size, MIB);
        b[1000] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(vhd_footer(&p).unwrap_err().to_string().contains("checksum"));
    }
}
