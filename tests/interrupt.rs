//! SIGINT and SIGTERM during long commands: the process ends with 130 / 143, every
//! `.kiln-*` work directory is gone (libostree's immutable deployment directories
//! included) and no child process (mmdebstrap, mkfs, grub tools, …) is left running.
//! Real runs of the kiln binary on the composed base fixture; no VM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let st = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
        !matches!(st.split_whitespace().next(), Some("Z" | "X"))
    })
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Polls `ready` every 50 ms until it is true; panics (after killing `child`) when the
/// child exits first or `limit` passes.
fn wait_for(child: &mut Child, limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("kiln ended ({st}) before {what}");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("no {what} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig`, waits (at most two minutes) and returns the exit code, the descendants
/// seen just before the signal and stderr.
fn interrupt(mut child: Child, sig: i32) -> (Option<i32>, Vec<(i32, String)>, String) {
    let pid = child.id() as i32;
    let before: Vec<(i32, String)> = kiln::cleanup::descendants_of(pid)
        .into_iter()
        .map(|p| (p, comm(p)))
        .collect();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("kiln did not end within 2 minutes of signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), before, stderr)
}

fn assert_none_left(dir: &Path, prefix: &str, stderr: &str) {
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}\nstderr:\n{stderr}");
}

fn assert_children_gone(before: &[(i32, String)], stderr: &str) {
    // Give the kernel a moment to reap reparented processes.
    let start = Instant::now();
    while before.iter().any(|(p, _)| alive(*p)) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = before.iter().filter(|(p, _)| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "still running: {left:?}\nstderr:\n{stderr}"
    );
}

#[test]
fn sigint_during_image_removes_the_work_dir_and_stops_children() {
    let f = common::base_commit();
    let out = common::fixture_workdir("interrupt-image-");
    let child = Command::new(common::kiln_bin())
        .args(["image", "--repo"])
        .arg(&f.repo)
        .args(["--ref", &f.ref_, "--size", "3G", "--output"])
        .arg(out.path().join("x.raw"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    // Wait until the deployment is complete (its directory immutable) and /boot has been
    // split off: the work dir then holds a full sysroot.
    let bootfs_ready = || {
        std::fs::read_dir(out.path()).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(".kiln-image-")
                    && e.path().join("bootfs").is_dir()
            })
        })
    };
    wait_for(
        &mut child,
        Duration::from_secs(600),
        "split /boot",
        bootfs_ready,
    );
    let (code, before, stderr) = interrupt(child, libc::SIGINT);
    assert_eq!(code, Some(130), "stderr:\n{stderr}");
    assert!(stderr.contains("SIGINT"), "{stderr}");
    assert_none_left(out.path(), ".kiln-", &stderr);
    assert_children_gone(&before, &stderr);
}

#[test]
fn sigterm_during_compose_stops_mmdebstrap_and_removes_the_work_dir() {
    let work = common::fixture_workdir("interrupt-compose-");
    let cache = work.path().join("cache");
    let child = Command::new(common::kiln_bin())
        .arg("compose")
        .arg(common::base_recipe())
        .arg("--repo")
        .arg(work.path().join("repo"))
        .arg("--cache-dir")
        .arg(&cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let pid = child.id() as i32;
    // A fresh cache dir: the bootstrap really runs mmdebstrap.
    let bootstrapping = || {
        kiln::cleanup::descendants_of(pid)
            .iter()
            .any(|p| comm(*p) == "mmdebstrap")
    };
    wait_for(
        &mut child,
        Duration::from_secs(300),
        "mmdebstrap",
        bootstrapping,
    );
    // Let it get going (downloads, mounts in the target).
    std::thread::sleep(Duration::from_secs(3));
    let (code, before, stderr) = interrupt(child, libc::SIGTERM);
    assert_eq!(code, Some(143), "stderr:\n{stderr}");
    assert!(before.iter().any(|(_, c)| c == "mmdebstrap"), "{before:?}");
    assert_none_left(&cache.join("work"), "kiln-compose-", &stderr);
    assert_children_gone(&before, &stderr);
}
