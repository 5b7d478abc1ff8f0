//! Process hygiene of the kiln binary: output into a closed pipe ends quietly (no panic),
//! and sysroot commands leave no child process behind. Run as root (sysroot commands).

mod common;

use common::*;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The tests here look at this process's children: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A deployed sysroot with a rollback deployment.
fn sysroot() -> Fixture {
    let f = Fixture::new();
    f.commit(1);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&f.sysroot),
        "--repo",
        s(&f.repo),
        REF,
    ]);
    f.commit(2);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&f.sysroot),
        "--repo",
        s(&f.repo),
        REF,
    ]);
    f
}

/// Runs kiln with stdout a pipe whose reader is already gone: (exit status, stderr).
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2, each owned once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    let out = Command::new(KILN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // Issue 18: `kiln show … | true` panicked with "failed printing to stdout: Broken pipe"
    // (exit 101): libostree's gpgme set SIGPIPE to "ignore" behind main's back. Now kiln
    // ends like other tools: killed by SIGPIPE (a shell shows 141), nothing on stderr.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = sysroot();
    let (repo, sr) = (s(&f.repo), s(&f.sysroot));
    for args in [
        vec!["show", "--repo", repo, REF],
        vec!["show", "--repo", repo, "--json", REF],
        vec!["log", "--repo", repo, REF],
        vec!["log", "--repo", repo, "--json", REF],
        vec!["status", "--sysroot", sr],
        vec!["status", "--sysroot", sr, "--json"],
        vec!["kargs", "--sysroot", sr],
        vec!["diff", "--repo", repo, REF, REF],
    ] {
        let (status, err) = into_closed_pipe(&args);
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} did not end by SIGPIPE ({status:?}):\n{err}"
        );
        assert!(err.is_empty(), "{args:?} printed on stderr:\n{err}");
    }
}

/// This process's children (all threads), with their command names.
fn children() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for p in list.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            v.push((
                p.parse().unwrap(),
                format!("{} {}", comm.trim(), state.trim()),
            ));
        }
    }
    v
}

#[test]
fn sysroot_commands_leave_no_child_behind() {
    // Issue 18: `kiln rollback --sysroot DIR` left a defunct `kiln` reparented to init per
    // run (libostree's fsfreeze watchdog daemonizes and nobody waits for it). As a child
    // subreaper, this test process inherits anything kiln leaves behind.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = sysroot();
    let (repo, sr) = (s(&f.repo), s(&f.sysroot));
    // SAFETY: prctl with integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    assert_eq!(children(), vec![], "children before the test");
    for args in [
        vec!["rollback", "--sysroot", sr],
        vec!["rollback", "--sysroot", sr],
        vec!["deploy", "--sysroot", sr, "--repo", repo, REF],
        vec!["kargs", "--sysroot", sr, "--append", "quiet"],
        vec!["kargs", "--sysroot", sr, "--in-place", "--append", "x=1"],
        vec!["pin", "1", "--sysroot", sr],
        vec!["unpin", "1", "--sysroot", sr],
        vec!["cleanup", "--sysroot", sr],
    ] {
        let out = Command::new(KILN).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Give a leftover a moment to be reparented here.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let left = children();
        // Reap them so the next command is judged on its own.
        for (p, _) in &left {
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(*p, std::ptr::null_mut(), 0) };
        }
        assert_eq!(left, vec![], "kiln {args:?} left children behind");
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
}
