//! What the benches share (`mod common;` in each): the project's paths, the `kiln` binary
//! run with its stderr shown, the composed base commit, timing and peak-RSS helpers, and
//! the cleanup of temp sysroots. Each bench uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

/// etcd clusters, `kiln fleetlock serve` and a request load, shared with the tests.
#[path = "../../tests/common/fleetlock.rs"]
pub mod fleetlock;

/// The `kiln` binary built for this bench run.
pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo test --benches` runs each bench with `--list`; there is nothing to list.
pub fn listing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The recipe the benches compose: `KILN_BENCH_RECIPE`, else `recipes/base.toml`.
pub fn bench_recipe() -> PathBuf {
    std::env::var_os("KILN_BENCH_RECIPE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("recipes/base.toml"))
}

/// Runs `kiln args` with its stderr shown and asserts success: (stdout, seconds).
pub fn kiln_timed(args: &[&str]) -> (String, f64) {
    let t = Instant::now();
    let out = std::process::Command::new(KILN)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running kiln");
    assert!(out.status.success(), "kiln {args:?} failed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        t.elapsed().as_secs_f64(),
    )
}

/// [`kiln_timed`] for a command run with `--json`: (parsed stdout, seconds).
pub fn kiln_json(args: &[&str]) -> (serde_json::Value, f64) {
    let (out, secs) = kiln_timed(args);
    let v = serde_json::from_str(&out).expect("kiln --json output");
    (v, secs)
}

/// The base commit for the image benches: [`bench_recipe`] composed into `build/repo`
/// (cache `build/cache`; an unchanged recipe makes it a no-change skip), and the bench's
/// output directory.
pub struct Base {
    /// `build/<name>`, created.
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub ref_: String,
}

impl Base {
    /// The start of an image bench: `None` under `--list` (nothing is done); else
    /// `build/<name>` (emptied first when `fresh`) and the composed base commit.
    pub fn start(name: &str, fresh: bool) -> Option<Base> {
        if listing() {
            return None;
        }
        let dir = root().join("build").join(name);
        if fresh {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).unwrap();
        let repo = root().join("build/repo");
        let cache = root().join("build/cache");
        let (c, _) = kiln_json(&[
            "compose",
            bench_recipe().to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
        ]);
        let ref_ = c["ref"].as_str().expect("ref").to_string();
        Some(Base { dir, repo, ref_ })
    }

    /// `kiln image --repo REPO --ref REF args…` (`args` include `--json`): (output,
    /// seconds).
    pub fn image(&self, args: &[&str]) -> (serde_json::Value, f64) {
        let mut a = vec![
            "image",
            "--repo",
            self.repo.to_str().unwrap(),
            "--ref",
            &self.ref_,
        ];
        a.extend_from_slice(args);
        kiln_json(&a)
    }
}

/// Runs a command to completion and returns (stdout, seconds, peak RSS in MiB of it and
/// its descendants) using wait4.
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut std::process::Command) -> (Vec<u8>, f64, f64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let t = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; the pid is our child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(r, child.id() as libc::pid_t, "wait4");
    let st = std::process::ExitStatus::from_raw(status);
    assert!(st.success(), "{cmd:?} failed: {st}");
    (out, t.elapsed().as_secs_f64(), ru.ru_maxrss as f64 / 1024.0)
}

/// Peak RSS of this process so far, in MiB.
pub fn self_maxrss_mib() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// Seconds since `t`.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Clears libostree's immutable flag on deployment roots so a temp dir can be removed.
pub fn unlock_deployments(sysroot: &Path) {
    if let Ok(osdirs) = std::fs::read_dir(sysroot.join("ostree/deploy")) {
        for os in osdirs.flatten() {
            if let Ok(deps) = std::fs::read_dir(os.path().join("deploy")) {
                for d in deps.flatten().filter(|d| d.path().is_dir()) {
                    let _ = kiln::cmd::Cmd::new("chattr").arg("-i").arg(d.path()).run();
                }
            }
        }
    }
}

/// Registry, TLS and relay helpers, shared with the tests (tests/common/oci.rs).
#[path = "../../tests/common/oci.rs"]
pub mod oci;
