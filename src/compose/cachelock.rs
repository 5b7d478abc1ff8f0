//! The file locks that keep concurrent composes from stepping on a shared cache.

use anyhow::{Context, Result};
use std::path::Path;

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    pub fn acquire(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(CacheLock { _file: f })
    }
}
