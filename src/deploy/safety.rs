//! Process-level safety for sysroot operations: keeping libostree from freezing the host's
//! filesystem, and named fault points that crash tests use to kill kiln at known moments.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

/// Environment variable naming a fault point at which kiln announces itself on stderr and
/// then sleeps (so a test can kill it exactly there). `*` matches every point.
pub const FAULT_POINT_ENV: &str = "KILN_FAULT_POINT";
/// Environment variable: milliseconds to sleep at *every* fault point. Stretches an
/// operation so randomly timed kills land at many different moments.
pub const FAULT_DELAY_ENV: &str = "KILN_FAULT_DELAY_MS";
/// The line printed (to stderr) when the process stops at a fault point.
pub const FAULT_MARK: &str = "kiln: fault point reached:";

/// A named moment in a sysroot operation. With `KILN_FAULT_POINT=<name>` the process
/// prints `kiln: fault point reached: <name>` and sleeps for a minute; with
/// `KILN_FAULT_DELAY_MS=N` it sleeps N ms at every point. Without either it does nothing.
pub fn point(name: &str) {
    if let Ok(ms) = std::env::var(FAULT_DELAY_ENV) {
        if let Ok(ms) = ms.trim().parse::<u64>() {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    if let Ok(want) = std::env::var(FAULT_POINT_ENV) {
        if want == name || want == "*" {
            eprintln!("{FAULT_MARK} {name}");
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Makes the boot entries libostree just wrote readable by the boot loader after a power
/// loss. libostree 2022.7 freezes and thaws /boot *before* it swaps `/boot/loader` and
/// only `fsync`s after: on ext4 the swap then sits in the journal, which GRUB does not
/// replay. A power loss before the kernel checkpoints that journal boots the *old* entry,
/// whose bootlinks the same write already removed from the root filesystem, and the
/// machine stops in the initramfs (seen in tests/vm_powerloss.rs; libostree later fixed
/// it upstream, ostree#3392). So after every write of boot entries on a booted system kiln
/// checkpoints /boot itself with an FIFREEZE/FITHAW cycle.
///
/// Only for the host's own sysroot (`/`) with `/boot` on a filesystem of its own: a
/// directory sysroot's /boot is read by no firmware, and freezing it would freeze the host.
/// A failure is a warning: the entries are written; only their durability is at stake.
pub fn flush_boot(sysroot: &Path) {
    use std::os::unix::fs::MetadataExt;
    let is_host_root = sysroot
        .canonicalize()
        .map(|p| p == Path::new("/"))
        .unwrap_or(false);
    if !is_host_root {
        return;
    }
    let boot = Path::new("/boot");
    let separate = match (std::fs::metadata(boot), std::fs::metadata("/")) {
        (Ok(b), Ok(r)) => b.is_dir() && b.dev() != r.dev(),
        _ => false,
    };
    if !separate {
        return;
    }
    if let Err(e) = freeze_thaw(boot) {
        eprintln!(
            "kiln: warning: the boot entries are written, but checkpointing /boot's journal \
             failed ({e}); a power loss before the next sync may boot the previous entries"
        );
    }
}

/// One FIFREEZE/FITHAW cycle on the filesystem holding `dir` (which is then fully on
/// disk, journal checkpointed). The pair runs where a signal cannot split it.
fn freeze_thaw(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // _IOWR('X', 119, int) and _IOWR('X', 120, int) (linux/fs.h).
    const FIFREEZE: libc::c_ulong = 0xC004_5877;
    const FITHAW: libc::c_ulong = 0xC004_5878;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let fd = f.as_raw_fd();
    crate::cleanup::uninterruptible(|| {
        // SAFETY: plain ioctls on a descriptor we own; the argument is unused (0).
        if unsafe { libc::ioctl(fd, FIFREEZE as _, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above. Thaw is retried once: a frozen /boot blocks every writer.
        if unsafe { libc::ioctl(fd, FITHAW as _, 0) } != 0
            && unsafe { libc::ioctl(fd, FITHAW as _, 0) } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

/// libostree flushes /boot with an FIFREEZE/FITHAW cycle on the filesystem that holds it.
/// For a sysroot in a directory (image builds, tests) that is the *host's* filesystem,
/// and a process killed between the two ioctls leaves the host frozen (libostree's
/// watchdog only thaws on a timeout, not when its parent dies). So for any sysroot other
/// than `/`, kiln installs a seccomp filter that makes FIFREEZE fail with EOPNOTSUPP;
/// libostree then falls back to `syncfs()`, which is just as durable for our purpose.
/// Idempotent; the filter lasts for the life of the process (and its children).
pub fn guard_host_filesystem(sysroot: &Path) {
    let is_host_root = sysroot
        .canonicalize()
        .map(|p| p == Path::new("/"))
        .unwrap_or(false);
    if is_host_root {
        return;
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = install_fifreeze_filter() {
            eprintln!("kiln: warning: could not block FIFREEZE for a directory sysroot: {e}");
        }
    });
}

/// True when this process runs with kiln's FIFREEZE filter (read from /proc).
pub fn fifreeze_filter_active() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| {
                l.starts_with("Seccomp_filters:")
                    && l.split_whitespace().nth(1).unwrap_or("0") != "0"
            })
        })
        .unwrap_or(false)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn install_fifreeze_filter() -> std::io::Result<()> {
    // Classic BPF opcodes (linux/filter.h).
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    // _IOWR('X', 119, int)
    const FIFREEZE: u32 = 0xC004_5877;
    // struct seccomp_data: nr @0, arch @4, ip @8, args[6] @16 (u64 each, little endian).
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    const OFF_ARG1_LO: u32 = 16 + 8;

    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let prog = [
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 0, 5, AUDIT_ARCH),
        ins(LD_W_ABS, 0, 0, OFF_NR),
        ins(JEQ_K, 0, 3, libc::SYS_ioctl as u32),
        ins(LD_W_ABS, 0, 0, OFF_ARG1_LO),
        ins(JEQ_K, 0, 1, FIFREEZE),
        ins(
            RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32,
        ),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let install = || {
        // SAFETY: fprog points at a valid filter array that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &fprog as *const libc::sock_fprog,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match install() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            // Without CAP_SYS_ADMIN a filter needs no_new_privs.
            // SAFETY: plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            install()
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn install_fifreeze_filter() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no FIFREEZE filter for this architecture",
    ))
}

/// Keeps libostree's fsfreeze watchdogs from outliving kiln as zombies.
///
/// Every boot-entry write (`write_deployments` and what calls it: deploy, rollback,
/// cleanup, kargs) forks a watchdog that `daemon()`s: the first child exits at once and
/// libostree never waits for it; the grandchild exits when the write is done, reparented
/// to init. Under a PID 1 that does not reap (containers, build sandboxes), each run left
/// a defunct `kiln` behind. While a `ForkReaper` lives, kiln is a child subreaper
/// (`PR_SET_CHILD_SUBREAPER`) so the grandchild comes back to kiln; dropping it reaps
/// every child that is a fork of kiln itself (same command name, never exec'd), waiting
/// a moment for one still running.
pub(crate) struct ForkReaper(());

/// (live reapers, whether the process was a subreaper before the first one).
static REAPERS: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl ForkReaper {
    pub(crate) fn new() -> ForkReaper {
        let mut g = REAPERS.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == 0 {
            let mut cur: libc::c_int = 0;
            // SAFETY: prctl with an out-pointer to a c_int, and with integer arguments.
            unsafe {
                libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut cur as *mut libc::c_int);
                g.1 = cur != 0;
                if !g.1 {
                    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                }
            }
        }
        g.0 += 1;
        ForkReaper(())
    }
}

impl Drop for ForkReaper {
    fn drop(&mut self) {
        reap_forked_children(Duration::from_secs(10));
        let mut g = REAPERS.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 && !g.1 {
            // SAFETY: prctl with integer arguments.
            unsafe {
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
            }
        }
    }
}

/// The children of this process (of all its threads).
fn children() -> Vec<libc::pid_t> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(
                    s.split_whitespace()
                        .filter_map(|p| p.parse::<libc::pid_t>().ok()),
                );
            }
        }
    }
    v
}

fn comm(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()
}

/// Reaps the children that are forks of this process (libostree's watchdogs): same
/// command name as kiln, so never exec'd. Children that run other programs (the ones
/// `Cmd` waits for) are left alone. Waits up to `patience` for forks still running.
pub(crate) fn reap_forked_children(patience: Duration) {
    let Some(me) = comm("self") else { return };
    let deadline = std::time::Instant::now() + patience;
    loop {
        let mut running = false;
        for pid in children() {
            if comm(&pid.to_string()).as_deref() != Some(me.as_str()) {
                continue;
            }
            let mut status = 0;
            // SAFETY: waitpid on one of our own children, without blocking.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
                running = true;
            }
        }
        if !running || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
