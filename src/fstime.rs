//! File times set without following symlinks (`utimensat` with `AT_SYMLINK_NOFOLLOW`),
//! for the places that normalize a tree's times: the tree cache and image builds.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Sets `path`'s mtime to `mtime` seconds (and nanoseconds 0), and its atime to `atime`
/// seconds, or leaves the atime as it is when `None`. A symlink's own times are set.
pub fn set_times(path: &Path, atime: Option<i64>, mtime: i64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let at = match atime {
        Some(s) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: 0,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let mt = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [at, mt];
    // SAFETY: `c` is a valid NUL-terminated path and `times` holds two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
