//! Where mmdebstrap builds a root from nothing: on a RAM-backed file system (tmpfs,
//! `/dev/shm`) when the host has room for it, else in the compose's work dir.
//!
//! A from-scratch bootstrap writes the whole root (the base recipe: 11.7k files, 480 MB,
//! plus the `.deb`s and apt lists) and dpkg syncs its database after every package; on a
//! disk shared with other work that is most of the bootstrap's time. The root is only kept
//! as the tree cache's objects ([`super::treecache`]), which it is copied into right after,
//! so its first home may as well be memory. What dpkg and the maintainer scripts write
//! does not depend on the file system (the reproducible test composes once on disk, once on
//! tmpfs, and compares the commits).
//!
//! Used when `/dev/shm` is a tmpfs with [`MIN_FREE`] free and the host has [`MIN_AVAILABLE`]
//! of memory available; `KILN_BOOTSTRAP_TMPFS=0` keeps the bootstrap on disk.

use crate::cleanup::TempDir;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Environment variable: `0` keeps the bootstrap in the work dir on disk.
pub const ENV: &str = "KILN_BOOTSTRAP_TMPFS";
const SHM: &str = "/dev/shm";
/// Free space the tmpfs must have (the base root needs under 1 GiB).
pub const MIN_FREE: u64 = 4 << 30;
/// `MemAvailable` the host must have, so the root in memory never pushes it into swap or
/// the OOM killer.
pub const MIN_AVAILABLE: u64 = 6 << 30;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Directory names: `kiln-bootstrap-PID-XXXXXX`.
const PREFIX: &str = "kiln-bootstrap-";

/// A place for one bootstrap: a directory on tmpfs (removed on drop and on SIGINT/SIGTERM)
/// or nothing (use the work dir).
pub struct Scratch {
    dir: Option<TempDir>,
}

impl Scratch {
    /// The scratch place for a bootstrap, deciding between tmpfs and disk.
    pub fn for_bootstrap() -> Result<Scratch> {
        if std::env::var(ENV).is_ok_and(|v| v.trim() == "0") {
            return Ok(Scratch { dir: None });
        }
        let shm = Path::new(SHM);
        let Some(free) = tmpfs_free(shm) else {
            return Ok(Scratch { dir: None });
        };
        if free < MIN_FREE || mem_available().is_none_or(|m| m < MIN_AVAILABLE) {
            return Ok(Scratch { dir: None });
        }
        remove_stale(shm);
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let dir = TempDir::new_in(shm, &prefix)
            .with_context(|| format!("creating a bootstrap directory in {SHM}"))?;
        Ok(Scratch { dir: Some(dir) })
    }

    /// Where to build `name`: in the tmpfs directory, or `fallback` (on disk).
    pub fn path(&self, name: &str, fallback: &Path) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().join(name),
            None => fallback.to_path_buf(),
        }
    }

    /// The tmpfs directory, if one is used (a build path to look for in the root).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempDir::path)
    }

    /// Where the bootstrap runs, for the progress line.
    pub fn describe(&self) -> &'static str {
        if self.dir.is_some() {
            "in memory (tmpfs)"
        } else {
            "on disk"
        }
    }
}

/// Removes the bootstrap directories of kiln processes that are gone (killed with
/// SIGKILL, or by SIGPIPE when their output was closed): on tmpfs they would hold memory
/// until the next boot. A directory whose process is alive is never touched.
fn remove_stale(shm: &Path) {
    let Ok(rd) = std::fs::read_dir(shm) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                // Best effort: a directory that cannot be removed now is tried next time.
                let _ = crate::cleanup::remove_tree(&e.path());
            }
        }
    }
}

/// The pid in a bootstrap directory's name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Free bytes of `dir` when it is a tmpfs.
fn tmpfs_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct; `c` is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != TMPFS_MAGIC {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_bsize as u64))
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let m = "MemTotal:       24683772 kB\nMemFree:        16000000 kB\n\
                 MemAvailable:   22068452 kB\n";
        assert_eq!(parse_mem_available(m), Some(22_068_452 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn stale_directories_are_those_of_gone_processes() {
        assert_eq!(owner_pid("kiln-bootstrap-1234-AbC12x"), Some(1234));
        assert_eq!(owner_pid("kiln-bootstrap-AbC12x"), None);
        assert_eq!(owner_pid("libpod_lock"), None);
        let d = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: no process has this pid.
        let gone = d.path().join("kiln-bootstrap-99999999-x");
        let alive = d
            .path()
            .join(format!("kiln-bootstrap-{}-x", std::process::id()));
        let other = d.path().join("kiln-other-99999999-x");
        for p in [&gone, &alive, &other] {
            std::fs::create_dir_all(p.join("usr")).unwrap();
        }
        remove_stale(d.path());
        assert!(!gone.exists());
        assert!(alive.exists());
        assert!(other.exists());
    }

    #[test]
    fn knows_a_tmpfs_from_a_disk() {
        // /proc is never a tmpfs; /dev/shm is one on every host kiln supports.
        assert_eq!(tmpfs_free(Path::new("/proc")), None);
        assert!(tmpfs_free(Path::new(SHM)).is_some(), "{SHM} is not a tmpfs");
        assert_eq!(tmpfs_free(Path::new("/no/such/dir")), None);
    }
}
