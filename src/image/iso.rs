//! Editing a built live ISO in place: the embedded Ignition config and the kernel
//! arguments (`kiln iso ignition embed|show|remove`, `kiln iso kargs modify|show`).
//!
//! The ISO carries two reserved areas, plain files of fixed size inside the ISO 9660
//! filesystem, and a header that says where they are:
//! - `images/ignition.img` ([`IGNITION_AREA`] bytes): zeros, or a cpio archive holding
//!   `/usr/lib/ignition/user.ign` followed by zeros. GRUB loads it as the last initramfs;
//!   the kernel unpacks it over the others (and skips the zeros), so Ignition in the live
//!   initramfs finds the config where it looks for a user config.
//! - `boot/grub/kargs.cfg` ([`KARGS_AREA`] bytes): `set kiln_kargs='...'` padded with a
//!   comment line of `#`; `grub.cfg` sources it and passes `$kiln_kargs` to the kernel.
//! - The header ([`HEADER_OFFSET`], in the unused end of the ISO's 32 KiB system area):
//!   magic `KILNISO1`, then the byte offset and length of each area (u64 little-endian).
//!
//! Changing either rewrites only its area: a few hundred KiB, whatever the ISO's size.

use super::cpio;
use crate::error::InputError;
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Size of the Ignition area (`images/ignition.img`).
pub const IGNITION_AREA: u64 = 256 * 1024;
/// Size of the kernel-arguments area (`boot/grub/kargs.cfg`).
pub const KARGS_AREA: u64 = 4096;
/// The largest areas a header may claim (kiln writes [`IGNITION_AREA`] and [`KARGS_AREA`];
/// the bounds leave room for larger areas in later versions).
pub const MAX_IGNITION_AREA: u64 = 64 * IGNITION_AREA;
pub const MAX_KARGS_AREA: u64 = 16 * KARGS_AREA;
/// Where the header lives: the last 64 bytes of the ISO's system area.
pub const HEADER_OFFSET: u64 = 32768 - 64;
pub const MAGIC: &[u8; 8] = b"KILNISO1";
/// Path of the embedded config inside the initramfs.
pub const USER_IGN: &str = "usr/lib/ignition/user.ign";
/// ISO paths of the areas.
pub const IGNITION_PATH: &str = "images/ignition.img";
pub const KARGS_PATH: &str = "boot/grub/kargs.cfg";

const KARGS_HEAD: &str =
    "# kiln: kernel arguments of the live system; change them with `kiln iso kargs modify`.\n";
const KARGS_SET: &str = "set kiln_kargs='";

/// Where the areas are in an ISO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Areas {
    pub ignition_offset: u64,
    pub ignition_len: u64,
    pub kargs_offset: u64,
    pub kargs_len: u64,
}

impl Areas {
    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(MAGIC);
        for (i, v) in [
            self.ignition_offset,
            self.ignition_len,
            self.kargs_offset,
            self.kargs_len,
        ]
        .iter()
        .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Areas> {
        if b.len() < 40 || &b[..8] != MAGIC {
            return None;
        }
        let v = |i: usize| u64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        Some(Areas {
            ignition_offset: v(0),
            ignition_len: v(1),
            kargs_offset: v(2),
            kargs_len: v(3),
        })
    }
}

fn not_kiln_iso(iso: &Path) -> anyhow::Error {
    InputError::new(
        iso.display().to_string(),
        "not a kiln live ISO (no kiln header in its system area; build one with `kiln image \
         --format iso`)",
    )
    .into()
}

pub(super) fn open(iso: &Path, write: bool) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(iso)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                InputError::new(iso.display().to_string(), "ISO not found").into()
            } else {
                anyhow::Error::new(e).context(format!("opening {}", iso.display()))
            }
        })
}

fn read_at(f: &mut std::fs::File, off: u64, len: u64) -> Result<Vec<u8>> {
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at(f: &mut std::fs::File, off: u64, data: &[u8]) -> Result<()> {
    f.seek(SeekFrom::Start(off))?;
    f.write_all(data)?;
    Ok(())
}

/// Reads and checks the header of `iso`.
pub fn areas(iso: &Path) -> Result<Areas> {
    let mut f = open(iso, false)?;
    areas_of(&mut f, iso)
}

fn areas_of(f: &mut std::fs::File, iso: &Path) -> Result<Areas> {
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", iso.display()))?
        .len();
    if len < HEADER_OFFSET + 64 {
        return Err(not_kiln_iso(iso));
    }
    let h = read_at(f, HEADER_OFFSET, 64).with_context(|| format!("reading {}", iso.display()))?;
    let a = Areas::decode(&h).ok_or_else(|| not_kiln_iso(iso))?;
    // Every length is checked before anything is allocated from it: a crafted header
    // (an area of 10^12 bytes in a sparse file) is an error, never an allocation failure.
    for (name, off, l, max) in [
        (
            "Ignition",
            a.ignition_offset,
            a.ignition_len,
            MAX_IGNITION_AREA,
        ),
        (
            "kernel arguments",
            a.kargs_offset,
            a.kargs_len,
            MAX_KARGS_AREA,
        ),
    ] {
        if off < 32768 || off.checked_add(l).is_none_or(|end| end > len) || l == 0 {
            bail!(
                "{}: the kiln header's {name} area ({l} bytes at {off}) lies outside the file; \
                 the ISO is damaged or truncated",
                iso.display()
            );
        }
        if l > max {
            bail!(
                "{}: the kiln header's {name} area claims {l} bytes; kiln's areas are at most \
                 {max} bytes: the ISO is damaged or not kiln's",
                iso.display()
            );
        }
    }
    let overlap = a.ignition_offset < a.kargs_offset + a.kargs_len
        && a.kargs_offset < a.ignition_offset + a.ignition_len;
    if overlap {
        bail!(
            "{}: the kiln header's Ignition and kernel-argument areas overlap; the ISO is damaged",
            iso.display()
        );
    }
    Ok(a)
}

/// Writes the header into a freshly built ISO; the bytes it takes must be unused (zero).
pub fn write_header(iso: &Path, a: &Areas) -> Result<()> {
    let mut f = open(iso, true)?;
    let old =
        read_at(&mut f, HEADER_OFFSET, 64).with_context(|| format!("reading {}", iso.display()))?;
    if old.iter().any(|&b| b != 0) {
        bail!(
            "{}: bytes {HEADER_OFFSET}..{} of the system area are in use; cannot place kiln's \
             header there",
            iso.display(),
            HEADER_OFFSET + 64
        );
    }
    write_at(&mut f, HEADER_OFFSET, &a.encode())
        .with_context(|| format!("writing {}", iso.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", iso.display()))
}

/// The cpio archive holding `config` as the live initramfs's user config.
pub fn ignition_archive(config: &str) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new(Vec::new(), 0);
    w.dir("usr", 0o755)?;
    w.dir("usr/lib", 0o755)?;
    w.dir("usr/lib/ignition", 0o755)?;
    w.file(USER_IGN, 0o600, config.as_bytes())?;
    w.finish()
}

/// The embedded Ignition config, if any.
pub fn ignition_show(iso: &Path) -> Result<Option<String>> {
    let mut f = open(iso, false)?;
    let a = areas_of(&mut f, iso)?;
    let buf = read_at(&mut f, a.ignition_offset, a.ignition_len)
        .with_context(|| format!("reading {}", iso.display()))?;
    let entries =
        cpio::read(&buf).with_context(|| format!("{}: the Ignition area", iso.display()))?;
    Ok(entries
        .into_iter()
        .find(|e| e.name == USER_IGN)
        .map(|e| String::from_utf8_lossy(&e.data).into_owned()))
}

/// Embeds `config` (already checked JSON text) into the ISO's Ignition area. Refuses to
/// replace an embedded config unless `force`.
pub fn ignition_embed(iso: &Path, config: &str, force: bool) -> Result<()> {
    let archive = ignition_archive(config)?;
    let mut f = open(iso, true)?;
    let a = areas_of(&mut f, iso)?;
    if archive.len() as u64 > a.ignition_len {
        return Err(InputError::new(
            "command line",
            format!(
                "the Ignition config is too large for the ISO: {} bytes archived, the area holds \
                 {} (fetch a larger config with ignition.config.url= or a `merge` directive)",
                archive.len(),
                a.ignition_len
            ),
        )
        .key("--ignition")
        .into());
    }
    let old = read_at(&mut f, a.ignition_offset, a.ignition_len)
        .with_context(|| format!("reading {}", iso.display()))?;
    if !force && old.iter().any(|&b| b != 0) {
        return Err(InputError::new(
            iso.display().to_string(),
            "the ISO already has an embedded Ignition config (see `kiln iso ignition show`); \
             pass --force to replace it, or `kiln iso ignition remove` first",
        )
        .into());
    }
    // The config may carry password hashes and keys: nobody but the owner may read the ISO
    // once it is in (a copy made by `--output` is 0600 from creation already).
    crate::ignition::make_private(&f, iso)?;
    let mut area = archive;
    area.resize(a.ignition_len as usize, 0);
    write_at(&mut f, a.ignition_offset, &area)
        .with_context(|| format!("writing {}", iso.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", iso.display()))
}

/// Clears the Ignition area. Returns whether a config was there.
pub fn ignition_remove(iso: &Path) -> Result<bool> {
    let mut f = open(iso, true)?;
    let a = areas_of(&mut f, iso)?;
    let old = read_at(&mut f, a.ignition_offset, a.ignition_len)
        .with_context(|| format!("reading {}", iso.display()))?;
    let had = old.iter().any(|&b| b != 0);
    write_at(
        &mut f,
        a.ignition_offset,
        &vec![0u8; a.ignition_len as usize],
    )
    .with_context(|| format!("writing {}", iso.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", iso.display()))?;
    Ok(had)
}

/// A kernel argument the kargs area can carry: the shared kernel-argument rule.
pub fn check_karg(k: &str) -> Result<()> {
    crate::validate::kernel_arg(k)
        .map_err(|m| InputError::new("command line", m).key("--karg").into())
}

/// The content of a kargs area of `len` bytes holding `kargs`.
pub fn kargs_area(kargs: &[String], len: u64) -> Result<Vec<u8>> {
    for k in kargs {
        check_karg(k)?;
    }
    let mut s = String::from(KARGS_HEAD);
    s.push_str(KARGS_SET);
    s.push_str(&kargs.join(" "));
    s.push_str("'\n");
    // At least "#\n" of padding, so the area always ends in a comment line.
    if s.len() as u64 + 2 > len {
        return Err(InputError::new(
            "command line",
            format!(
                "the kernel arguments take {} bytes; the ISO's area holds {}",
                s.len(),
                len
            ),
        )
        .into());
    }
    let pad = len as usize - s.len() - 1;
    s.push_str(&"#".repeat(pad));
    s.push('\n');
    Ok(s.into_bytes())
}

/// The kernel arguments in a kargs area.
pub fn parse_kargs_area(buf: &[u8]) -> Result<Vec<String>> {
    let text = String::from_utf8_lossy(buf);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(KARGS_SET) {
            let Some(end) = rest.find('\'') else {
                bail!("the kernel-arguments area is damaged (unterminated quote)");
            };
            return Ok(rest[..end].split_whitespace().map(str::to_string).collect());
        }
    }
    bail!("the kernel-arguments area is damaged (no `{KARGS_SET}` line)")
}

/// The live kernel arguments of an ISO.
pub fn kargs_show(iso: &Path) -> Result<Vec<String>> {
    let mut f = open(iso, false)?;
    let a = areas_of(&mut f, iso)?;
    let buf = read_at(&mut f, a.kargs_offset, a.kargs_len)
        .with_context(|| format!("reading {}", iso.display()))?;
    parse_kargs_area(&buf).with_context(|| format!("{}", iso.display()))
}

/// `kargs` with `delete` removed (an exact match, or every `NAME=...` for a bare `NAME`)
/// and then `append` added (skipping ones already there).
pub fn edit_kargs(kargs: &[String], append: &[String], delete: &[String]) -> Vec<String> {
    let mut out: Vec<String> = kargs
        .iter()
        .filter(|k| {
            !delete.iter().any(|d| {
                *k == d || (!d.contains('=') && k.split_once('=').is_some_and(|(n, _)| n == d))
            })
        })
        .cloned()
        .collect();
    for a in append {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// Rewrites the ISO's kernel arguments; returns the new list.
pub fn kargs_modify(iso: &Path, append: &[String], delete: &[String]) -> Result<Vec<String>> {
    for k in append.iter().chain(delete) {
        check_karg(k)?;
    }
    let mut f = open(iso, true)?;
    let a = areas_of(&mut f, iso)?;
    let buf = read_at(&mut f, a.kargs_offset, a.kargs_len)
        .with_context(|| format!("reading {}", iso.display()))?;
    let old = parse_kargs_area(&buf).with_context(|| format!("{}", iso.display()))?;
    let new = edit_kargs(&old, append, delete);
    if !new
        .iter()
        .any(|k| k == "kiln.live" || k.starts_with("kiln.live="))
    {
        return Err(InputError::new(
            "command line",
            "refusing to delete kiln.live=: without it the ISO does not boot its live system",
        )
        .key("--delete")
        .into());
    }
    let area = kargs_area(&new, a.kargs_len)?;
    write_at(&mut f, a.kargs_offset, &area)
        .with_context(|| format!("writing {}", iso.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", iso.display()))?;
    Ok(new)
}

/// Finds where xorriso put `path` inside `iso`: (byte offset, size). The file must be one
/// contiguous extent.
pub fn file_extent(iso: &Path, path: &str) -> Result<(u64, u64)> {
    let out = crate::cmd::Cmd::new("xorriso")
        .args(["-indev"])
        .arg(iso)
        .args(["-find", &format!("/{path}"), "-exec", "report_lba", "--"])
        .run()
        .with_context(|| format!("locating {path} in {}", iso.display()))?;
    // "File data lba:  0 ,      35 ,       2 ,      4096 , '/boot/grub/kargs.cfg'"
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("File data lba:") else {
            continue;
        };
        let f: Vec<&str> = rest.split(',').map(str::trim).collect();
        if f.len() >= 5 && f[4].trim_matches('\'') == format!("/{path}") {
            let lba: u64 = f[1].parse().context("xorriso's report_lba start")?;
            let bytes: u64 = f[3].parse().context("xorriso's report_lba size")?;
            found.push((lba * 2048, bytes));
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!("{path} not found in {} (xorriso report_lba)", iso.display()),
        _ => bail!(
            "{path} is stored in {} pieces in {}; it must be contiguous",
            found.len(),
            iso.display()
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A file laid out like a kiln live ISO: header and both areas (for the CLI's tests too).
    pub(crate) fn fake_iso(dir: &Path) -> PathBuf {
        let iso = dir.join("x.iso");
        let mut buf = vec![0u8; 40960 + IGNITION_AREA as usize + KARGS_AREA as usize];
        let a = Areas {
            ignition_offset: 40960,
            ignition_len: IGNITION_AREA,
            kargs_offset: 40960 + IGNITION_AREA,
            kargs_len: KARGS_AREA,
        };
        let k = kargs_area(
            &["kiln.live=iso".into(), "console=ttyS0".into()],
            KARGS_AREA,
        )
        .unwrap();
        buf[a.kargs_offset as usize..].copy_from_slice(&k);
        std::fs::write(&iso, buf).unwrap();
        write_header(&iso, &a).unwrap();
        iso
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let iso = fake_iso(d.path());
        assert_eq!(areas(&iso).unwrap().ignition_offset, 40960);
        // The header's place is taken now.
        assert!(write_header(&iso, &areas(&iso).unwrap()).is_err());
        let plain = d.path().join("plain.iso");
        std::fs::write(&plain, vec![0u8; 65536]).unwrap();
        let e = areas(&plain).unwrap_err();
        assert!(e.downcast_ref::<InputError>().is_some(), "{e:#}");
        let e = areas(&d.path().join("missing.iso")).unwrap_err();
        assert!(format!("{e:#}").contains("ISO not found"), "{e:#}");
        // Truncated after the header: the areas lie outside.
        let t = d.path().join("t.iso");
        std::fs::write(&t, &std::fs::read(&iso).unwrap()[..50000]).unwrap();
        assert!(format!("{:#}", areas(&t).unwrap_err()).contains("outside the file"));
    }

    #[test]
    fn ignition_embed_show_remove() {
        let d = tempfile::tempdir().unwrap();
        let iso = fake_iso(d.path());
        let before = std::fs::read(&iso).unwrap();
        assert_eq!(ignition_show(&iso).unwrap(), None);
        let cfg = r#"{"ignition":{"version":"3.3.0"}}"#;
        ignition_embed(&iso, cfg, false).unwrap();
        assert_eq!(ignition_show(&iso).unwrap().as_deref(), Some(cfg));
        let after = std::fs::read(&iso).unwrap();
        // Only the area changed.
        let diff: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(*diff.first().unwrap() >= 40960);
        assert!(*diff.last().unwrap() < 40960 + IGNITION_AREA as usize);
        // A second embed needs --force.
        let e = ignition_embed(&iso, cfg, false).unwrap_err();
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        ignition_embed(&iso, r#"{"ignition":{"version":"3.2.0"}}"#, true).unwrap();
        assert!(ignition_show(&iso).unwrap().unwrap().contains("3.2.0"));
        // Too large for the area.
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(IGNITION_AREA as usize));
        let e = ignition_embed(&iso, &big, true).unwrap_err();
        assert!(format!("{e:#}").contains("too large"), "{e:#}");
        assert!(ignition_remove(&iso).unwrap());
        assert_eq!(std::fs::read(&iso).unwrap(), before);
        assert!(!ignition_remove(&iso).unwrap());
    }

    #[test]
    fn kargs_area_edits() {
        let d = tempfile::tempdir().unwrap();
        let iso = fake_iso(d.path());
        assert_eq!(
            kargs_show(&iso).unwrap(),
            vec!["kiln.live=iso", "console=ttyS0"]
        );
        let new = kargs_modify(
            &iso,
            &["kiln.install.dest=/dev/vdb".into(), "quiet".into()],
            &["console".into()],
        )
        .unwrap();
        assert_eq!(
            new,
            vec!["kiln.live=iso", "kiln.install.dest=/dev/vdb", "quiet"]
        );
        assert_eq!(kargs_show(&iso).unwrap(), new);
        let a = areas(&iso).unwrap();
        let buf = std::fs::read(&iso).unwrap();
        let area = &buf[a.kargs_offset as usize..(a.kargs_offset + a.kargs_len) as usize];
        assert!(area.ends_with(b"#\n"));
        assert!(std::str::from_utf8(area)
            .unwrap()
            .contains("set kiln_kargs='kiln.live=iso "));
        assert!(kargs_modify(&iso, &["it's".into()], &[]).is_err());
        assert!(kargs_modify(&iso, &[], &["kiln.live".into()]).is_err());
        assert!(kargs_modify(&iso, &["a".repeat(5000)], &[]).is_err());
        assert_eq!(
            kargs_show(&iso).unwrap(),
            new,
            "a refused change left the area alone"
        );
        assert_eq!(
            edit_kargs(
                &["a=1".into(), "a=2".into(), "b".into()],
                &[],
                &["a=2".into()]
            ),
            vec!["a=1", "b"]
        );
    }

    #[test]
    fn crafted_header_lengths_are_refused_before_allocating() {
        let d = tempfile::tempdir().unwrap();
        let iso = d.path().join("huge.iso");
        // A sparse file as large as the area its header claims: the old check (the area
        // lies inside the file) passed and 10^12 bytes were allocated.
        let f = std::fs::File::create(&iso).unwrap();
        f.set_len(1_000_000_000_000 + 65536).unwrap();
        drop(f);
        let claim = |ign_len: u64, k_off: u64, k_len: u64| Areas {
            ignition_offset: 40960,
            ignition_len: ign_len,
            kargs_offset: k_off,
            kargs_len: k_len,
        };
        let write = |a: Areas| {
            let mut f = std::fs::OpenOptions::new().write(true).open(&iso).unwrap();
            write_at(&mut f, HEADER_OFFSET, &a.encode()).unwrap();
        };
        write(claim(1_000_000_000_000, 36864, KARGS_AREA));
        for e in [
            ignition_show(&iso).unwrap_err(),
            ignition_remove(&iso).unwrap_err(),
            ignition_embed(&iso, "{}", true).unwrap_err(),
        ] {
            assert!(
                format!("{e:#}").contains("claims 1000000000000 bytes"),
                "{e:#}"
            );
        }
        write(claim(IGNITION_AREA, 36864, 1_000_000_000_000));
        let e = kargs_show(&iso).unwrap_err();
        assert!(format!("{e:#}").contains("claims"), "{e:#}");
        assert!(kargs_modify(&iso, &["quiet".into()], &[]).is_err());
        // Overlapping areas.
        write(claim(IGNITION_AREA, 40960 + 4096, KARGS_AREA));
        let e = ignition_show(&iso).unwrap_err();
        assert!(format!("{e:#}").contains("overlap"), "{e:#}");
    }
}
