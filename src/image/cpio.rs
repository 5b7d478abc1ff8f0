//! The cpio "newc" archives the Linux kernel unpacks as (extra) initramfs images: the
//! live root image (`rootfs.img`) and the embedded Ignition config (`ignition.img`).
//!
//! The kernel unpacks concatenated archives in order and skips zero padding between and
//! after them, which is what lets a zero-filled reserved area on the ISO hold an archive
//! of any size up to the area's.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Writes newc archives; entries get inode numbers in order, owner root, time `mtime`.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    mtime: u64,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, mtime: u64) -> Self {
        Writer {
            out,
            ino: 0,
            mtime,
            written: 0,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64) -> Result<()> {
        if size > u64::from(u32::MAX) {
            bail!("{name}: {size} bytes is too large for a cpio archive (4 GiB at most)");
        }
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            self.mtime as u32,
            size,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).context("writing a cpio archive")?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// A directory entry (`name` without a leading slash).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<()> {
        self.header(name, 0o040000 | (perm & 0o7777), 0)
    }

    /// A regular file from memory.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.header(name, 0o100000 | (perm & 0o7777), data.len() as u64)?;
        self.put(data)?;
        self.pad()
    }

    /// A regular file streamed from `src`.
    pub fn file_from(&mut self, name: &str, perm: u32, src: &Path) -> Result<()> {
        let size = std::fs::metadata(src)
            .with_context(|| format!("reading {}", src.display()))?
            .len();
        self.header(name, 0o100000 | (perm & 0o7777), size)?;
        let mut f =
            std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let n = std::io::copy(&mut f, &mut self.out)
            .with_context(|| format!("copying {} into a cpio archive", src.display()))?;
        if n != size {
            bail!("{} changed size while being archived", src.display());
        }
        self.written += n;
        self.pad()
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.header(TRAILER, 0, 0)?;
        self.out.flush().context("writing a cpio archive")?;
        Ok(self.out)
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Reads the entries of the newc archive at the start of `buf` (zero padding before it
/// is skipped; reading stops at the trailer). An all-zero buffer is an empty list.
pub fn read(buf: &[u8]) -> Result<Vec<Entry>> {
    let mut pos = buf.iter().position(|&b| b != 0).unwrap_or(buf.len());
    let mut out = Vec::new();
    if pos == buf.len() {
        return Ok(out);
    }
    let field = |b: &[u8], i: usize| -> Result<u64> {
        let s = std::str::from_utf8(&b[6 + 8 * i..6 + 8 * (i + 1)])
            .context("cpio header is not ASCII")?;
        u64::from_str_radix(s, 16).with_context(|| format!("cpio header field {s:?}"))
    };
    loop {
        if buf.len() < pos + 110 {
            bail!("truncated cpio archive at byte {pos}");
        }
        let h = &buf[pos..pos + 110];
        if &h[..6] != MAGIC {
            bail!("not a cpio (newc) archive at byte {pos}");
        }
        let mode = field(h, 1)? as u32;
        let size = field(h, 6)? as usize;
        let namesize = field(h, 11)? as usize;
        let name_start = pos + 110;
        let name_end = name_start + namesize;
        if namesize == 0 || buf.len() < name_end {
            bail!("truncated cpio archive at byte {pos}");
        }
        let name = String::from_utf8_lossy(&buf[name_start..name_end - 1]).into_owned();
        let data_start = (name_end + 3) & !3;
        let data_end = data_start + size;
        if buf.len() < data_end {
            bail!("truncated cpio archive: {name} runs past the end");
        }
        if name == TRAILER {
            return Ok(out);
        }
        out.push(Entry {
            name,
            mode,
            data: buf[data_start..data_end].to_vec(),
        });
        pos = (data_end + 3) & !3;
    }
}

/// Reads an archive from a reader (whole).
pub fn read_from(mut r: impl Read) -> Result<Vec<Entry>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).context("reading a cpio archive")?;
    read(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding() {
        let mut w = Writer::new(Vec::new(), 1_700_000_000);
        w.dir("usr", 0o755).unwrap();
        w.file("usr/a.ign", 0o600, b"{\"x\":1}").unwrap();
        w.file("b", 0o644, b"").unwrap();
        let mut buf = w.finish().unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        buf.extend(std::iter::repeat_n(0, 1000));
        let e = read(&buf).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "usr");
        assert_eq!(e[0].mode, 0o040755);
        assert_eq!(e[1].name, "usr/a.ign");
        assert_eq!(e[1].mode, 0o100600);
        assert_eq!(e[1].data, b"{\"x\":1}");
        assert_eq!(e[2].data, b"");
        assert!(read(&[0u8; 512]).unwrap().is_empty());
        assert!(read(b"garbage and more garbage").is_err());
        // Truncated: header promises more data than there is.
        let mut w = Writer::new(Vec::new(), 0);
        w.file("f", 0o644, &[7u8; 100]).unwrap();
        let full = w.finish().unwrap();
        assert!(read(&full[..150]).is_err());
    }

    #[test]
    fn streams_files() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("root.squashfs");
        std::fs::write(&src, vec![5u8; 10_001]).unwrap();
        let mut w = Writer::new(Vec::new(), 0);
        w.dir("kiln-live", 0o755).unwrap();
        w.file_from("kiln-live/root.squashfs", 0o644, &src).unwrap();
        let buf = w.finish().unwrap();
        let e = read_from(&buf[..]).unwrap();
        assert_eq!(e[1].data.len(), 10_001);
    }
}
