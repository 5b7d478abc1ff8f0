//! Cloud and VM templates (docs/cloud.md), from the composed `recipes/base.toml`: every
//! platform's artifact, built by `kiln image --platform`, checked by the real tools and
//! not by kiln's own code: `qemu-img info`/`check` (format, virtual size, streamOptimized),
//! the VHD footer (fixed, MiB-aligned, checksum), the Compute Engine tarball (exactly
//! `disk.raw`, GNU header, read by Python's tarfile), the OVA (member order, the OVF's file
//! reference, size and disk capacity, the `.mf` SHA256s, the vmdk inside passing
//! `qemu-img check`), `manifest.json` against `sha256sum`; the kernel arguments carry each
//! platform's id and console.
//!
//! Clones of one template booted under QEMU: tests/vm_cloud.rs.

mod common;

use kiln::cmd::Cmd;
use kiln::image::{self, Platform};
use std::path::{Path, PathBuf};

const GIB4: u64 = 4096 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

fn qemu_info(path: &Path, fmt: &str) -> serde_json::Value {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", fmt])
        .arg(path)
        .read()
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn qemu_check(path: &Path, fmt: &str) {
    Cmd::new("qemu-img")
        .args(["check", "-f", fmt])
        .arg(path)
        .run()
        .unwrap_or_else(|e| panic!("qemu-img check {}: {e:#}", path.display()));
}

fn python(script: &str, args: &[&Path]) -> String {
    let mut c = Cmd::new("python3").args(["-c", script]);
    for a in args {
        c = c.arg(a);
    }
    c.read().unwrap()
}

/// Builds one platform's image with the CLI into `dir/`; returns (path, --json output).
fn build(
    f: &common::Composed,
    dir: &Path,
    p: &str,
    format: Option<&str>,
) -> (PathBuf, serde_json::Value) {
    let mut args = vec![
        "image",
        "--repo",
        f.repo.to_str().unwrap(),
        "--ref",
        &f.ref_,
        "--platform",
        p,
        "--json",
    ];
    if let Some(fmt) = format {
        args.extend(["--format", fmt]);
    }
    let out = format!("{}/", dir.display());
    args.extend(["--output", &out]);
    let t = std::time::Instant::now();
    let v: serde_json::Value = serde_json::from_str(&common::kiln_ok(&args)).unwrap();
    eprintln!("{p} {format:?}: {:.1} s", t.elapsed().as_secs_f64());
    (PathBuf::from(v["output"].as_str().unwrap()), v)
}

fn kargs(v: &serde_json::Value) -> Vec<String> {
    v["kargs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_platform_artifact_passes_the_real_tools() {
    let f = common::base_commit();
    let work = common::fixture_workdir("cloud-artifacts-");
    let dir = work.path();

    // A format the platform does not take: refused before any work, nothing written.
    let (code, _, err) = common::kiln(&[
        "image",
        "--repo",
        f.repo.to_str().unwrap(),
        "--ref",
        &f.ref_,
        "--platform",
        "gcp",
        "--format",
        "qcow2",
        "--output",
        &format!("{}/", dir.display()),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--format") && err.contains("gce"), "{err}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);

    let mut built = Vec::new();
    // One build per format (openstack's qcow2 and aws's raw are the same conversions as
    // qemu's and metal's; their kernel arguments and formats are unit-tested).
    for (p, fmt) in [
        ("qemu", None),
        ("metal", None),
        ("aws", None),
        ("gcp", None),
        ("azure", None),
        ("vmware", Some("ova")),
    ] {
        let (path, v) = build(&f, dir, p, fmt);
        assert_eq!(v["commit"], f.commit.as_str());
        assert_eq!(v["virtual_size"].as_u64(), Some(GIB4), "{p}");
        // Each platform's id and its console, in the table's order, after the recipe's.
        let k = kargs(&v);
        assert!(
            k.contains(&format!("ignition.platform.id={p}")),
            "{p}: {k:?}"
        );
        let console = Platform::from_id(p).unwrap().spec().console;
        let at: Vec<usize> = console
            .iter()
            .map(|c| {
                k.iter()
                    .rposition(|x| x == c)
                    .unwrap_or_else(|| panic!("{p}: {c} not in {k:?}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{p}: {k:?}");
        built.push((p, fmt, path));
    }
    let names: Vec<String> = built
        .iter()
        .map(|(_, _, p)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "base-qemu.qcow2",
            "base-metal.raw",
            "base-aws.vmdk",
            "base-gcp.tar.gz",
            "base-azure.vhd",
            "base-vmware.ova",
        ]
    );

    for (p, _, path) in &built {
        let name = path.file_name().unwrap().to_str().unwrap();
        match name.rsplit_once('.').unwrap().1 {
            "qcow2" => {
                qemu_check(path, "qcow2");
                let i = qemu_info(path, "qcow2");
                assert_eq!(i["format"], "qcow2", "{p}");
                assert_eq!(i["virtual-size"].as_u64(), Some(GIB4), "{p}");
            }
            "raw" => {
                let i = qemu_info(path, "raw");
                assert_eq!(i["virtual-size"].as_u64(), Some(GIB4), "{p}");
                // The GPT is intact and holds the four partitions.
                let gpt = Cmd::new("sgdisk").arg("-p").arg(path).read().unwrap();
                assert!(gpt.contains("root") && gpt.contains("EFI-SYSTEM"), "{gpt}");
            }
            "vmdk" => {
                qemu_check(path, "vmdk");
                let i = qemu_info(path, "vmdk");
                assert_eq!(i["format"], "vmdk");
                assert_eq!(i["virtual-size"].as_u64(), Some(GIB4));
                assert_eq!(
                    i["format-specific"]["data"]["create-type"], "streamOptimized",
                    "{i}"
                );
            }
            "vhd" => {
                let i = qemu_info(path, "vpc");
                assert_eq!(i["format"], "vpc");
                assert_eq!(i["virtual-size"].as_u64(), Some(GIB4), "{i}");
                // The footer, read here byte by byte (VHD spec: big-endian fields).
                let len = std::fs::metadata(path).unwrap().len();
                let foot = image::disk::read_bytes(path, len - 512, 512).unwrap();
                assert_eq!(&foot[..8], b"conectix");
                let disk_type = u32::from_be_bytes(foot[60..64].try_into().unwrap());
                assert_eq!(disk_type, 2, "disk type must be fixed");
                let size = u64::from_be_bytes(foot[48..56].try_into().unwrap());
                assert_eq!(size % MIB, 0, "size {size} is not MiB-aligned");
                assert_eq!(size, GIB4);
                assert_eq!(len, size + 512, "a fixed VHD is the disk plus the footer");
                let sum: u32 = foot
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !(64..68).contains(i))
                    .map(|(_, &b)| u32::from(b))
                    .sum();
                assert_eq!(!sum, u32::from_be_bytes(foot[64..68].try_into().unwrap()));
            }
            "gz" => {
                let out = python(
                    r#"
import gzip, sys, tarfile
with gzip.open(sys.argv[1]) as g:
    head = g.read(512)
assert head[257:265] == b"ustar  \0", head[257:265]
t = tarfile.open(sys.argv[1], "r:gz")
print("\n".join(f"{m.name} {m.size} {m.isfile() or m.issparse()}" for m in t.getmembers()))
"#,
                    &[path],
                );
                assert_eq!(out.trim(), format!("disk.raw {GIB4} True"), "{out}");
                let listing = Cmd::new("tar").arg("-tzf").arg(path).read().unwrap();
                assert_eq!(listing.trim(), "disk.raw");
            }
            "ova" => {
                let x = dir.join("ova-x");
                std::fs::create_dir_all(&x).unwrap();
                let out = python(
                    r#"
import hashlib, sys, tarfile, xml.etree.ElementTree as ET
t = tarfile.open(sys.argv[1])
ms = t.getmembers()
print("members", " ".join(m.name for m in ms))
for m in ms:
    t.fileobj.seek(m.offset)
    assert t.fileobj.read(512)[257:263] == b"ustar\0", m.name
ovf = ET.fromstring(t.extractfile(ms[0]).read())
ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1"}
f = ovf.find("o:References/o:File", ns)
d = ovf.find("o:DiskSection/o:Disk", ns)
a = lambda e, k: e.get("{http://schemas.dmtf.org/ovf/envelope/1}" + k)
print("file", a(f, "href"), a(f, "size"))
print("disk", a(d, "capacity"), a(d, "fileRef") == a(f, "id"), a(d, "format"))
sizes = {m.name: m.size for m in ms}
print("vmdk-size", sizes[a(f, "href")])
vmw = "{http://www.vmware.com/schema/ovf}"
cfg = {c.get(vmw + "key"): c.get(vmw + "value") for c in ovf.iter(vmw + "Config")}
print("efi", cfg.get("firmware"), cfg.get("bootOptions.efiSecureBootEnabled"))
mf = dict(l.split("= ") for l in t.extractfile(ms[1]).read().decode().splitlines())
for m in (ms[0], ms[2]):
    h = hashlib.sha256(t.extractfile(m).read()).hexdigest()
    assert mf["SHA256(%s)" % m.name] == h, m.name
print("mf ok")
t.extract(ms[2], sys.argv[2])
"#,
                    &[path, &x],
                );
                let line = |k: &str| -> Vec<String> {
                    out.lines()
                        .find(|l| l.starts_with(k))
                        .unwrap_or_else(|| panic!("{k} missing in {out}"))
                        .split_whitespace()
                        .skip(1)
                        .map(str::to_string)
                        .collect()
                };
                assert_eq!(
                    line("members"),
                    ["base-vmware.ovf", "base-vmware.mf", "base-vmware.vmdk"]
                );
                let file = line("file");
                assert_eq!(file[0], "base-vmware.vmdk");
                assert_eq!(file[1], line("vmdk-size")[0], "OVF size vs the member's");
                let disk = line("disk");
                assert_eq!(disk[0], GIB4.to_string());
                assert_eq!(disk[1], "True");
                assert!(disk[2].ends_with("#streamOptimized"), "{out}");
                // UEFI with Secure Boot: the image's ESP has the signed chain.
                assert_eq!(line("efi"), ["efi", "true"], "{out}");
                assert!(out.contains("mf ok"), "{out}");
                let vmdk = x.join("base-vmware.vmdk");
                qemu_check(&vmdk, "vmdk");
                let i = qemu_info(&vmdk, "vmdk");
                assert_eq!(i["virtual-size"].as_u64(), Some(GIB4));
                assert_eq!(
                    i["format-specific"]["data"]["create-type"],
                    "streamOptimized"
                );
                std::fs::remove_dir_all(&x).unwrap();
            }
            other => panic!("unexpected artifact {name} ({other})"),
        }
    }

    // The manifest against sha256sum and the files' sizes.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let arts = m["artifacts"].as_object().unwrap();
    // Each image and its SBOM (IMAGE.spdx.json, from the commit).
    assert_eq!(arts.len(), 2 * built.len(), "{m}");
    for (_, _, path) in &built {
        let name = format!("{}.spdx.json", path.file_name().unwrap().to_str().unwrap());
        assert_eq!(arts[&name]["format"], "spdx-json", "{m}");
    }
    for (p, _, path) in &built {
        let name = path.file_name().unwrap().to_str().unwrap();
        let a = &arts[name];
        let sum = Cmd::new("sha256sum").arg(path).read().unwrap();
        assert_eq!(
            a["sha256"],
            sum.split_whitespace().next().unwrap(),
            "{name}"
        );
        assert_eq!(
            a["size"].as_u64(),
            Some(std::fs::metadata(path).unwrap().len())
        );
        assert_eq!(a["platform"], *p);
        assert_eq!(a["virtual_size"].as_u64(), Some(GIB4));
        // What each cloud's import must be told for UEFI with Secure Boot (docs/cloud.md).
        let sb = &a["secure_boot_import"];
        match *p {
            "gcp" => assert_eq!(sb["guestOsFeatures"], "UEFI_COMPATIBLE,SECURE_BOOT", "{m}"),
            "azure" => {
                assert_eq!(sb["SecurityType"], "TrustedLaunchSupported", "{m}");
                assert_eq!(sb["hyperVGeneration"], "V2", "{m}");
            }
            "aws" => assert_eq!(sb["BootMode"], "uefi-preferred", "{m}"),
            "vmware" => assert_eq!(sb["bootOptions.efiSecureBootEnabled"], "true", "{m}"),
            _ => assert!(sb.is_null(), "{name}: {m}"),
        }
        assert_eq!(a["commit"], f.commit.as_str());
    }
}
