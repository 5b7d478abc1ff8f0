//! Reading an image and putting it on the target, verified: a raw image streamed with its
//! head held back until the whole stream matched its sha256 ([`stream_raw`]), local files
//! read hole-aware ([`SparseReader`]), downloads through curl, qcow2 images downloaded and
//! verified whole ([`download_verified`]) before `qemu-img` converts them ([`write_qcow2`]).

use super::digest::Expected;
use super::source::curl;
use super::target::Out;
use super::{ImageSource, CHUNK};
use crate::cmd::Cmd;
use crate::error::InputError;
use crate::progress::Stage;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(super) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streams a raw image from `r` onto the target: hashed as it goes, all-zero chunks
/// zeroed instead of written, the first [`super::HEAD`] bytes held back until the stream ended
/// and matched `expected`. `head` is the first chunk, already read by the caller.
/// Returns the sha256 and the number of bytes.
pub(super) fn stream_raw(
    head: Vec<u8>,
    r: &mut dyn Read,
    out: &Out,
    expected: Option<&Expected>,
    expected_len: Option<u64>,
    source_name: &str,
    stage: &mut Stage,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut pos = head.len() as u64;
    stage.inc(pos);
    let mut buf = vec![0u8; CHUNK];
    let mut zero_from: Option<u64> = None;
    let limit = out.target.size;
    loop {
        let n = read_full(r, &mut buf)
            .with_context(|| format!("reading the image from {source_name} after {pos} bytes"))?;
        if n == 0 {
            break;
        }
        if pos + n as u64 > limit {
            return Err(InputError::new(
                out.target.path.display().to_string(),
                format!(
                    "the image is larger than the target ({limit} bytes); the install was \
                     stopped"
                ),
            )
            .into());
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            zero_from.get_or_insert(pos);
        } else {
            if let Some(z) = zero_from.take() {
                out.zero(z, pos - z)?;
            }
            out.write_at(chunk, pos)?;
        }
        pos += n as u64;
        stage.set_position(pos);
    }
    if let Some(z) = zero_from.take() {
        out.zero(z, pos - z)?;
    }
    if let Some(len) = expected_len {
        if len != pos {
            bail!("{source_name} ended after {pos} bytes, but {len} were expected (truncated?)");
        }
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(e) = expected {
        e.check(source_name, &actual)?;
    }
    // Verified: only now does the disk get its partition table and boot code.
    out.write_at(&head, 0)?;
    out.sync()?;
    Ok((actual, pos))
}

/// Opens the image as a stream: a file, or curl's output for a URL (a failed download
/// is an error at the end of the stream, never a short success).
pub(super) fn open_stream(source: &ImageSource, log: &Path) -> Result<Box<dyn Read>> {
    match source {
        ImageSource::File(p) => Ok(Box::new(SparseReader::open(p)?)),
        ImageSource::Url(u) => {
            let r = curl().arg("--fail").arg(u).reader_logged(log)?;
            Ok(Box::new(CurlReader {
                inner: r,
                log: log.to_path_buf(),
            }))
        }
        ImageSource::Commit { .. } => bail!("a commit is built first, not streamed"),
    }
}

/// A local file read in order, its holes (`SEEK_HOLE`) returned as zeros without asking
/// the kernel to fill pages: a 4 GiB image that is mostly holes reads at memory speed.
pub(super) struct SparseReader {
    f: File,
    pos: u64,
    len: u64,
    /// `pos..hole_end` is a hole; `pos..data_end` is data.
    hole_end: u64,
    data_end: u64,
}

impl SparseReader {
    fn open(p: &Path) -> Result<SparseReader> {
        let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        Ok(SparseReader {
            f,
            pos: 0,
            len,
            hole_end: 0,
            data_end: 0,
        })
    }

    /// Finds the extent at `pos`: a hole up to the next data, or data up to the next hole.
    fn probe(&mut self) -> std::io::Result<()> {
        let fd = self.f.as_raw_fd();
        // SAFETY: lseek on our own descriptor; the offset is only read back.
        let data = unsafe { libc::lseek(fd, self.pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                self.hole_end = self.len; // only a hole remains
                return Ok(());
            }
            // No SEEK_DATA support: treat everything as data.
            self.data_end = self.len;
            return Ok(());
        }
        let data = data as u64;
        if data > self.pos {
            self.hole_end = data.min(self.len);
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, self.pos as libc::off_t, libc::SEEK_HOLE) };
        self.data_end = if hole < 0 {
            self.len
        } else {
            (hole as u64).min(self.len)
        };
        if self.data_end <= self.pos {
            self.data_end = self.len;
        }
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.hole_end && self.pos >= self.data_end {
            self.probe()?;
        }
        let n = if self.pos < self.hole_end {
            let n = (self.hole_end - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            n
        } else {
            let want = (self.data_end - self.pos).min(buf.len() as u64) as usize;
            let n = self.f.read_at(&mut buf[..want], self.pos)?;
            if n == 0 {
                return Ok(0);
            }
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// curl's stdout; a failed transfer's error carries curl's message.
struct CurlReader {
    inner: duct::ReaderHandle,
    log: PathBuf,
}

impl Read for CurlReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("download failed: {e}: {}", crate::cmd::log_tail(&self.log)),
            )
        })
    }
}

/// Reads a whole stream into `dst` (a temp file) while hashing it; returns sha256 and size.
pub(super) fn download_verified(
    source: &ImageSource,
    dst: &Path,
    expected: Option<&Expected>,
    log: &Path,
    stage: &mut Stage,
) -> Result<(String, u64)> {
    let mut r = open_stream(source, log)?;
    let mut f = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut r, &mut buf)
            .with_context(|| format!("reading {} after {pos} bytes", source.describe()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n])
            .with_context(|| format!("writing {}", dst.display()))?;
        pos += n as u64;
        stage.set_position(pos);
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(e) = expected {
        e.check(&source.describe(), &actual)?;
    }
    Ok((actual, pos))
}

/// Converts a (verified) qcow2 onto the target with `qemu-img`, feeding its progress to
/// the bar.
pub(super) fn write_qcow2(
    src: &Path,
    out: &Out,
    virtual_size: u64,
    log: &Path,
    stage: &mut Stage,
) -> Result<()> {
    let mut r = Cmd::new("qemu-img")
        .args(["convert", "-p", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(&out.target.path)
        .reader_logged(log)?;
    let mut buf = [0u8; 4096];
    let mut line = String::new();
    loop {
        let n = r.read(&mut buf).map_err(|e| {
            anyhow!(
                "qemu-img convert onto {} failed: {e}: {}",
                out.target.path.display(),
                crate::cmd::log_tail(log)
            )
        })?;
        if n == 0 {
            break;
        }
        for c in String::from_utf8_lossy(&buf[..n]).chars() {
            if c == '\r' || c == '\n' {
                // "    (12.34/100%)"
                if let Some(pct) = line
                    .trim()
                    .strip_prefix('(')
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.parse::<f64>().ok())
                {
                    stage.set_position((virtual_size as f64 * pct / 100.0) as u64);
                }
                line.clear();
            } else {
                line.push(c);
            }
        }
    }
    stage.set_position(virtual_size);
    out.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::digest::DigestMismatch;
    use crate::install::target::{Target, TargetKind};
    use crate::progress::Progress;

    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let c = &mut self.0[0];
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            c.drain(..n);
            if c.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    fn file_target(dir: &Path, size: u64, fill: u8) -> Target {
        let path = dir.join("disk");
        std::fs::write(&path, vec![fill; size as usize]).unwrap();
        Target {
            path,
            kind: TargetKind::File,
            size,
        }
    }

    fn image(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            // Data in the head and at the end, a zero run in the middle.
            if i < CHUNK + 100 || i >= len - 10 {
                *b = (i % 251) as u8 + 1;
            }
        }
        v
    }

    #[test]
    fn verified_stream_lands_whole_with_its_head_last() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK + 77);
        let t = file_target(td.path(), 5 * CHUNK as u64, 0xAB);
        let out = Out::open(&t).unwrap();
        let exp = Expected {
            sha256: hex::encode(Sha256::digest(&img)),
            from: "test".into(),
        };
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let (sha, n) = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            Some(&exp),
            Some(img.len() as u64),
            "img",
            &mut s,
        )
        .unwrap();
        assert_eq!(sha, exp.sha256);
        assert_eq!(n, img.len() as u64);
        let disk = std::fs::read(&t.path).unwrap();
        assert_eq!(&disk[..img.len()], &img[..]);
        // Past the image, the target is untouched.
        assert!(disk[img.len()..].iter().all(|&b| b == 0xAB));
    }

    #[test]
    fn bad_digest_never_writes_the_head() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK);
        let t = file_target(td.path(), 4 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let exp = Expected {
            sha256: "0".repeat(64),
            from: "manifest.json".into(),
        };
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            Some(&exp),
            None,
            "img",
            &mut s,
        )
        .unwrap_err();
        let m = err
            .downcast_ref::<DigestMismatch>()
            .expect("a digest mismatch");
        assert_eq!(m.from, "manifest.json");
        let disk = std::fs::read(&t.path).unwrap();
        assert!(disk[..CHUNK].iter().all(|&b| b == 0), "head written");
    }

    #[test]
    fn sparse_reader_reads_holes_as_zeros() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(8 * CHUNK as u64 + 5).unwrap();
        f.write_all_at(b"hello", 3 * CHUNK as u64 - 2).unwrap();
        f.write_all_at(b"end", 8 * CHUNK as u64 + 2).unwrap();
        drop(f);
        let mut got = Vec::new();
        SparseReader::open(&p)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, std::fs::read(&p).unwrap());
    }

    #[test]
    fn oversized_and_truncated_streams_fail() {
        let td = tempfile::tempdir().unwrap();
        let img = image(3 * CHUNK);
        let t = file_target(td.path(), 2 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", None);
        let mut r = Chunks(vec![img[CHUNK..].to_vec()]);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            None,
            None,
            "img",
            &mut s,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("larger than the target"),
            "{err:#}"
        );
        let t = file_target(td.path(), 4 * CHUNK as u64, 0);
        let out = Out::open(&t).unwrap();
        let mut r = Chunks(vec![img[CHUNK..2 * CHUNK].to_vec()]);
        let err = stream_raw(
            img[..CHUNK].to_vec(),
            &mut r,
            &out,
            None,
            Some(img.len() as u64),
            "img",
            &mut s,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        let disk = std::fs::read(&t.path).unwrap();
        assert!(disk[..CHUNK].iter().all(|&b| b == 0), "head written");
    }
}
