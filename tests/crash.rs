//! Crash safety: kill `kiln` with SIGKILL at many moments during deploy, upgrade, rollback
//! and cleanup (named fault points and random delays). After every kill, `kiln status`
//! must work and the default boot entry (BLS and the GRUB menu) must point at a complete
//! deployment whose /usr matches its commit. Runs as root on a real temp sysroot.

mod common;

use common::*;
use kiln::deploy::safety::{FAULT_MARK, FAULT_POINT_ENV};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Distinct kill moments the test must reach.
const MIN_KILLS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Deploy,
    Upgrade,
    Rollback,
    Cleanup,
}

impl Op {
    fn points(self) -> &'static [&'static str] {
        match self {
            Op::Deploy => &[
                "deploy:locked",
                "deploy:pulled",
                "deploy:tree-written",
                "trial:env-written",
                "deploy:boot-written",
                "deploy:cleaned",
            ],
            Op::Upgrade => &[
                "upgrade:pulled",
                "deploy:tree-written",
                "trial:env-written",
                "deploy:boot-written",
                "deploy:cleaned",
            ],
            Op::Rollback => &["rollback:before-write", "rollback:written"],
            Op::Cleanup => &[
                "cleanup:before-write",
                "cleanup:written",
                "cleanup:prepared",
                "cleanup:pruned",
            ],
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn args(op: Op, f: &Fixture) -> Vec<String> {
    let sr = f.sysroot.display().to_string();
    let repo = f.repo.display().to_string();
    let v: Vec<&str> = match op {
        Op::Deploy => vec!["deploy", "--sysroot", &sr, "--repo", &repo, REF],
        Op::Upgrade => vec!["upgrade", "--sysroot", &sr, "--repo", &repo],
        Op::Rollback => vec!["rollback", "--sysroot", &sr],
        Op::Cleanup => vec!["cleanup", "-r", "--sysroot", &sr],
    };
    v.into_iter().map(String::from).collect()
}

fn status(f: &Fixture) -> Value {
    let out = duct::cmd(
        KILN,
        [
            "status".to_string(),
            "--json".into(),
            "--sysroot".into(),
            f.sysroot.display().to_string(),
        ],
    )
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()
    .unwrap();
    assert!(
        out.status.success(),
        "kiln status failed after a kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The invariant after any kill.
fn check(f: &Fixture) -> usize {
    let st = status(f);
    let commit = check_default_entry(&f.sysroot);
    assert_eq!(
        st["status"]["default"]["checksum"].as_str(),
        Some(commit.as_str()),
        "status and boot entries disagree on the default"
    );
    check_trial(f, &st);
    st["status"]["deployments"].as_array().unwrap().len()
}

/// The boot-counting block: absent, or a whole 1024-byte GRUB environment block; a trial
/// in it names the default deployment with every try left (nothing booted here), or a
/// deployment that is not the default (which GRUB ignores); never a half-written one.
fn check_trial(f: &Fixture, st: &Value) {
    use kiln::deploy::bootcount;
    let p = bootcount::env_path(&f.sysroot);
    let Ok(data) = std::fs::read(&p) else {
        return;
    };
    assert_eq!(data.len(), bootcount::ENV_SIZE, "torn {}", p.display());
    assert!(data.starts_with(bootcount::ENV_HEADER.as_bytes()));
    let t = bootcount::Env::parse(&data).trial();
    let d = &st["status"]["default"];
    let key = bootcount::key(
        d["checksum"].as_str().unwrap(),
        d["deploySerial"].as_i64().unwrap() as i32,
    );
    if t.is_pending(&key) {
        assert_eq!(t.tries, Some(bootcount::DEFAULT_TRIES), "{t:?}");
        assert_eq!(d["triesLeft"], bootcount::DEFAULT_TRIES, "{st}");
    } else {
        assert!(d.get("triesLeft").is_none(), "{st}");
    }
    // What GRUB does with it boots a listed deployment.
    let deps = st["status"]["deployments"].as_array().unwrap();
    let (boot, _) = bootcount::grub_step(&t, &key, deps.len() > 1);
    assert_eq!(boot, bootcount::Boot::Default, "{t:?}");
}

fn prepare(op: Op, f: &Fixture, version: &mut u32) {
    if op == Op::Upgrade {
        *version += 1;
        f.commit(*version);
    }
}

/// Runs `op` to completion (for timing and to move the sysroot along).
fn run_ok(op: Op, f: &Fixture) -> Duration {
    let t = Instant::now();
    let out = duct::cmd(KILN, args(op, f))
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .unwrap();
    assert!(
        out.status.success() || op == Op::Rollback,
        "{op:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Starts `op`, kills it at `point` (a named fault point) or after `delay`; returns true
/// when the kill hit a running process.
fn run_and_kill(op: Op, f: &Fixture, point: Option<&str>, delay: Duration) -> bool {
    let log = f.dir.path().join("kill.log");
    let _ = std::fs::remove_file(&log);
    let mut e = duct::cmd(KILN, args(op, f))
        .stderr_to_stdout()
        .stdout_path(&log)
        .unchecked();
    if let Some(p) = point {
        e = e.env(FAULT_POINT_ENV, p);
    }
    let h = e.start().unwrap();
    match point {
        Some(p) => {
            let want = format!("{FAULT_MARK} {p}");
            let t = Instant::now();
            loop {
                if std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(&want)
                {
                    break;
                }
                if h.try_wait().unwrap().is_some() {
                    // Finished (or failed) without passing the point.
                    return false;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "{op:?} never reached {p}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        None => std::thread::sleep(delay),
    }
    h.kill().unwrap();
    let out = h.wait().unwrap();
    out.status.signal() == Some(libc::SIGKILL)
}

/// `kiln health forget` killed at any moment leaves the record of rejections whole: the
/// old one or the new one.
#[test]
fn sigkill_during_forget_leaves_a_whole_rejection_record() {
    use kiln::deploy::trial::{self, Failure, Rejection, Rejections};
    let f = Fixture::new();
    f.commit(1);
    run_ok(Op::Deploy, &f);
    let os = "kiln";
    let mut r = Rejections::default();
    for c in ["a", "b", "c"] {
        r.add(Rejection {
            commit: c.repeat(64),
            version: None,
            time: 1,
            time_utc: String::new(),
            failure: Failure {
                unit: Some("web.service".into()),
                reason: "web.service is failed".into(),
                log: vec!["x".repeat(2000); 20],
            },
        });
    }
    let sr = f.sysroot.display().to_string();
    let path = kiln::deploy::last_check::state_dir(&f.sysroot, os).join(trial::REJECTED);
    trial::save_rejections(&f.sysroot, os, &r).unwrap();
    for i in 0..8u64 {
        let before = trial::rejections(&f.sysroot, os);
        if before.rejected.is_empty() {
            trial::save_rejections(&f.sysroot, os, &r).unwrap();
            continue;
        }
        let c = before.rejected[0].commit.clone();
        let h = duct::cmd(
            KILN,
            ["health", "forget", "--sysroot", &sr, "--os", os, &c[..8]],
        )
        .stderr_capture()
        .stdout_capture()
        .unchecked()
        .start()
        .unwrap();
        // Kill at a moment that moves along the run.
        std::thread::sleep(Duration::from_micros(i * 700));
        let _ = h.kill();
        let _ = h.wait();
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str::<Value>(&text).expect("a torn rejected.json");
        let now = trial::rejections(&f.sysroot, os);
        let forgot = now.rejected.len() + 1 == before.rejected.len() && !now.contains(&c);
        assert!(now == before || forgot, "{now:?} after a kill");
    }
    // Uninterrupted, it forgets; an unknown commit is a usage error.
    trial::save_rejections(&f.sysroot, os, &r).unwrap();
    let (code, _, err) = kiln(&["health", "forget", "--sysroot", &sr, "--os", os, "cccccccc"]);
    assert_eq!(code, 0, "{err}");
    assert!(!trial::rejections(&f.sysroot, os).contains(&"c".repeat(64)));
    let (code, _, err) = kiln(&["health", "forget", "--sysroot", &sr, "--os", os, "cccccccc"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn sigkill_at_many_moments_leaves_a_bootable_sysroot() {
    let f = Fixture::new();
    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: {seed} (set KILN_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let mut version = 1;
    f.commit(version);
    // Uninterrupted runs: a baseline and each operation's duration.
    let mut dur = std::collections::BTreeMap::new();
    run_ok(Op::Deploy, &f);
    for op in [
        Op::Deploy,
        Op::Upgrade,
        Op::Rollback,
        Op::Cleanup,
        Op::Deploy,
    ] {
        prepare(op, &f, &mut version);
        dur.insert(op, run_ok(op, &f));
        check(&f);
    }
    eprintln!("uninterrupted durations: {dur:?}");

    let cycle = [
        Op::Deploy,
        Op::Upgrade,
        Op::Rollback,
        Op::Upgrade,
        Op::Cleanup,
    ];
    let mut named: Vec<(Op, &str)> = Vec::new();
    for op in cycle {
        for p in op.points() {
            if !named.contains(&(op, p)) {
                named.push((op, p));
            }
        }
    }
    // Distinct moments at which a running kiln was killed, and named points tried.
    let mut moments: BTreeSet<String> = BTreeSet::new();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut per_op = std::collections::BTreeMap::<Op, usize>::new();
    let mut i = 0usize;
    while moments.len() < MIN_KILLS {
        assert!(
            i < 400,
            "only {} effective kills after {i} tries",
            moments.len()
        );
        let op = cycle[i % cycle.len()];
        i += 1;
        // Rollback needs two deployments; deploy first when cleanup left one.
        if op == Op::Rollback && check(&f) < 2 {
            run_ok(Op::Deploy, &f);
        }
        prepare(op, &f, &mut version);
        // First every named point once, then random moments.
        let untried = named
            .iter()
            .position(|(o, p)| *o == op && !tried.contains(&format!("{o:?}@{p}")));
        let (point, delay, key) = match untried {
            Some(n) => {
                let p = named[n].1;
                (Some(p), Duration::ZERO, format!("{op:?}@{p}"))
            }
            None => {
                let max = dur[&op].as_micros() as u64 + 1;
                let us = rng.next() % max;
                (None, Duration::from_micros(us), format!("{op:?}+{us}us"))
            }
        };
        let killed = run_and_kill(op, &f, point, delay);
        check(&f);
        // A point not on this run's path (e.g. nothing to remove) counts as tried too.
        tried.insert(key.clone());
        if killed {
            *per_op.entry(op).or_default() += 1;
            moments.insert(key);
        }
    }
    eprintln!("effective kills per operation: {per_op:?}");
    for op in [Op::Deploy, Op::Upgrade, Op::Rollback, Op::Cleanup] {
        assert!(
            per_op.get(&op).copied().unwrap_or(0) >= 3,
            "too few kills during {op:?}: {per_op:?}"
        );
    }
    let named_hit = moments.iter().filter(|m| m.contains('@')).count();
    eprintln!(
        "{} distinct kill moments, {named_hit} of them at named points",
        moments.len()
    );
    assert!(named_hit >= 12, "named points reached: {moments:?}");

    // Everything still works afterwards, cleanup removes the debris of killed runs, and
    // every object in the repo is intact.
    prepare(Op::Upgrade, &f, &mut version);
    run_ok(Op::Upgrade, &f);
    run_ok(Op::Rollback, &f);
    run_ok(Op::Cleanup, &f);
    check(&f);
    let st = status(&f);
    let listed: BTreeSet<String> = st["status"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            Path::new(d["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(f.sysroot.join("ostree/deploy/kiln/deploy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".origin"))
        .collect();
    assert_eq!(
        listed, on_disk,
        "cleanup left unlisted deployment directories"
    );
    kiln::cmd::Cmd::new("ostree")
        .arg(format!(
            "--repo={}",
            f.sysroot.join("ostree/repo").display()
        ))
        .arg("fsck")
        .run()
        .unwrap();
}
