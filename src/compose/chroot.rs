//! Running programs inside the tree: `unshare --mount --net --pid --fork` then `chroot`.
//!
//! The new mount namespace gets its own `/proc`, a small `/dev` (tmpfs with the usual
//! character devices) and a read-only `/sys`; they disappear with the namespace when the
//! program exits, on success and on error alike, so nothing is ever left mounted on the
//! host. The new network namespace has only a down loopback: no network. The new PID
//! namespace means any daemon a script starts dies with it, and its own `/proc` (mounted
//! on the namespace's `/proc` too) shows only the namespace's processes.

use crate::cmd::Cmd;
use anyhow::Result;
use std::ffi::OsString;
use std::path::Path;

const SETUP: &str = r#"set -e
t="$1"; shift
mount -t proc proc "$t/proc"
mount -t tmpfs -o mode=0755,nosuid,size=16m kiln-dev "$t/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name maj min <<EOF
$n
EOF
  mknod -m 0666 "$t/dev/$name" c "$maj" "$min"
done
ln -s /proc/self/fd "$t/dev/fd"
ln -s /proc/self/fd/0 "$t/dev/stdin"
ln -s /proc/self/fd/1 "$t/dev/stdout"
ln -s /proc/self/fd/2 "$t/dev/stderr"
mount -t sysfs -o ro kiln-sys "$t/sys"
exec "$@"
"#;

/// A command to run in `tree` with a clean environment plus `env`.
pub fn command(tree: &Path, argv: &[&str], env: &[(&str, String)]) -> Cmd {
    Cmd::new("unshare").args(unshare_args(tree, &[], argv, env))
}

/// [`command`] with the `chroot` run under `strace OPTIONS -o TRACE`. strace (the host's)
/// starts inside the namespaces, after the setup: it sees the namespace's process ids
/// (those `clone` returns) without translating each one, and traces only the chroot and
/// what runs in it.
///
/// strace and everything it traces run on one CPU (`taskset`, inherited by every child):
/// each traced call stops the program and wakes strace, twice, and a wake-up on the
/// other CPU waits for it; dracut under strace took 41–54 s unpinned on a loaded 2-core
/// machine, 12–16 s pinned, for the same trace and the same image.
pub fn traced(
    tree: &Path,
    argv: &[&str],
    env: &[(&str, String)],
    options: &[&str],
    trace: &Path,
) -> Cmd {
    // The CPU this process runs on now: one it is allowed on.
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() }.max(0);
    let mut pre: Vec<OsString> = vec![
        "taskset".into(),
        "--cpu-list".into(),
        cpu.to_string().into(),
        "strace".into(),
    ];
    pre.extend(options.iter().map(OsString::from));
    pre.push("-o".into());
    pre.push(trace.as_os_str().to_owned());
    Cmd::new("unshare").args(unshare_args(tree, &pre, argv, env))
}

/// `unshare`'s arguments for running `argv` in `tree`, the `chroot` under `pre` (a
/// program and its options) when not empty.
fn unshare_args(
    tree: &Path,
    pre: &[OsString],
    argv: &[&str],
    env: &[(&str, String)],
) -> Vec<OsString> {
    for d in ["proc", "dev", "sys"] {
        let _ = std::fs::create_dir_all(tree.join(d));
    }
    let mut a: Vec<OsString> = [
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        "/bin/bash",
        "-c",
        SETUP,
        "kiln-chroot",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push(tree.as_os_str().to_owned());
    a.extend(pre.iter().cloned());
    a.push("chroot".into());
    a.push(tree.as_os_str().to_owned());
    for x in [
        "/usr/bin/env",
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "LC_ALL=C.UTF-8",
        "DEBIAN_FRONTEND=noninteractive",
    ] {
        a.push(x.into());
    }
    for (k, v) in env {
        a.push(format!("{k}={v}").into());
    }
    a.extend(argv.iter().map(OsString::from));
    a
}

/// Runs `argv` in the tree with its output appended to `log`.
pub fn run_logged(tree: &Path, argv: &[&str], env: &[(&str, String)], log: &Path) -> Result<()> {
    command(tree, argv, env).run_logged(log)
}

/// Runs `argv` in the tree and returns its stdout.
pub fn read(tree: &Path, argv: &[&str], env: &[(&str, String)]) -> Result<String> {
    command(tree, argv, env).read()
}
