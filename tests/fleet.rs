//! Fleet updates end to end on this machine (run as root): `kiln publish` into archive
//! repos served by a real nginx bound to 127.0.0.1, a temp sysroot following that server
//! with `kiln remote add` / `kiln upgrade`, static deltas, GPG signatures, refusals and an
//! interrupted pull; automatic updates following the policy. No address but 127.0.0.1 is
//! ever contacted. A VM following such a server: tests/vm_fleet.rs.

mod common;

use common::fleet::{commit_with_policy, free_port, s, wait_port, Env, Gpg, Nginx};
use common::{check_default_entry, kiln, kiln_ok, KVER, REF};
use kiln::cmd::Cmd;
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use ostree::prelude::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Deterministic incompressible bytes (xorshift), so the delta ratio means something.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A bootable synthetic OS: 400 unchanged files of 16 KiB (6.4 MiB, incompressible) and
/// one "package" (`tool`, 8 files of 4 KiB) that changes with every version.
fn commit_version(build: &Path, work: &Path, v: u32) -> String {
    commit_version_sized(build, work, v, 8, 4096)
}

/// [`commit_version`] with a `tool` of `files` files of `size` bytes.
fn commit_version_sized(build: &Path, work: &Path, v: u32, files: u64, size: usize) -> String {
    let t = work.join(format!("tree-{v}"));
    let _ = std::fs::remove_dir_all(&t);
    let m = t.join("usr/lib/modules").join(KVER);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(t.join("usr/etc")).unwrap();
    std::fs::create_dir_all(t.join("usr/share/bulk")).unwrap();
    std::fs::create_dir_all(t.join("usr/lib/tool")).unwrap();
    std::fs::write(m.join("vmlinuz"), "kernel\n").unwrap();
    std::fs::write(m.join("initramfs.img"), "initramfs\n").unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        format!("ID=kiln\nVERSION_ID={v}\n"),
    )
    .unwrap();
    std::fs::write(t.join("usr/etc/hostname"), "kiln\n").unwrap();
    for i in 0..400u64 {
        std::fs::write(
            t.join(format!("usr/share/bulk/{i:03}.bin")),
            noise(i + 1, 16384),
        )
        .unwrap();
    }
    for i in 0..files {
        std::fs::write(
            t.join(format!("usr/lib/tool/part{i}")),
            noise(1000 * u64::from(v) + i, size),
        )
        .unwrap();
    }
    let r = repo::open(build).unwrap();
    let res = repo::commit_dir(
        &r,
        &t,
        &CommitOptions {
            ref_: REF.into(),
            timestamp: 1_700_000_000 + u64::from(v) * 86400,
            subject: Some(format!("v{v}")),
            metadata: vec![
                (keys::VERSION.into(), MetaValue::Str(format!("{v}.0"))),
                (
                    keys::PACKAGES.into(),
                    MetaValue::StrList(vec!["base-files=12.4".into(), format!("tool=1.{v}")]),
                ),
                (
                    keys::KARGS.into(),
                    MetaValue::StrList(vec!["root=LABEL=root".into(), "rw".into()]),
                ),
            ],
            bootable: true,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&t).unwrap();
    res.checksum
}

/// A tiny HTTP/1.0 file server on 127.0.0.1 that logs `DONE path` for every file sent
/// completely and, when `cut_after` is Some(n), serves n objects or delta parts, sends
/// half of the next one, drops the connection and exits — a server dying mid-pull.
fn python_server(root: &Path, port: u16, cut_after: Option<u32>, log: &Path) -> duct::Handle {
    let script = r#"
import http.server, os, sys, threading
root, port, cut = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
served = [0]
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def do_GET(self):
        p = os.path.join(root, self.path.lstrip("/").split("?")[0])
        if not os.path.isfile(p):
            self.send_error(404); return
        data = open(p, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        big = self.path.startswith("/deltas/") or self.path.startswith("/objects/")
        with lock:
            n = served[0]
            if big: served[0] += 1
        if cut >= 0 and big and n >= cut:
            self.wfile.write(data[: len(data) // 2]); self.wfile.flush()
            sys.stderr.write("CUT %s\n" % self.path); sys.stderr.flush()
            os._exit(0)
        self.wfile.write(data); self.wfile.flush()
        sys.stderr.write("DONE %s\n" % self.path); sys.stderr.flush()
http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;
    let h = Cmd::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root)
        .arg(port.to_string())
        .arg(
            cut_after
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-1".into()),
        )
        .spawn_logged(log)
        .unwrap();
    wait_port(port);
    h
}

/// Size in the archive repo of every object of `commit`: what a full pull downloads.
fn full_commit_bytes(repo_dir: &Path, commit: &str) -> u64 {
    let r = repo::open(repo_dir).unwrap();
    let objs = r
        .traverse_commit(commit, 0, ostree::gio::Cancellable::NONE)
        .unwrap();
    let mut total = 0;
    for o in objs {
        let (csum, kind) = (o.checksum(), o.object_type());
        let ext = match kind {
            ostree::ObjectType::File => "filez",
            ostree::ObjectType::DirTree => "dirtree",
            ostree::ObjectType::DirMeta => "dirmeta",
            ostree::ObjectType::Commit => "commit",
            _ => continue,
        };
        let p = repo_dir
            .join("objects")
            .join(&csum[..2])
            .join(format!("{}.{ext}", &csum[2..]));
        total += std::fs::metadata(&p).unwrap().len();
    }
    total
}

fn default_checksum(st: &Value) -> String {
    st["status"]["default"]["checksum"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn publish_serve_upgrade_through_delta_refusals_and_interruption() {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let key = Gpg::new(env.dir.path(), "release");
    let other = Gpg::new(env.dir.path(), "stranger");
    let srv = env.path("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let sign = [
        "--gpg-sign",
        key.fpr.as_str(),
        "--gpg-homedir",
        s(&key.home),
    ];
    let with_deltas = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = sign.iter().map(|x| x.to_string()).collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };

    // v1 published, signed.
    let c1 = commit_version(&env.build, &work, 1);
    let a: Vec<String> = with_deltas(&["--deltas-from-previous", "2"]);
    let av: Vec<&str> = a.iter().map(String::as_str).collect();
    let p1 = env.publish("srv/good", &av);
    assert_eq!(p1["refs"][0]["to"], c1.as_str());
    assert_eq!(p1["signed"][0], c1.as_str());
    assert_eq!(p1["summarySigned"], true);
    let good = srv.join("good");
    assert!(good.join("summary.sig").is_file());

    let nginx = Nginx::start(env.dir.path(), &srv);
    env.remote(&nginx.url("good"), Some(&key.public));
    let remotes: Value = serde_json::from_str(&kiln_ok(&[
        "remote",
        "list",
        "--sysroot",
        s(&env.sysroot),
        "--json",
    ]))
    .unwrap();
    assert_eq!(remotes[0]["name"], "origin");
    assert_eq!(remotes[0]["gpgVerify"], true);
    assert_eq!(remotes[0]["hasKeys"], true);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&env.sysroot),
        "--remote",
        "origin",
        REF,
    ]);
    assert_eq!(check_default_entry(&env.sysroot), c1);
    nginx.take_log();

    // v2: one package changed; published with a delta from v1.
    let c2 = commit_version(&env.build, &work, 2);
    let p2 = env.publish("srv/good", &av);
    assert_eq!(p2["refs"][0]["from"], c1.as_str());
    assert_eq!(p2["deltasAdded"][0]["name"], format!("{c1}-{c2}"));
    assert!(
        p2["objectsAdded"].as_u64().unwrap() < 40,
        "only the changed package's objects are new: {p2}"
    );

    // --check reports without deploying.
    let before = env.snapshot();
    let (code, out, err) = kiln(&["upgrade", "--check", "--sysroot", s(&env.sysroot), "--json"]);
    assert_eq!(code, 77, "{out}\n{err}");
    let chk: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(chk["result"], "available");
    assert_eq!(chk["to"], c2.as_str());
    assert_eq!(env.snapshot(), before);
    nginx.take_log();

    // The upgrade goes through the delta: a few percent of the full commit.
    let (code, out, err) = env.upgrade();
    assert_eq!(code, 0, "{out}\n{err}");
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["result"], "deployed");
    assert_eq!(up["outcome"]["commit"], c2.as_str());
    assert_eq!(up["pull"]["deltaUsed"], true, "{up}");
    assert_eq!(check_default_entry(&env.sysroot), c2);
    let (reqs, served) = nginx.take_log();
    let full = full_commit_bytes(&good, &c2);
    eprintln!(
        "upgrade v1 -> v2: {served} bytes served, full commit {full} bytes ({:.2}%), {} requests; libostree counted {}",
        served as f64 * 100.0 / full as f64,
        reqs.len(),
        up["pull"]["bytesTransferred"]
    );
    assert!(
        reqs.iter()
            .any(|r| r.contains("/deltas/") && r.ends_with(" 200")),
        "{reqs:?}"
    );
    assert!(
        served * 100 <= full * 5,
        "served {served} bytes > 5% of the full commit ({full}): {reqs:?}"
    );

    // Rollback returns to v1; v1 is the default again.
    kiln_ok(&["rollback", "--sysroot", s(&env.sysroot)]);
    assert_eq!(check_default_entry(&env.sysroot), c1);
    assert_eq!(default_checksum(&env.status()), c1);

    // v3 for the refusal scenarios, each published to its own directory.
    let c3 = commit_version(&env.build, &work, 3);
    let stranger = [
        "--gpg-sign",
        other.fpr.as_str(),
        "--gpg-homedir",
        s(&other.home),
    ];
    env.publish("srv/stranger", &stranger);
    env.publish("srv/unsigned", &[]);
    // Summary signed by the trusted key, commits by a stranger or by nobody.
    env.publish("srv/stranger-commit", &stranger);
    env.publish("srv/unsigned-commit", &[]);
    for d in ["stranger-commit", "unsigned-commit"] {
        Cmd::new("ostree")
            .arg(format!("--repo={}", srv.join(d).display()))
            .args(["summary", "--update"])
            .arg(format!("--gpg-sign={}", key.fpr))
            .arg(format!("--gpg-homedir={}", key.home.display()))
            .run()
            .unwrap();
    }
    env.publish("srv/tampered", &av);
    env.publish("srv/missing", &av);
    // Tampered: every object of the changed package altered, and (with deltas) every
    // delta part.
    let no_deltas = with_deltas(&["--deltas-from-previous", "0"]);
    let no_deltas: Vec<&str> = no_deltas.iter().map(String::as_str).collect();
    env.publish("srv/tampered-objects", &no_deltas);
    tamper(&srv.join("tampered"), &c3);
    tamper(&srv.join("tampered-objects"), &c3);
    // Missing: the summary names v3, whose commit object is gone from the server (and
    // the deltas to it, which carry the commit object too).
    let missing = srv.join("missing");
    std::fs::remove_dir_all(missing.join("deltas")).unwrap();
    std::fs::remove_file(
        missing
            .join("objects")
            .join(&c3[..2])
            .join(format!("{}.commit", &c3[2..])),
    )
    .unwrap();

    // "missing" first: a commit object that an earlier (refused) pull left in the
    // sysroot's repo would legitimately make the server's copy unnecessary.
    let refusals: [(&str, Option<&Path>, &[&str]); 7] = [
        ("missing", Some(&key.public), &["does not have"]),
        ("stranger", Some(&key.public), &["trusted", "key"]),
        ("stranger-commit", Some(&key.public), &["trusted", "key"]),
        ("unsigned", Some(&key.public), &["not signed"]),
        ("unsigned-commit", Some(&key.public), &["not signed"]),
        ("tampered", Some(&key.public), &["tampered"]),
        ("tampered-objects", Some(&key.public), &["tampered"]),
    ];
    for (dir, k, words) in refusals {
        env.remote(&nginx.url(dir), k);
        let before = env.snapshot();
        let (code, out, err) = env.upgrade();
        eprintln!("{dir}: {err}");
        assert_ne!(code, 0, "{dir}: upgrade must be refused:\n{out}\n{err}");
        assert!(
            err.contains(&c3),
            "{dir}: the message names the commit:\n{err}"
        );
        for w in words {
            assert!(err.contains(w), "{dir}: the message says why ({w}):\n{err}");
        }
        assert_eq!(env.snapshot(), before, "{dir}: the sysroot changed");
        assert_eq!(check_default_entry(&env.sysroot), c1);
    }

    // Interruption: v3 served object by object (no deltas) by a server that dies after
    // a few objects, mid-transfer of the next.
    env.publish("srv/good", &av);
    env.publish("srv/plain", &no_deltas);
    let plain = srv.join("plain");
    let port = free_port();
    env.remote(&format!("http://127.0.0.1:{port}/"), Some(&key.public));
    let log1 = env.path("py1.log");
    let h = python_server(&plain, port, Some(6), &log1);
    let before = env.snapshot();
    let (code, out, err) = env.upgrade();
    let _ = h.kill();
    let _ = h.wait();
    let served1 = std::fs::read_to_string(&log1).unwrap();
    assert!(
        served1.contains("CUT "),
        "the server did not cut:\n{served1}"
    );
    assert_ne!(
        code, 0,
        "pull through a dying server succeeded:\n{out}\n{err}"
    );
    assert_eq!(
        env.snapshot(),
        before,
        "a deployment was made from a partial pull"
    );
    let log2 = env.path("py2.log");
    let h2 = python_server(&plain, port, None, &log2);
    let (code, out, err) = env.upgrade();
    let _ = h2.kill();
    assert_eq!(code, 0, "{out}\n{err}");
    // Resumed: objects received completely before the cut are not downloaded again.
    let done = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("DONE /objects/"))
            .filter(|p| p.ends_with(".filez") || p.ends_with(".dirtree"))
            .map(String::from)
            .collect()
    };
    let first = done(&served1);
    let second = done(&std::fs::read_to_string(&log2).unwrap());
    eprintln!("before the cut: {first:?}\nafter: {second:?}");
    assert!(!first.is_empty() && !second.is_empty());
    for o in &first {
        assert!(
            !second.contains(o),
            "{o} was downloaded again after the interruption"
        );
    }
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["outcome"]["commit"], c3.as_str());
    assert_eq!(check_default_entry(&env.sysroot), c3);
    Cmd::new("ostree")
        .arg(format!(
            "--repo={}",
            env.sysroot.join("ostree/repo").display()
        ))
        .arg("fsck")
        .run()
        .unwrap();

    // Retention on the server: keep 2 drops v1 and its deltas.
    let mut keep = av.clone();
    keep.extend_from_slice(&["--keep", "2"]);
    let pk = env.publish("srv/good", &keep);
    assert_eq!(pk["commitsPruned"][0], c1.as_str(), "{pk}");
    assert!(pk["deltasPruned"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d.as_str().unwrap().starts_with(&c1)));
    drop(nginx);
    std::io::stderr().flush().unwrap();
}

/// Flips a byte in every object of `usr/lib/tool` of `commit` and in every delta part.
fn tamper(repo_dir: &Path, commit: &str) {
    let dest = repo::open(repo_dir).unwrap();
    let (tree, _) = dest
        .read_commit(commit, ostree::gio::Cancellable::NONE)
        .unwrap();
    let tool = tree.resolve_relative_path("usr/lib/tool");
    let en = tool
        .enumerate_children(
            "standard::name",
            ostree::gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            ostree::gio::Cancellable::NONE,
        )
        .unwrap();
    let mut n = 0;
    while let Some(info) = en.next_file(ostree::gio::Cancellable::NONE).unwrap() {
        let f = tool
            .child(info.name())
            .downcast::<ostree::RepoFile>()
            .unwrap();
        f.ensure_resolved().unwrap();
        let csum = f.checksum().to_string();
        flip(
            &repo_dir
                .join("objects")
                .join(&csum[..2])
                .join(format!("{}.filez", &csum[2..])),
        );
        n += 1;
    }
    assert_eq!(n, 8);
    for e in walkdir(&repo_dir.join("deltas")) {
        if e.file_name().unwrap() != "superblock" {
            flip(&e);
        }
    }
}

fn flip(p: &Path) {
    let mut data = std::fs::read(p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(p, data).unwrap();
}

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walkdir(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn automatic_updates_follow_the_policy_and_report_in_status() {
    use kiln::updates::{Mode, Reboot, Updates, Window};
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let check = Updates {
        mode: Mode::Check,
        random_delay: 600,
        ..Default::default()
    };
    let c1 = commit_with_policy(&env.build, &work, 1, &check);
    env.publish("pub", &[]);
    let url = format!("file://{}", env.path("pub").display());
    env.remote(&url, None);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&env.sysroot),
        "--remote",
        "origin",
        REF,
    ]);
    let auto = || {
        let (code, out, err) = kiln(&["upgrade", "--auto", "--sysroot", s(&env.sysroot), "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let r = auto();
    assert_eq!(
        (r["mode"].as_str(), r["result"].as_str()),
        (Some("check"), Some("upToDate"))
    );

    let c2 = commit_with_policy(&env.build, &work, 2, &check);
    env.publish("pub", &[]);
    let before = env.snapshot();
    let r = auto();
    assert_eq!(r["result"], "available");
    assert_eq!(r["to"], c2.as_str());
    assert_eq!(env.snapshot(), before, "mode check changed the sysroot");
    let st = env.status();
    assert_eq!(
        st["status"]["lastUpdateCheck"]["result"], "available",
        "{st}"
    );
    let text = kiln_ok(&["status", "--sysroot", s(&env.sysroot)]);
    assert!(text.contains("Last automatic update check"), "{text}");

    // An administrator's override in the deployment's /etc: apply, reboot in a window
    // that is not now.
    let dep = env
        .sysroot
        .join(st["status"]["default"]["path"].as_str().unwrap());
    std::fs::create_dir_all(dep.join("etc/kiln")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let not_today = kiln::updates::DAYS[(((now / 86400) + 3 + 3) % 7) as usize];
    let apply = Updates {
        mode: Mode::Apply,
        reboot: Reboot::Window,
        window: Some(Window {
            days: vec![not_today.into()],
            start: "00:00".into(),
            length: 3600,
        }),
        random_delay: 0,
        ..Default::default()
    };
    std::fs::write(
        dep.join("etc/kiln/updates.toml"),
        toml::to_string(&apply).unwrap(),
    )
    .unwrap();
    let r = auto();
    assert_eq!(r["result"], "deployed", "{r}");
    assert_eq!(r["reboot"], "waitingForWindow", "{r}");
    assert_eq!(check_default_entry(&env.sysroot), c2);
    assert_eq!(env.status()["status"]["lastUpdateCheck"]["to"], c2.as_str());
    let _ = c1;
}

/// `upgrade --check` previews an update before downloading it: the package diff and the
/// size of the static delta (a dry run of the pull reads only the summary and the delta's
/// superblock); the upgrade then downloads within 10 % of that.
#[test]
fn upgrade_check_previews_packages_and_download_size() {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let srv = env.path("srv");
    std::fs::create_dir_all(&srv).unwrap();
    // A tool of 64 x 16 KiB that changes completely between versions.
    let c1 = commit_version_sized(&env.build, &work, 1, 64, 16384);
    env.publish("srv/p", &[]);
    let nginx = Nginx::start(env.dir.path(), &srv);
    env.remote(&nginx.url("p"), None);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&env.sysroot),
        "--remote",
        "origin",
        REF,
    ]);
    assert_eq!(check_default_entry(&env.sysroot), c1);
    let c2 = commit_version_sized(&env.build, &work, 2, 64, 16384);
    let p2 = env.publish("srv/p", &[]);
    assert_eq!(p2["deltasAdded"][0]["name"], format!("{c1}-{c2}"));
    nginx.take_log();

    let (code, out, err) = kiln(&["upgrade", "--check", "--sysroot", s(&env.sysroot), "--json"]);
    assert_eq!(code, 77, "{out}\n{err}");
    let chk: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(chk["result"], "available");
    assert_eq!(chk["to"], c2.as_str());
    assert_eq!(
        chk["packages"],
        serde_json::json!({"added": [], "removed": [],
            "changed": [{"name": "tool", "from": "1.1", "to": "1.2"}]})
    );
    let estimate = chk["downloadBytes"].as_u64().expect("no download size");
    let (_, checked) = nginx.take_log();
    // The human form says the same.
    let (code, out, _) = kiln(&["upgrade", "--check", "--sysroot", s(&env.sysroot)]);
    assert_eq!(code, 77);
    assert!(out.contains("changed  tool 1.1 -> 1.2"), "{out}");
    assert!(
        out.contains("Download: ") && out.contains("static delta"),
        "{out}"
    );
    nginx.take_log();

    let (code, out, err) = env.upgrade();
    assert_eq!(code, 0, "{out}\n{err}");
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["pull"]["deltaUsed"], true, "{up}");
    let (reqs, served) = nginx.take_log();
    eprintln!(
        "estimate {estimate} bytes; the check itself was served {checked}; the upgrade was \
         served {served} ({} requests), libostree counted {}",
        reqs.len(),
        up["pull"]["bytesTransferred"]
    );
    assert!(
        checked * 10 < estimate,
        "the check downloaded {checked} bytes"
    );
    let diff = served.abs_diff(estimate);
    assert!(
        diff * 10 <= served,
        "estimate {estimate} vs {served} bytes served: more than 10 % apart"
    );
    assert_eq!(chk["downloadFrom"], "staticDelta", "{chk}");

    // Without a static delta: the sizes of the objects the machine lacks.
    let c3 = commit_version_sized(&env.build, &work, 3, 64, 16384);
    let p3 = env.publish("srv/p", &["--deltas-from-previous", "0"]);
    assert_eq!(p3["deltasAdded"], serde_json::json!([]), "{p3}");
    nginx.take_log();
    let (code, out, err) = kiln(&["upgrade", "--check", "--sysroot", s(&env.sysroot), "--json"]);
    assert_eq!(code, 77, "{out}\n{err}");
    let chk: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(chk["to"], c3.as_str());
    assert_eq!(chk["downloadFrom"], "objects", "{chk}");
    let estimate = chk["downloadBytes"].as_u64().expect("no download size");
    let (_, checked) = nginx.take_log();
    let (code, out, _) = kiln(&["upgrade", "--check", "--sysroot", s(&env.sysroot)]);
    assert_eq!(code, 77);
    assert!(out.contains("(objects not on this machine)"), "{out}");
    nginx.take_log();
    let (code, out, err) = env.upgrade();
    assert_eq!(code, 0, "{out}\n{err}");
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["pull"]["deltaUsed"], false, "{up}");
    let (reqs, served) = nginx.take_log();
    eprintln!(
        "no delta: estimate {estimate} bytes; the check was served {checked}; the upgrade \
         {served} ({} requests)",
        reqs.len()
    );
    assert!(
        checked * 10 < estimate,
        "the check downloaded {checked} bytes"
    );
    assert!(
        served.abs_diff(estimate) * 10 <= served,
        "estimate {estimate} vs {served} bytes served: more than 10 % apart"
    );
    assert_eq!(check_default_entry(&env.sysroot), c3);
}
