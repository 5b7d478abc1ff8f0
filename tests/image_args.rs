//! `kiln image` (disk, ISO, PXE) and `kiln verify-reproducible` refuse bad values at the
//! door: exit 2, the option named, nothing created, before the repository is even opened
//! (the repository given here does not exist). No VM, no compose.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs kiln with `args`, killing it if it has not answered within 20 s (a FIFO must not
/// block it). Returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = c.kill();
            panic!("kiln {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kiln image` on a missing repo with `extra`; asserts exit 2, `command line: KEY:` (or
/// `want`) and each of `msgs` in stderr, and that the output directory was not made.
fn refused(extra: &[&str], want: &str, msgs: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out/x.raw");
    let repo = d.path().join("no-repo");
    let mut args = vec![
        "image",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        "kiln/test",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(2), "{extra:?}: {stderr}");
    assert!(
        stderr.contains(want),
        "{extra:?}: expected {want:?} in:\n{stderr}"
    );
    for m in msgs {
        assert!(
            stderr.contains(m),
            "{extra:?}: expected {m:?} in:\n{stderr}"
        );
    }
    assert!(!d.path().join("out").exists(), "output dir created");
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn kernel_arguments() {
    refused(
        &["--karg", "a b"],
        "command line: --karg: ",
        &["whitespace"],
    );
    refused(
        &["--karg", "a=b\nc"],
        "command line: --karg: ",
        &["whitespace"],
    );
    refused(
        &["--karg", ""],
        "command line: --karg: ",
        &["empty kernel argument"],
    );
    refused(
        &["--karg", "quiet", "--karg", "ostree=/x"],
        "command line: --karg: ",
        &["managed by kiln"],
    );
    refused(&["--karg", "x='y'"], "command line: --karg: ", &["quotes"]);
    // Live media take the same rule.
    refused(
        &["--format", "pxe", "--karg", "a b"],
        "command line: --karg: ",
        &[],
    );
    refused(
        &["--format", "iso", "--karg", "console=ttyS0\t"],
        "command line: --karg: ",
        &[],
    );
}

#[test]
fn sizes_and_stateroots() {
    refused(&["--size", "0"], "command line: --size: ", &["zero"]);
    refused(
        &["--size", "4X"],
        "command line: --size: ",
        &["unknown unit"],
    );
    refused(
        &["--os", "../etc"],
        "command line: --os: ",
        &["invalid stateroot name"],
    );
    refused(&["--os", ""], "command line: --os: ", &[]);
}

#[test]
fn ignition_configs() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("config.ign");
    mkfifo(&fifo);
    refused(
        &["--ignition", fifo.to_str().unwrap()],
        "command line: --ignition: ",
        &["a FIFO"],
    );
    let bad = d.path().join("bad.ign");
    std::fs::write(&bad, "{\"ignition\": ").unwrap();
    refused(
        &["--ignition", bad.to_str().unwrap()],
        "bad.ign",
        &["not JSON"],
    );
    let dir = d.path().join("dir.ign");
    std::fs::create_dir(&dir).unwrap();
    refused(
        &["--ignition", dir.to_str().unwrap()],
        "command line: --ignition: ",
        &["a directory"],
    );
}

#[test]
fn remotes_and_keys() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("key.gpg");
    mkfifo(&fifo);
    refused(
        &[
            "--remote",
            "origin=https://updates.example.com/repo",
            "--remote-gpg-key",
            fifo.to_str().unwrap(),
        ],
        "command line: --remote-gpg-key: ",
        &["a FIFO"],
    );
    refused(&["--remote", "origin=ftp://x/repo"], "", &["ftp"]);
}

#[test]
fn verify_reproducible_values() {
    let d = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--size", "0"], "command line: --size: "),
        (vec!["--format", "vhd"], "command line: --format: "),
    ] {
        let work = d.path().join("w");
        let mut a = vec![
            "verify-reproducible",
            "recipes/base.toml",
            "--work-dir",
            work.to_str().unwrap(),
        ];
        a.extend(args);
        let (code, stderr) = run(&a);
        assert_eq!(code, Some(2), "{a:?}: {stderr}");
        assert!(stderr.contains(want), "{a:?}: {stderr}");
        assert!(!work.exists(), "work dir created");
    }
}
