//! Property-based fuzzing of kiln's parsers of files it did not write itself: recipes, the
//! live ISO's header and areas, the GPT reader of `kiln install`, the VHD footer, the OVF
//! descriptor and cpio archives (the Ignition parsers are in tests/ignition_fuzz.rs).
//!
//! Every target feeds arbitrary bytes and structure-aware mutations of a valid input
//! (fields set to edge values, every truncation, lengths far beyond the file, sparse files
//! of a TiB) and checks that the parser returns a value or an error, never panics, reads
//! nothing beyond what the input says (values match an independent decoding), and
//! allocates no more than the input's size allows (counted by the allocator below).
//!
//! The harness (tests/fuzz_common) runs a few dozen cases per target in the suite;
//! `make fuzz` runs many more. Failing seeds are kept in tests/fuzz-regressions/.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::path::Path;

mod fuzz_common;
use fuzz_common::{apply_edits, edits, measure, root, token_text};

#[global_allocator]
static ALLOC: fuzz_common::Counting = fuzz_common::Counting;

fn fuzz<S: Strategy>(name: &str, strat: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    fuzz_common::fuzz(name, 64, strat, test)
}

const MIB: usize = 1 << 20;

/// A number for a length or offset field, chosen where parsers break: near the file's
/// length, near powers of two (overflow edges), or anything.
#[derive(Debug, Clone, Copy)]
enum Num {
    Lit(u64),
    NearLen(i64),
    Pow2(u8, i8),
}

impl Num {
    fn get(self, len: u64) -> u64 {
        match self {
            Num::Lit(n) => n,
            Num::NearLen(d) => len.wrapping_add_signed(d),
            Num::Pow2(p, d) => (1u64 << (p % 64)).wrapping_add_signed(d.into()),
        }
    }
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        any::<u64>().prop_map(Num::Lit),
        (0u64..70_000).prop_map(Num::Lit),
        (-1100i64..1100).prop_map(Num::NearLen),
        (0u8..64, -2i8..3).prop_map(|(p, d)| Num::Pow2(p, d)),
        Just(Num::Lit(u64::MAX)),
        Just(Num::Lit(1_000_000_000_000)),
    ]
}

/// Writes `bytes` to `file`, then makes it `sparse_to` bytes long (a hole) if larger.
fn write_file(file: &Path, bytes: &[u8], sparse_to: Option<u64>) -> u64 {
    std::fs::write(file, bytes).unwrap();
    let mut len = bytes.len() as u64;
    if let Some(n) = sparse_to {
        if n > len {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .unwrap()
                .set_len(n)
                .unwrap();
            len = n;
        }
    }
    len
}

/// `len` bytes of `buf` at `off`, zeros past its end (what a sparse tail reads as).
fn bytes_at(buf: &[u8], off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            off.checked_add(i)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| buf.get(p).copied())
                .unwrap_or(0)
        })
        .collect()
}

fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    if off < buf.len() {
        let n = v.len().min(buf.len() - off);
        buf[off..off + n].copy_from_slice(&v[..n]);
    }
}

/// Byte and length edits shared by the binary formats.
#[derive(Debug, Clone)]
enum Edit {
    /// Set byte `pos % len` to the value.
    Byte(usize, u8),
    /// Cut the input at `n % (len + 1)`.
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Byte(p, b)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(buf: &mut Vec<u8>, e: &Edit) {
    match *e {
        Edit::Byte(p, b) if !buf.is_empty() => {
            let l = buf.len();
            buf[p % l] = b;
        }
        Edit::Truncate(n) => buf.truncate(n % (buf.len() + 1)),
        _ => {}
    }
}

/// A sparse length to extend a file to: none, or up to 2^40 bytes.
fn sparse() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        4 => Just(None),
        1 => (16u32..41).prop_map(|p| Some(1u64 << p)),
        1 => Just(Some(1_000_000_000_000)),
    ]
}

mod cpio {
    use super::*;
    use kiln::image::cpio;

    /// Entries: (name, data, is a directory).
    pub fn entries() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
        let name = proptest::collection::vec(
            prop_oneof![Just('a'), Just('z'), Just('/'), Just('.'), Just('é')],
            1..12,
        )
        .prop_map(|c| c.into_iter().collect::<String>());
        proptest::collection::vec(
            (
                name,
                proptest::collection::vec(any::<u8>(), 0..40),
                any::<bool>(),
            ),
            0..5,
        )
    }

    pub fn archive(entries: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
        let mut w = cpio::Writer::new(Vec::new(), 1_700_000_000);
        for (name, data, dir) in entries {
            if *dir {
                w.dir(name, 0o755).unwrap();
            } else {
                w.file(name, 0o644, data).unwrap();
            }
        }
        w.finish().unwrap()
    }

    /// An 8-byte value for a header field.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            num().prop_map(|n| format!("{:08x}", n.get(0) as u32).into_bytes()),
            (0u32..300).prop_map(|n| format!("{n:08x}").into_bytes()),
            Just(b"ffffffff".to_vec()),
            Just(b"FFFFFFFF".to_vec()),
            Just(b"zzzzzzzz".to_vec()),
            Just(b"+fffffff".to_vec()),
            Just(b"-0000001".to_vec()),
            Just(b"        ".to_vec()),
            Just(b"\xc3\xa9000000".to_vec()),
            proptest::collection::vec(any::<u8>(), 8),
        ]
    }

    /// Parses `buf` and checks what came out and what it cost.
    pub fn check(buf: &[u8]) -> Result<(), TestCaseError> {
        let (r, u) = measure(|| cpio::read(buf));
        prop_assert!(
            u.peak <= 4 * buf.len() + 4096,
            "cpio::read of {} bytes allocated {:?}",
            buf.len(),
            u
        );
        if let Ok(entries) = r {
            let data: usize = entries.iter().map(|e| e.data.len()).sum();
            prop_assert!(data <= buf.len());
        }
        Ok(())
    }

    #[test]
    fn cpio_arbitrary_bytes() {
        fuzz(
            "cpio-arbitrary",
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..600),
                // Valid magic, then anything.
                proptest::collection::vec(any::<u8>(), 0..300).prop_map(|mut v| {
                    let mut b = b"070701".to_vec();
                    b.append(&mut v);
                    b
                }),
            ],
            |b| check(&b),
        );
    }

    #[test]
    fn cpio_mutated_archives() {
        fuzz(
            "cpio-mutated",
            (
                entries(),
                0usize..3,
                proptest::collection::vec((any::<usize>(), 0usize..13, field()), 0..4),
                proptest::collection::vec(edit(), 0..3),
            ),
            |(entries, zeros, fields, edits)| {
                let mut buf = vec![0u8; 4 * zeros];
                buf.extend(archive(&entries));
                if fields.is_empty() && edits.is_empty() {
                    // Unchanged: reads back what was written (zero padding skipped).
                    let got = cpio::read(&buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(got.len(), entries.len());
                    for (g, (name, data, dir)) in got.iter().zip(&entries) {
                        prop_assert_eq!(&g.name, name);
                        if !dir {
                            prop_assert_eq!(&g.data, data);
                        }
                    }
                }
                let headers: Vec<usize> = (0..buf.len().saturating_sub(5))
                    .filter(|&i| &buf[i..i + 6] == b"070701")
                    .collect();
                for (h, i, v) in fields {
                    if !headers.is_empty() {
                        let at = headers[h % headers.len()] + 6 + 8 * i;
                        put(&mut buf, at, &v);
                    }
                }
                for e in &edits {
                    apply(&mut buf, e);
                }
                check(&buf)
            },
        );
    }

    /// Every prefix of a valid archive: an error or the entries before the cut.
    #[test]
    fn cpio_every_truncation() {
        let full = archive(&[
            ("usr".into(), vec![], true),
            (
                "usr/lib/ignition/user.ign".into(),
                b"{\"x\":1}".to_vec(),
                false,
            ),
            ("é".into(), vec![7; 33], false),
        ]);
        for n in 0..=full.len() {
            check(&full[..n]).unwrap();
            if n < full.len() - 12 {
                assert!(cpio::read(&full[..n]).is_err() || n == 0, "prefix {n}");
            }
        }
    }
}

mod iso {
    use super::*;
    use kiln::image::iso;

    const CONFIG: &str = "{\"ignition\":{\"version\":\"3.3.0\"}}";

    /// A file laid out as `kiln image --format iso` lays out its areas: the system area
    /// with the header, then the Ignition area, then the kargs area.
    pub fn build(ign_len: u64, kargs_len: u64, config: Option<&str>, kargs: &[String]) -> Vec<u8> {
        let sys = 32768u64;
        let mut b = vec![0u8; (sys + ign_len + kargs_len) as usize];
        let h = iso::HEADER_OFFSET as usize;
        b[h..h + 8].copy_from_slice(iso::MAGIC);
        for (i, v) in [sys, ign_len, sys + ign_len, kargs_len].iter().enumerate() {
            b[h + 8 + 8 * i..h + 16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        if let Some(c) = config {
            let a = iso::ignition_archive(c).unwrap();
            if a.len() as u64 <= ign_len {
                put(&mut b, sys as usize, &a);
            }
        }
        if let Ok(k) = iso::kargs_area(kargs, kargs_len) {
            put(&mut b, (sys + ign_len) as usize, &k);
        }
        b
    }

    #[derive(Debug, Clone)]
    pub enum Mut {
        /// Header field 0..4 (Ignition offset, length, kargs offset, length).
        Header(usize, Num),
        /// A byte of the header, of the Ignition area or of the kargs area.
        Area(u8, usize, u8),
        Edit(Edit),
    }

    fn mutation() -> impl Strategy<Value = Mut> {
        prop_oneof![
            3 => (0usize..4, num()).prop_map(|(i, n)| Mut::Header(i, n)),
            2 => (0u8..3, any::<usize>(), any::<u8>()).prop_map(|(a, p, b)| Mut::Area(a, p, b)),
            1 => edit().prop_map(Mut::Edit),
        ]
    }

    fn kargs() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            prop_oneof![
                Just("console=ttyS0".to_string()),
                Just("quiet".to_string()),
                Just("a=b'c".to_string()),
                Just("x=".to_string()),
            ],
            0..3,
        )
        .prop_map(|mut v| {
            v.insert(0, "kiln.live".to_string());
            v
        })
    }

    /// Runs every ISO command's parsing and editing on `file` and bounds its memory by the
    /// file's size and, for huge (sparse) files, by a constant of the format.
    pub fn check(file: &Path, logical: u64) -> Result<(), TestCaseError> {
        let allowed = (3 * logical).min(64 * MIB as u64) as usize + MIB;
        let ops: [(&str, &dyn Fn() -> bool); 6] = [
            ("areas", &|| iso::areas(file).is_ok()),
            ("ignition show", &|| iso::ignition_show(file).is_ok()),
            ("kargs show", &|| iso::kargs_show(file).is_ok()),
            ("kargs modify", &|| {
                iso::kargs_modify(file, &["kiln.fuzz=1".to_string()], &[]).is_ok()
            }),
            ("ignition embed", &|| {
                iso::ignition_embed(file, CONFIG, true).is_ok()
            }),
            ("ignition remove", &|| iso::ignition_remove(file).is_ok()),
        ];
        for (name, op) in ops {
            let (_, u) = measure(op);
            prop_assert!(
                u.peak <= allowed,
                "{} on a {} byte file allocated {:?}",
                name,
                logical,
                u
            );
        }
        if let Ok(a) = iso::areas(file) {
            for (off, len) in [
                (a.ignition_offset, a.ignition_len),
                (a.kargs_offset, a.kargs_len),
            ] {
                prop_assert!(off >= 32768 && off.checked_add(len).is_some_and(|e| e <= logical));
            }
        }
        Ok(())
    }

    #[test]
    fn iso_mutated_headers_and_areas() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("live.iso");
        fuzz(
            "iso-mutated",
            (
                prop_oneof![Just(iso::IGNITION_AREA), 256u64..4096],
                prop_oneof![Just(iso::KARGS_AREA), 100u64..600],
                any::<bool>(),
                kargs(),
                proptest::collection::vec(mutation(), 0..4),
                sparse(),
            ),
            |(ign_len, kargs_len, with_config, kargs, muts, sparse_to)| {
                // Embedded only where it fits.
                let config = with_config
                    .then_some(CONFIG)
                    .filter(|c| iso::ignition_archive(c).unwrap().len() as u64 <= ign_len);
                let mut b = build(ign_len, kargs_len, config, &kargs);
                // Lengths near the file's end, a TiB away for a sparse file.
                let len = sparse_to.unwrap_or(0).max(b.len() as u64);
                let h = iso::HEADER_OFFSET as usize;
                for m in &muts {
                    match m {
                        Mut::Header(i, n) => {
                            let v = n.get(len);
                            put(&mut b, h + 8 + 8 * i, &v.to_le_bytes());
                        }
                        Mut::Area(a, p, v) => {
                            let (start, len) = match a {
                                0 => (h, 40),
                                1 => (32768, ign_len as usize),
                                _ => (32768 + ign_len as usize, kargs_len as usize),
                            };
                            put(&mut b, start + p % len, &[*v]);
                        }
                        Mut::Edit(e) => apply(&mut b, e),
                    }
                }
                let logical = write_file(&file, &b, sparse_to);
                let kargs_fit = iso::kargs_area(&kargs, kargs_len).is_ok();
                if muts.is_empty() && kargs_fit {
                    // Unchanged: reads back what was written.
                    let shown = iso::ignition_show(&file)
                        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                    prop_assert_eq!(shown.as_deref(), config);
                    let k = iso::kargs_show(&file)
                        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                    let want: Vec<String> = kargs
                        .join(" ")
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    prop_assert_eq!(k, want);
                }
                check(&file, logical)
            },
        );
    }

    #[test]
    fn iso_arbitrary_system_area() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("live.iso");
        fuzz(
            "iso-arbitrary",
            (
                proptest::collection::vec(any::<u8>(), 0..200),
                0usize..40_000,
                any::<bool>(),
            ),
            |(bytes, len, magic)| {
                // Arbitrary bytes where the header goes (with or without the magic).
                let mut b = vec![0u8; len];
                let h = iso::HEADER_OFFSET as usize;
                if magic {
                    put(&mut b, h, iso::MAGIC);
                    put(&mut b, h + 8, &bytes);
                } else {
                    put(&mut b, h, &bytes);
                }
                let logical = write_file(&file, &b, None);
                check(&file, logical)
            },
        );
    }

    /// The reported crash: a header whose Ignition area claims 10^12 bytes of a (sparse)
    /// file of that size aborted `kiln iso ignition show` on allocation failure.
    #[test]
    fn iso_huge_area_claims_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("live.iso");
        let mut b = build(iso::IGNITION_AREA, iso::KARGS_AREA, Some(CONFIG), &[]);
        let h = iso::HEADER_OFFSET as usize;
        let huge = 1_000_000_000_000u64;
        for field in [1usize, 3] {
            let mut b2 = b.clone();
            put(&mut b2, h + 8 + 8 * field, &huge.to_le_bytes());
            write_file(&file, &b2, Some(2 * huge));
            check(&file, 2 * huge).unwrap();
            assert!(iso::ignition_show(&file).is_err());
        }
        // The kargs area at the end of the file, claiming the rest of a TiB.
        put(
            &mut b,
            h + 8 + 8 * 3,
            &(huge - 32768 - iso::IGNITION_AREA).to_le_bytes(),
        );
        write_file(&file, &b, Some(huge));
        check(&file, huge).unwrap();
        assert!(iso::kargs_show(&file).is_err());
    }
}

mod gpt {
    use super::*;
    use kiln::blockdev::{partitions, Partition};

    pub const ENTRIES_LBA: u64 = 2;

    /// A disk with a GPT of `count` entries of `entry_size` bytes holding `parts`
    /// (first LBA, last LBA, name).
    pub fn build(count: u32, entry_size: u32, parts: &[(u64, u64, String)]) -> Vec<u8> {
        let table = (count * entry_size) as usize;
        let mut b = vec![0u8; 1024 + table.div_ceil(512) * 512 + 512];
        b[512..520].copy_from_slice(b"EFI PART");
        b[520..524].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        b[524..528].copy_from_slice(&92u32.to_le_bytes());
        b[512 + 72..512 + 80].copy_from_slice(&ENTRIES_LBA.to_le_bytes());
        b[512 + 80..512 + 84].copy_from_slice(&count.to_le_bytes());
        b[512 + 84..512 + 88].copy_from_slice(&entry_size.to_le_bytes());
        for (i, (first, last, name)) in parts.iter().enumerate().take(count as usize) {
            let e = 1024 + i * entry_size as usize;
            b[e..e + 16].copy_from_slice(&[0xaf; 16]);
            b[e + 16..e + 32].copy_from_slice(&[i as u8 + 1; 16]);
            b[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            b[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().take(36).enumerate() {
                b[e + 56 + 2 * j..e + 58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        b
    }

    fn le64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn le32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    /// Reads `file` (holding `content`, zeros up to `logical`) and checks every partition
    /// reported against an independent decoding with exact arithmetic.
    pub fn check(file: &Path, content: &[u8], logical: u64) -> Result<(), TestCaseError> {
        let (r, u) = measure(|| partitions(file));
        // The table is read only when the disk holds it (at most 1024 entries of 4 KiB).
        let allowed = (3 * logical).min(4 * MIB as u64 + 4096) as usize + 16 * 1024;
        prop_assert!(u.peak <= allowed, "{} bytes: allocated {:?}", logical, u);
        let Ok(parts) = r else { return Ok(()) };
        let hdr = bytes_at(content, 512, 92);
        let lba = le64(&hdr, 72);
        let es = le32(&hdr, 84) as u128;
        let count = le32(&hdr, 80) as u128;
        // The table must really have been read from where the header says.
        prop_assert!(
            u128::from(lba) * 512 + es * count <= u128::from(logical),
            "entries at LBA {} read from a {} byte file",
            lba,
            logical
        );
        for p in &parts {
            prop_assert!(p.number >= 1 && u128::from(p.number) <= count);
            let e = bytes_at(
                content,
                lba * 512 + (u64::from(p.number) - 1) * es as u64,
                es as usize,
            );
            let (first, last) = (le64(&e, 32) as u128, le64(&e, 40) as u128);
            prop_assert_eq!(u128::from(p.offset), first * 512, "{:?}", p);
            prop_assert_eq!(u128::from(p.size), (last + 1 - first) * 512, "{:?}", p);
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    pub enum Mut {
        /// Entries LBA (0), entry count (1), entry size (2).
        Header(u8, Num),
        /// Entry `i`'s first (false) or last (true) LBA.
        Lba(usize, bool, Num),
        Edit(Edit),
    }

    fn parts() -> impl Strategy<Value = Vec<(u64, u64, String)>> {
        proptest::collection::vec(
            (
                34u64..100_000,
                0u64..100_000,
                prop_oneof![
                    Just("root".to_string()),
                    Just("EFI-SYSTEM".to_string()),
                    Just("é".repeat(40)),
                    Just(String::new()),
                ],
            )
                .prop_map(|(f, n, s)| (f, f + n, s)),
            0..4,
        )
    }

    fn mutation() -> impl Strategy<Value = Mut> {
        prop_oneof![
            2 => (0u8..3, num()).prop_map(|(f, n)| Mut::Header(f, n)),
            2 => (any::<usize>(), any::<bool>(), num()).prop_map(|(i, l, n)| Mut::Lba(i, l, n)),
            1 => edit().prop_map(Mut::Edit),
        ]
    }

    #[test]
    fn gpt_mutated_tables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        fuzz(
            "gpt-mutated",
            (
                prop_oneof![Just(128u32), 1u32..8],
                prop_oneof![Just(128u32), Just(256), Just(4096)],
                parts(),
                proptest::collection::vec(mutation(), 0..4),
                sparse(),
            ),
            |(count, es, parts, muts, sparse_to)| {
                let mut b = build(count, es, &parts);
                let sectors = sparse_to.unwrap_or(0).max(b.len() as u64) / 512;
                for m in &muts {
                    match m {
                        Mut::Header(f, n) => {
                            let v = n.get(sectors);
                            match f {
                                0 => put(&mut b, 512 + 72, &v.to_le_bytes()),
                                1 => put(&mut b, 512 + 80, &(v as u32).to_le_bytes()),
                                _ => put(&mut b, 512 + 84, &(v as u32).to_le_bytes()),
                            }
                        }
                        Mut::Lba(i, last, n) => {
                            let e = 1024 + (i % count as usize) * es as usize;
                            let v = n.get(sectors);
                            put(&mut b, e + 32 + 8 * usize::from(*last), &v.to_le_bytes());
                        }
                        Mut::Edit(e) => apply(&mut b, e),
                    }
                }
                let logical = write_file(&file, &b, sparse_to);
                if muts.is_empty() {
                    let got =
                        partitions(&file).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                    let want: Vec<Partition> = parts
                        .iter()
                        .enumerate()
                        .take(count as usize)
                        .map(|(i, (f, l, n))| Partition {
                            number: i as u32 + 1,
                            name: n.chars().take(36).collect(),
                            offset: f * 512,
                            size: (l - f + 1) * 512,
                        })
                        .collect();
                    prop_assert_eq!(got, want);
                }
                check(&file, &b, logical)
            },
        );
    }

    #[test]
    fn gpt_arbitrary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        fuzz(
            "gpt-arbitrary",
            (
                proptest::collection::vec(any::<u8>(), 0..2048),
                any::<bool>(),
            ),
            |(mut b, sig)| {
                if sig && b.len() >= 520 {
                    b[512..520].copy_from_slice(b"EFI PART");
                }
                let logical = write_file(&file, &b, None);
                check(&file, &b, logical)
            },
        );
    }

    /// Found by gpt-mutated: LBAs whose byte offsets overflow u64 wrapped around (a table
    /// "at" LBA 2^55 + 2 was read from LBA 2; an entry ending at LBA 2^64 - 1 got a size
    /// of a few bytes) instead of being refused.
    #[test]
    fn gpt_overflowing_lbas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let good = build(4, 128, &[(2048, 4095, "a".into())]);
        write_file(&file, &good, None);
        assert_eq!(partitions(&file).unwrap().len(), 1);
        let mut b = good.clone();
        b[512 + 72..512 + 80].copy_from_slice(&((1u64 << 55) + ENTRIES_LBA).to_le_bytes());
        write_file(&file, &b, None);
        assert!(partitions(&file).is_err());
        for (first, last) in [
            (2048u64, u64::MAX),
            (1 << 60, (1 << 60) + 5),
            (2048, 1 << 60),
        ] {
            let mut b = good.clone();
            b[1024 + 32..1024 + 40].copy_from_slice(&first.to_le_bytes());
            b[1024 + 40..1024 + 48].copy_from_slice(&last.to_le_bytes());
            write_file(&file, &b, None);
            let e = format!("{:#}", partitions(&file).unwrap_err());
            assert!(e.contains("beyond any disk"), "{e}");
        }
    }

    /// Every prefix of a valid disk.
    #[test]
    fn gpt_every_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        let b = build(
            4,
            128,
            &[(2048, 4095, "a".into()), (4096, 9999, "b".into())],
        );
        for n in 0..=b.len() {
            let logical = write_file(&file, &b[..n], None);
            check(&file, &b[..n], logical).unwrap();
        }
    }
}

mod vhd {
    use super::*;
    use kiln::image::formats::vhd_footer;

    pub fn footer(disk_type: u32, size: u64, creator: [u8; 4]) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        f[28..32].copy_from_slice(&creator);
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        seal(&mut f);
        f
    }

    fn sum(f: &[u8]) -> u32 {
        f.iter()
            .enumerate()
            .filter(|(i, _)| !(64..68).contains(i))
            .map(|(_, &x)| u32::from(x))
            .sum()
    }

    pub fn seal(f: &mut [u8]) {
        let c = !sum(f);
        f[64..68].copy_from_slice(&c.to_be_bytes());
    }

    pub fn check(file: &Path, b: &[u8]) -> Result<(), TestCaseError> {
        let (r, u) = measure(|| vhd_footer(file));
        prop_assert!(u.peak <= 64 * 1024, "allocated {:?}", u);
        if let Ok(v) = r {
            let f = &b[b.len() - 512..];
            prop_assert_eq!(&f[..8], b"conectix");
            prop_assert_eq!(!sum(f), u32::from_be_bytes(f[64..68].try_into().unwrap()));
            prop_assert_eq!(
                v.disk_type,
                u32::from_be_bytes(f[60..64].try_into().unwrap())
            );
            prop_assert_eq!(
                v.current_size,
                u64::from_be_bytes(f[48..56].try_into().unwrap())
            );
        }
        Ok(())
    }

    #[test]
    fn vhd_mutated_footers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.vhd");
        fuzz(
            "vhd-mutated",
            (
                proptest::collection::vec(any::<u8>(), 0..1100),
                0u32..6,
                num(),
                any::<[u8; 4]>(),
                proptest::collection::vec((0usize..512, any::<u8>()), 0..4),
                any::<bool>(),
                proptest::collection::vec(edit(), 0..2),
            ),
            |(mut b, ty, size, creator, bytes, reseal, edits)| {
                let size = size.get(b.len() as u64);
                let mut f = footer(ty, size, creator);
                let clean = bytes.is_empty() && edits.is_empty();
                for (p, v) in bytes {
                    f[p] = v;
                }
                if reseal {
                    seal(&mut f);
                }
                b.extend_from_slice(&f);
                for e in &edits {
                    apply(&mut b, e);
                }
                std::fs::write(&file, &b).unwrap();
                if clean {
                    let v = vhd_footer(&file).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                    let creator = String::from_utf8_lossy(&creator).into_owned();
                    prop_assert_eq!(
                        (v.disk_type, v.current_size, v.creator_app),
                        (ty, size, creator)
                    );
                }
                check(&file, &b)
            },
        );
    }

    #[test]
    fn vhd_arbitrary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.vhd");
        fuzz(
            "vhd-arbitrary",
            proptest::collection::vec(any::<u8>(), 0..1100),
            |b| {
                std::fs::write(&file, &b).unwrap();
                check(&file, &b)
            },
        );
    }
}

mod ovf {
    use super::*;
    use kiln::image::formats::{ovf_descriptor, parse_ovf, OvfDisk};

    #[test]
    fn ovf_mutated_descriptors() {
        fuzz(
            "ovf-mutated",
            (any::<u64>(), any::<u64>(), edits()),
            |(size, capacity, e)| {
                let disk = OvfDisk {
                    href: "kiln.vmdk".into(),
                    size,
                    capacity,
                };
                let text = ovf_descriptor("kiln", &disk);
                let back = parse_ovf(&text).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                prop_assert_eq!((back.size, back.capacity), (size, capacity));
                let text = apply_edits(&text, &e);
                let (_, u) = measure(|| parse_ovf(&text));
                prop_assert!(u.peak <= 4 * text.len() + 4096, "allocated {:?}", u);
                Ok(())
            },
        );
    }

    #[test]
    fn ovf_token_soup() {
        fuzz(
            "ovf-tokens",
            token_text(&[
                "<File ",
                "<Disk ",
                "ovf:href=\"",
                "ovf:size=\"",
                "ovf:capacity=\"",
                "\"",
                ">",
                "12",
                "é",
                " ",
            ]),
            |t| {
                let _ = parse_ovf(&t);
                Ok(())
            },
        );
    }
}

mod recipe {
    use super::*;
    use kiln::recipe::load_input;

    /// A scratch tree where the recipes' relative paths resolve: recipes/{base.toml,
    /// examples} and overlays/ link to the repository's.
    pub fn scratch() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("recipes")).unwrap();
        for (link, target) in [
            ("recipes/base.toml", "recipes/base.toml"),
            ("recipes/examples", "recipes/examples"),
            ("overlays", "overlays"),
        ] {
            std::os::unix::fs::symlink(root().join(target), d.path().join(link)).unwrap();
        }
        std::fs::create_dir(d.path().join("recipes/fuzz.d")).unwrap();
        d
    }

    pub fn seeds() -> Vec<String> {
        [
            "recipes/base.toml",
            "recipes/examples/devbox.toml",
            "recipes/examples/devbox.d/10-tools.toml",
        ]
        .iter()
        .map(|p| {
            std::fs::read_to_string(root().join(p))
                .unwrap()
                // The example includes ../base.toml from recipes/examples/.
                .replace("../base.toml", "base.toml")
        })
        .collect()
    }

    /// Loads `dir/recipes/fuzz.toml` (`main`) with `fragment` in its fuzz.d/.
    pub fn check(dir: &Path, main: &str, fragment: Option<&str>) -> Result<(), TestCaseError> {
        let file = dir.join("recipes/fuzz.toml");
        std::fs::write(&file, main).unwrap();
        let frag = dir.join("recipes/fuzz.d/50-fuzz.toml");
        match fragment {
            Some(t) => std::fs::write(&frag, t).unwrap(),
            None => {
                let _ = std::fs::remove_file(&frag);
            }
        }
        let (r, u) = measure(|| load_input(&file));
        let size = main.len() + fragment.map_or(0, str::len);
        // Text parsers have no length fields; this catches blowups, not constant factors.
        prop_assert!(u.peak <= 200 * size + 8 * MIB, "{} bytes: {:?}", size, u);
        if let Err(e) = r {
            if let Some((l, c)) = e.pos {
                let text = if e.file.ends_with("50-fuzz.toml") {
                    fragment.unwrap_or_default()
                } else if e.file.ends_with("fuzz.toml") {
                    main
                } else {
                    return Ok(());
                };
                let lines = text.split('\n').count().max(1);
                prop_assert!(
                    l >= 1 && l <= lines && c >= 1,
                    "{} outside {} lines",
                    e,
                    lines
                );
            }
        }
        Ok(())
    }

    #[test]
    fn recipe_mutated() {
        let d = scratch();
        let seeds = seeds();
        fuzz("recipe-mutated", (0..seeds.len(), edits()), |(i, e)| {
            check(d.path(), &apply_edits(&seeds[i], &e), None)
        });
    }

    #[test]
    fn recipe_mutated_fragment() {
        let d = scratch();
        let seeds = seeds();
        fuzz("recipe-fragment", (0..seeds.len(), edits()), |(i, e)| {
            check(d.path(), &seeds[0], Some(&apply_edits(&seeds[i], &e)))
        });
    }

    const TOKENS: &[&str] = &[
        "[",
        "]",
        "[[",
        "]]",
        "=",
        "\"",
        "'",
        ".",
        ",",
        "{",
        "}",
        "\n",
        " ",
        "name",
        "ref",
        "packages",
        "include",
        "overlays",
        "units",
        "enable",
        "updates",
        "window",
        "days",
        "metadata",
        "kernel-args",
        "remove-files",
        "source-date-epoch",
        "\"base.toml\"",
        "\"fuzz.toml\"",
        "\"../overlays/base\"",
        "\"a.service\"",
        "\"/usr/**\"",
        "-1",
        "99999999999999999999",
        "1979-05-27",
        "#",
        "\"\"\"",
        "\\",
        "\"é\"",
    ];

    #[test]
    fn recipe_token_soup() {
        let d = scratch();
        fuzz("recipe-tokens", token_text(TOKENS), |t| {
            check(d.path(), &t, None)
        });
    }

    #[test]
    fn recipe_arbitrary_strings() {
        let d = scratch();
        fuzz("recipe-arbitrary", any::<String>(), |t| {
            check(d.path(), &t, None)
        });
    }
}
