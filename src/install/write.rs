//! Step 2 of an install, the write: a raw image streamed and verified with its head held
//! back, or a qcow2 verified whole before `qemu-img` converts it onto the disk.

use super::source::Resolved;
use super::stream::{download_verified, open_stream, read_full, stream_raw, write_qcow2};
use super::target::{invalidate, private_target, Out, Target};
use super::{ImageSource, HEAD, QCOW2_MAGIC};
use crate::error::InputError;
use crate::image::manifest;
use crate::progress::Progress;
use anyhow::{Context, Result};
use std::path::Path;

/// An image, resolved, and the target it goes to.
pub(super) struct Write<'a> {
    pub source: &'a ImageSource,
    pub resolved: &'a Resolved,
    pub target: &'a Target,
    /// The disk will hold an Ignition config (a file target becomes private).
    pub has_ignition: bool,
    pub work: &'a Path,
    pub log: &'a Path,
}

impl Write<'_> {
    /// Opens the target for writing, private if it will hold a config, with its first and
    /// last MiB zeroed: until the write succeeds it holds no partition table.
    fn open_target(&self) -> Result<Out> {
        let size = self.target.size;
        let out = Out::open(self.target)?;
        private_target(&out, self.has_ignition)?;
        out.zero(0, HEAD.min(size))?;
        out.zero(size.saturating_sub(HEAD), HEAD.min(size))?;
        Ok(out)
    }

    /// Streams a raw image; returns its sha256 and size.
    pub fn raw(&self, p: &mut Progress) -> Result<(String, u64)> {
        let source = self.source;
        let mut r = open_stream(source, self.log)?;
        // The first MiB proves the source is readable (and not a misnamed qcow2)
        // before the target is touched.
        let mut head = vec![0u8; HEAD as usize];
        let n = read_full(&mut r, &mut head)
            .with_context(|| format!("reading the image from {}", source.describe()))?;
        head.truncate(n);
        if n == 0 {
            return Err(InputError::new(source.describe(), "the image is empty").into());
        }
        if head.starts_with(QCOW2_MAGIC) {
            return Err(InputError::new(
                source.describe(),
                "this is a qcow2 image, not raw (name it *.qcow2 or list it as qcow2 in \
                 manifest.json)",
            )
            .into());
        }
        let out = self.open_target()?;
        let resolved = self.resolved;
        let mut stage = p.bytes_stage("write", resolved.size.or(resolved.file_size));
        let r = stream_raw(
            head,
            &mut r,
            &out,
            resolved.expected.as_ref(),
            resolved.file_size,
            &source.describe(),
            &mut stage,
        );
        stage.done();
        r.with_context(|| {
            format!(
                "installing to {} failed; nothing was accepted: its partition table is \
                 erased (first MiB zeroed), so it does not boot",
                self.target.path.display()
            )
        })
    }

    /// Verifies a qcow2 whole (downloading it first), then converts it onto the target;
    /// returns its sha256 and virtual size.
    pub fn qcow2(&self, p: &mut Progress) -> Result<(String, u64)> {
        let (source, resolved) = (self.source, self.resolved);
        let dev_name = self.target.path.display().to_string();
        let (local, sha) = match source {
            ImageSource::File(f) => {
                // Verified whole (if a sha256 was known) before qemu-img read it.
                (f.clone(), resolved.verified_sha.clone())
            }
            _ => {
                let dst = self.work.join("image.qcow2");
                let mut stage = p.bytes_stage("download", resolved.file_size);
                let r = download_verified(
                    source,
                    &dst,
                    resolved.expected.as_ref(),
                    self.log,
                    &mut stage,
                );
                stage.done();
                let (sha, _) = r.with_context(|| format!("nothing was written to {dev_name}"))?;
                (dst, Some(sha))
            }
        };
        let vsize = super::source::qcow2_virtual_size(&local)?;
        super::target::check_fits(self.target, vsize, &source.describe())?;
        let out = self.open_target()?;
        let mut stage = p.bytes_stage("write", Some(vsize));
        let r = write_qcow2(&local, &out, vsize, self.log, &mut stage);
        stage.done();
        if let Err(e) = r {
            invalidate(&out);
            return Err(e.context(format!(
                "installing to {dev_name} failed; its partition table is erased (first \
                 MiB zeroed), so it does not boot"
            )));
        }
        let sha = match sha {
            Some(s) => s,
            None => manifest::sha256_file(&local)?,
        };
        Ok((sha, vsize))
    }
}
