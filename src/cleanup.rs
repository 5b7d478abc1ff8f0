//! Temporary work directories that go away on every exit path.
//!
//! Commands that build large trees (compose, image, live/PXE, verify-reproducible,
//! install) make their work directories with [`TempDir`]. A `TempDir` is removed when it
//! is dropped (success, error, unwinding panic) and, through a process-wide registry, when
//! kiln gets SIGINT or SIGTERM: [`install_signal_handlers`] sets a handler that only
//! writes the signal number into a pipe (the one async-signal-safe thing it does); a
//! thread reading that pipe stops kiln's child processes (mmdebstrap, dracut, mkfs, …),
//! removes every registered directory and ends the process with 128 + the signal number
//! (130 for SIGINT, 143 for SIGTERM).
//!
//! Removing a tree is [`remove_tree`]: it unmounts anything a killed tool left mounted
//! below it (never deleting through a mount into the host), clears the immutable flag
//! libostree puts on deployment directories ([`clear_immutable`], the one place that
//! does), then deletes.

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Directories to remove if kiln is interrupted.
static REGISTRY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held while a directory is being removed, so the signal thread never exits the process
/// half way through a removal done by a `TempDir`'s drop (nor removes the same tree).
static REMOVING: Mutex<()> = Mutex::new(());
/// The signal that interrupted kiln, 0 while none did.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// Write end of the self-pipe, -1 until the handlers are installed.
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

/// How long child processes get to exit after SIGTERM before they get SIGKILL.
const CHILD_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

// linux/fs.h (the ioctl numbers are the same on every 64-bit architecture kiln targets).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_int = 0x10;
const FS_APPEND_FL: libc::c_int = 0x20;

/// The signal kiln was interrupted by, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// When kiln is being interrupted, waits for the signal thread to finish its cleanup and
/// end the process; returns at once otherwise. `main` calls it before exiting so an error
/// caused by the interruption (a killed child) does not end the process first.
pub fn wait_if_interrupted() {
    if interrupted().is_some() {
        loop {
            std::thread::park();
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: errno is saved and restored around write(2).
    // SAFETY: __errno_location and write are async-signal-safe; the buffer is on the stack.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = PIPE_W.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = sig as u8;
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Installs the SIGINT and SIGTERM handlers and starts the thread that acts on them.
/// Called once by `main`, before any work; later calls do nothing. Child processes get
/// the default dispositions back when they exec.
pub fn install_signal_handlers() -> Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = install());
    result
}

fn install() -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the signal pipe");
    }
    let (r, w) = (fds[0], fds[1]);
    PIPE_W.store(w, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || signal_thread(r))
        .context("starting the signal thread")?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with our handler and an empty mask is valid; the
        // handler only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("installing the handler for signal {sig}"));
            }
        }
    }
    Ok(())
}

fn signal_thread(r: libc::c_int) {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a stack variable from our own pipe.
        let n = unsafe { libc::read(r, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return; // The pipe broke: nothing left to listen to.
    }
    let sig = i32::from(b);
    INTERRUPTED.store(sig, Ordering::SeqCst);
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("kiln: {name}: stopping child processes and removing temporary files");
    stop_children(CHILD_GRACE);
    let _g = REMOVING.lock().unwrap_or_else(|e| e.into_inner());
    let dirs = REGISTRY.lock().map(|v| v.clone()).unwrap_or_default();
    for d in dirs.iter().rev() {
        if let Err(e) = remove_tree(d) {
            eprintln!("kiln: warning: could not remove {}: {e:#}", d.display());
        }
    }
    // SAFETY: _exit ends the process at once, without running atexit handlers or
    // destructors another thread might be using.
    unsafe { libc::_exit(128 + sig) }
}

/// The processes descended from this one (children, their children, …), not zombies.
pub fn descendants() -> Vec<i32> {
    descendants_of(std::process::id() as i32)
}

/// The living processes descended from `root`.
pub fn descendants_of(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let Some(ppid) = f.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if state != "Z" && state != "X" {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Sends SIGTERM to every descendant, waits up to `grace` for them to exit, then sends
/// SIGKILL to what is left. New descendants appearing meanwhile are signalled too.
pub fn stop_children(grace: std::time::Duration) {
    stop(descendants, grace)
}

fn stop(procs: impl Fn() -> Vec<i32>, grace: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let d = procs();
        if d.is_empty() {
            return;
        }
        let sig = if start.elapsed() < grace {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        for pid in d {
            // SAFETY: kill has no memory effects; a pid that is gone gives ESRCH.
            unsafe { libc::kill(pid, sig) };
        }
        if start.elapsed() > grace + std::time::Duration::from_secs(5) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort();
    v.reverse();
    v
}

/// Clears the immutable and append-only flags (`chattr -i -a`) on every directory and
/// regular file below `root`, `root` included. Symlinks are not followed and other file
/// systems (mounts) are not entered.
pub fn clear_immutable(root: &Path) -> Result<()> {
    let dev = std::fs::symlink_metadata(root)
        .with_context(|| format!("stat {}", root.display()))?
        .dev();
    clear_flags_walk(root, dev)
}

fn clear_flags_walk(p: &Path, dev: u64) -> Result<()> {
    let md = std::fs::symlink_metadata(p).with_context(|| format!("stat {}", p.display()))?;
    if md.dev() != dev || !(md.is_dir() || md.is_file()) {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    if r == 0 && flags & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0 {
        flags &= !(FS_IMMUTABLE_FL | FS_APPEND_FL);
        // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`.
        if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &flags) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("clearing the immutable flag of {}", p.display()));
        }
    }
    // File systems without flags (tmpfs before 6.0, overlayfs…) answer ENOTTY: nothing
    // there can be immutable.
    drop(f);
    if md.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
            let e = e.with_context(|| format!("listing {}", p.display()))?;
            clear_flags_walk(&e.path(), dev)?;
        }
    }
    Ok(())
}

/// Removes the tree at `path` (nothing to do when it is gone): lazily unmounts whatever
/// is mounted below it, refuses to go on while anything still is, clears immutable flags
/// and deletes.
pub fn remove_tree(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    for m in mounts_below(path) {
        let _ = crate::cmd::Cmd::new("umount").arg("--lazy").arg(&m).run();
    }
    if !mounts_below(path).is_empty() {
        bail!(
            "leaving {} in place: something is still mounted below it",
            path.display()
        );
    }
    let _ = clear_immutable(path);
    let mut last = None;
    for _ in 0..3 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                last = Some(e);
                // Something may still have been writing into it; flags may be new.
                let _ = clear_immutable(path);
            }
        }
    }
    Err(last.expect("three failed attempts"))
        .with_context(|| format!("removing {}", path.display()))
}

/// A temporary directory, registered for removal on SIGINT/SIGTERM and removed (through
/// [`remove_tree`]) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// A new directory `PREFIXxxxxxx` in `parent` (created when missing), mode 0700.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let t = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))?;
        let path = t.keep();
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        REGISTRY
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        Ok(TempDir { path, keep: false })
    }

    /// In the system's temp directory (`$TMPDIR`, else /tmp).
    pub fn new(prefix: &str) -> Result<TempDir> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (no removal on drop or on a signal); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        unregister(&self.path);
        self.path.clone()
    }
}

/// Runs `f` where a SIGINT or SIGTERM cannot end the process: the signal thread waits
/// until `f` returns. For a few system calls that must come in pairs (freeze and thaw a
/// filesystem); `f` must not drop a [`TempDir`].
pub fn uninterruptible<T>(f: impl FnOnce() -> T) -> T {
    let _g = REMOVING.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

fn unregister(path: &Path) {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = r.iter().rposition(|p| p == path) {
        r.remove(i);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Interrupted: the signal thread removes it and ends the process.
        wait_if_interrupted();
        let _g = REMOVING.lock().unwrap_or_else(|e| e.into_inner());
        unregister(&self.path);
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("kiln: warning: {e:#}");
        }
    }
}

/// Writes `data` to `path` through a temp file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", path.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tempdir_is_registered_and_removed_with_immutable_dirs() {
        let parent = tempfile::tempdir().unwrap();
        let t = TempDir::new_in(parent.path(), ".kiln-test-").unwrap();
        let p = t.path().to_path_buf();
        assert!(REGISTRY.lock().unwrap().contains(&p));
        let dep = p.join("ostree/deploy/kiln/deploy/abc.0");
        std::fs::create_dir_all(dep.join("usr")).unwrap();
        std::fs::write(dep.join("usr/f"), "x").unwrap();
        let immutable = crate::cmd::Cmd::new("chattr")
            .arg("+i")
            .arg(&dep)
            .run()
            .is_ok();
        if immutable {
            // A plain recursive delete cannot remove it.
            assert!(std::fs::remove_dir_all(&p).is_err());
        }
        drop(t);
        assert!(!p.exists(), "{} left behind", p.display());
        assert!(!REGISTRY.lock().unwrap().contains(&p));
    }

    #[test]
    fn kept_tempdir_stays() {
        let parent = tempfile::tempdir().unwrap();
        let t = TempDir::new_in(parent.path(), ".kiln-test-").unwrap();
        let p = t.keep();
        assert!(p.is_dir());
        assert!(!REGISTRY.lock().unwrap().contains(&p));
    }

    #[test]
    fn a_process_tree_is_found_and_stopped() {
        // Only this test's own subtree: other tests run child processes at the same time.
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = c.id() as i32;
        let start = std::time::Instant::now();
        while descendants_of(root).is_empty() && start.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let sleeper = descendants_of(root);
        assert_eq!(sleeper.len(), 1, "{sleeper:?}");
        assert!(descendants().contains(&root) && descendants().contains(&sleeper[0]));
        let tree = || {
            let mut v = descendants_of(root);
            if descendants().contains(&root) {
                v.push(root);
            }
            v
        };
        // The shell is reaped by wait() below only after it exits; stop the sleeper
        // and the shell, then check both are gone.
        let waiter = std::thread::spawn(move || c.wait().unwrap());
        stop(tree, std::time::Duration::from_secs(2));
        waiter.join().unwrap();
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let st = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
                !matches!(st.split_whitespace().next(), Some("Z" | "X"))
            })
        };
        let t = std::time::Instant::now();
        while alive(sleeper[0]) && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!alive(sleeper[0]), "the grandchild survived");
    }
}
