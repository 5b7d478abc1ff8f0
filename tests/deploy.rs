//! Deployment tests on real temp sysroots through libostree (run as root). The CLI-level
//! tests drive the real `kiln` binary.

mod common;

use common::*;
use kiln::cmd::Cmd;
use kiln::deploy::{self, DeployRequest, Source};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn req(f: &Fixture, rev: &str) -> DeployRequest {
    DeployRequest {
        sysroot: f.sysroot.clone(),
        os: OS.into(),
        source: Source::LocalRepo(f.repo.clone()),
        rev: rev.into(),
        kargs: None,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn status_json(f: &Fixture) -> Value {
    let out = kiln_ok(&["status", "--sysroot", s(&f.sysroot), "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn checksums(st: &Value) -> Vec<String> {
    st["status"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["checksum"].as_str().unwrap().to_string())
        .collect()
}

fn deployment_dir(f: &Fixture, st: &Value, index: usize) -> PathBuf {
    f.sysroot
        .join(st["status"]["deployments"][index]["path"].as_str().unwrap())
}

#[test]
fn api_first_deploy_sets_up_grub2_and_commit_kargs() {
    let f = Fixture::new();
    let c1 = f.commit(1);
    let out = deploy::deploy(&req(&f, REF)).unwrap();
    assert_eq!(out.commit, c1);
    assert_eq!(out.version.as_deref(), Some("1.0"));
    assert!(!out.staged);
    // The boot-entry mechanism every kiln sysroot uses.
    let repo_cfg = std::fs::read_to_string(f.sysroot.join("ostree/repo/config")).unwrap();
    assert!(repo_cfg.contains("bootloader=grub2"), "{repo_cfg}");
    assert!(!f.sysroot.join("boot/syslinux").exists());
    // The menu is in the boot version libostree swapped in, written by kiln.
    let loader = std::fs::read_link(f.sysroot.join("boot/loader")).unwrap();
    assert!(f
        .sysroot
        .join("boot")
        .join(&loader)
        .join("grub.cfg")
        .is_file());
    let e = boot_entries(&f.sysroot);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].options
            .starts_with("root=LABEL=root rw console=ttyS0,115200 ostree=/ostree/boot."),
        "{}",
        e[0].options
    );
    assert_eq!(check_default_entry(&f.sysroot), c1);
    assert!(
        kiln::deploy::safety::fifreeze_filter_active(),
        "directory sysroots must run with the FIFREEZE filter"
    );

    // Later deployments inherit the kargs; explicit ones replace them.
    let c2 = f.commit(2);
    deploy::deploy(&req(&f, REF)).unwrap();
    let e = boot_entries(&f.sysroot);
    assert_eq!(e.len(), 2);
    assert!(e[0]
        .options
        .starts_with("root=LABEL=root rw console=ttyS0,115200 ostree="));
    assert_eq!(check_default_entry(&f.sysroot), c2);
    let mut r = req(&f, &c1);
    r.kargs = Some(vec!["root=LABEL=other".into(), "quiet".into()]);
    let out = deploy::deploy(&r).unwrap();
    assert_eq!(out.commit, c1);
    let e = boot_entries(&f.sysroot);
    assert!(
        e[0].options.starts_with("root=LABEL=other quiet ostree="),
        "{e:?}"
    );
    assert_eq!(check_default_entry(&f.sysroot), c1);

    // Idempotent init keeps everything.
    let before = std::fs::read_to_string(f.sysroot.join("boot/loader/grub.cfg")).unwrap();
    deploy::init_sysroot(&f.sysroot, OS).unwrap();
    let after = std::fs::read_to_string(f.sysroot.join("boot/loader/grub.cfg")).unwrap();
    assert_eq!(before, after);
}

#[test]
fn init_sysroot_alone_prepares_the_grub2_backend() {
    let f = Fixture::new();
    deploy::init_sysroot(&f.sysroot, "other").unwrap();
    deploy::init_sysroot(&f.sysroot, "other").unwrap();
    let repo_cfg = std::fs::read_to_string(f.sysroot.join("ostree/repo/config")).unwrap();
    assert!(repo_cfg.contains("bootloader=grub2"), "{repo_cfg}");
    assert!(f.sysroot.join("ostree/deploy/other/var").is_dir());
}

/// A sysroot made by older kiln (libostree's syslinux backend, read by the GRUB its image
/// carries) keeps that backend: deployments keep rewriting syslinux.cfg, no grub.cfg.
#[test]
fn syslinux_sysroots_of_older_kiln_keep_their_backend() {
    let f = Fixture::new();
    f.commit(1);
    deploy::init_sysroot(&f.sysroot, OS).unwrap();
    let cfg = f.sysroot.join("ostree/repo/config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("bootloader=grub2", "bootloader=syslinux"),
    )
    .unwrap();
    // What older kiln's init left: the loader files of the syslinux backend.
    deploy::init_sysroot(&f.sysroot, OS).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.sysroot.join("boot/loader.0/syslinux.cfg")).unwrap(),
        "TIMEOUT 30\n"
    );
    deploy::deploy(&req(&f, REF)).unwrap();
    let c2 = f.commit(2);
    deploy::deploy(&req(&f, REF)).unwrap();
    let text = std::fs::read_to_string(f.sysroot.join("boot/loader/syslinux.cfg")).unwrap();
    assert!(
        text.contains("TIMEOUT 30") && text.contains("DEFAULT"),
        "{text}"
    );
    assert_eq!(text.matches("LABEL ").count(), 2, "{text}");
    assert!(!f.sysroot.join("boot/loader/grub.cfg").exists());
    let dep = entry_deployment(&f.sysroot, &boot_entries(&f.sysroot)[0]);
    let name = dep.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&c2), "default entry is {name}, not {c2}");
    assert!(std::fs::read_to_string(&cfg)
        .unwrap()
        .contains("bootloader=syslinux"));
}

#[test]
fn upgrade_status_rollback_cycle() {
    let f = Fixture::new();
    let c1 = f.commit(1);
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    let out = kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert!(out.contains("Already up to date"), "{out}");
    let (code, out, _) = kiln(&["upgrade", "--check", "--sysroot", sr, "--repo", repo]);
    assert_eq!(code, 0, "{out}");

    let c2 = f.commit(2);
    let (code, out, err) = kiln(&["upgrade", "--check", "--sysroot", sr, "--repo", repo]);
    assert_eq!(code, 77, "{out}{err}");
    assert!(out.contains("Update available"), "{out}");
    // --check changed nothing.
    assert_eq!(checksums(&status_json(&f)), vec![c1.clone()]);

    let out = kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert!(out.contains("Upgraded"), "{out}");
    let st = status_json(&f);
    assert_eq!(st["apiVersion"], "kiln/v1");
    assert_eq!(st["kind"], "Host");
    assert_eq!(checksums(&st), vec![c2.clone(), c1.clone()]);
    assert_eq!(st["status"]["default"]["checksum"], c2.as_str());
    assert_eq!(st["status"]["default"]["version"], "2.0");
    assert_eq!(st["status"]["rollback"]["checksum"], c1.as_str());
    assert_eq!(st["status"]["booted"], Value::Null);
    assert_eq!(st["status"]["staged"], Value::Null);
    assert_eq!(st["spec"]["refspec"], REF);
    let d0 = &st["status"]["deployments"][0];
    assert_eq!(d0["default"], true);
    assert_eq!(d0["pending"], true);
    assert_eq!(d0["rollback"], false);
    assert_eq!(d0["pinned"], false);
    assert_eq!(d0["refspec"], REF);
    assert_eq!(d0["timestamp"], 1_700_000_000u64 + 2 * 86400);
    assert_eq!(
        d0["kernelArgs"],
        serde_json::json!(["root=LABEL=root", "rw", "console=ttyS0,115200"])
    );
    assert_eq!(st["status"]["deployments"][1]["rollback"], true);
    // Boot entries match: default entry is v2, second is v1.
    assert_eq!(check_default_entry(&f.sysroot), c2);
    let e = boot_entries(&f.sysroot);
    assert_eq!(e.len(), 2);
    assert!(e[1].title.contains("Kiln Test 1"), "{e:?}");
    assert!(entry_deployment(&f.sysroot, &e[1])
        .to_string_lossy()
        .contains(&c1));
    let text = kiln_ok(&["status", "--sysroot", sr]);
    assert!(
        text.contains("[default, pending]") && text.contains("[rollback]"),
        "{text}"
    );

    let out = kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert!(out.contains("Already up to date"), "{out}");

    // Rollback flips, and flips back.
    kiln_ok(&["rollback", "--sysroot", sr]);
    let st = status_json(&f);
    assert_eq!(checksums(&st), vec![c1.clone(), c2.clone()]);
    assert_eq!(st["status"]["rollback"]["checksum"], c2.as_str());
    assert_eq!(check_default_entry(&f.sysroot), c1);
    kiln_ok(&["rollback", "--sysroot", sr]);
    let st = status_json(&f);
    assert_eq!(checksums(&st), vec![c2.clone(), c1.clone()]);
    assert_eq!(check_default_entry(&f.sysroot), c2);

    // A downgrade is refused unless asked for.
    kiln_ok(&["rollback", "--sysroot", sr]);
    // now default is v1 and REF points at v2: an upgrade
    let out = kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert!(out.contains("Upgraded"), "{out}");
    Cmd::new("ostree")
        .arg(format!("--repo={repo}"))
        .args(["reset", REF, &c1])
        .run()
        .unwrap();
    let (code, _, err) = kiln(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert_ne!(code, 0);
    assert!(err.contains("refusing to downgrade"), "{err}");
    kiln_ok(&[
        "upgrade",
        "--sysroot",
        sr,
        "--repo",
        repo,
        "--allow-downgrade",
    ]);
    assert_eq!(check_default_entry(&f.sysroot), c1);
}

#[test]
fn etc_changes_carry_over_and_usr_matches_commit() {
    let f = Fixture::new();
    f.commit(1);
    let sr = s(&f.sysroot);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", s(&f.repo), REF]);
    let st = status_json(&f);
    let d1 = deployment_dir(&f, &st, 0);
    let etc = d1.join("etc");
    assert_eq!(
        std::fs::read_to_string(etc.join("motd")).unwrap(),
        "welcome to v1\n"
    );
    std::fs::write(etc.join("keep.conf"), "changed locally\n").unwrap();
    std::fs::write(etc.join("added.conf"), "added locally\n").unwrap();
    std::fs::remove_file(etc.join("delete-me.conf")).unwrap();

    let c2 = f.commit(2);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", s(&f.repo)]);
    let st = status_json(&f);
    assert_eq!(st["status"]["default"]["checksum"], c2.as_str());
    let d2 = deployment_dir(&f, &st, 0);
    assert_ne!(d1, d2);
    let etc2 = d2.join("etc");
    assert_eq!(
        std::fs::read_to_string(etc2.join("keep.conf")).unwrap(),
        "changed locally\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc2.join("added.conf")).unwrap(),
        "added locally\n"
    );
    assert!(!etc2.join("delete-me.conf").exists());
    // Untouched files follow the new commit.
    assert_eq!(
        std::fs::read_to_string(etc2.join("motd")).unwrap(),
        "welcome to v2\n"
    );
    assert_usr_matches_commit(&f.sysroot, &d2, &c2);
    assert_eq!(
        std::fs::read_to_string(d2.join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho v2\n"
    );
}

#[test]
fn pinned_deployments_survive_upgrades_and_cleanup() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    let c1 = f.commit(1);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    let out = kiln_ok(&["pin", "0", "--sysroot", sr]);
    assert!(out.contains("now pinned"), "{out}");
    let out = kiln_ok(&["pin", "0", "--sysroot", sr]);
    assert!(out.contains("already pinned"), "{out}");
    let c2 = f.commit(2);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    let c3 = f.commit(3);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert_eq!(
        checksums(&status_json(&f)),
        vec![c3.clone(), c2.clone(), c1.clone()]
    );
    let c4 = f.commit(4);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    // v2 was neither pinned, default nor rollback any more: gone. v1 stays pinned.
    let st = status_json(&f);
    assert_eq!(checksums(&st), vec![c4.clone(), c3.clone(), c1.clone()]);
    assert_eq!(st["status"]["deployments"][2]["pinned"], true);
    assert_eq!(boot_entries(&f.sysroot).len(), 3);

    let out = kiln_ok(&["cleanup", "--sysroot", sr]);
    assert!(out.contains("No deployments to remove"), "{out}");
    assert_eq!(
        checksums(&status_json(&f)),
        vec![c4.clone(), c3.clone(), c1.clone()]
    );

    // Unpinned, v1 is an extra: cleanup removes it, its files and its objects.
    let v1_dir = deployment_dir(&f, &st, 2);
    kiln_ok(&["unpin", "2", "--sysroot", sr]);
    let out = kiln_ok(&["cleanup", "--sysroot", sr, "--json"]);
    let cl: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cl["removed"][0]["checksum"], c1.as_str());
    assert!(cl["objectsPruned"].as_i64().unwrap() > 0, "{cl}");
    assert!(!v1_dir.exists());
    assert_eq!(checksums(&status_json(&f)), vec![c4.clone(), c3.clone()]);
    let r = kiln::repo::open(&f.sysroot.join("ostree/repo")).unwrap();
    assert!(r.load_commit(&c1).is_err(), "v1's commit should be pruned");
    assert_eq!(check_default_entry(&f.sysroot), c4);

    // -r also drops the rollback deployment.
    kiln_ok(&["cleanup", "-r", "--sysroot", sr]);
    assert_eq!(checksums(&status_json(&f)), vec![c4.clone()]);
    assert_eq!(boot_entries(&f.sysroot).len(), 1);
    assert_eq!(check_default_entry(&f.sysroot), c4);
    let (code, _, err) = kiln(&["rollback", "--sysroot", sr]);
    assert_ne!(code, 0);
    assert!(err.contains("no rollback deployment"), "{err}");
}

#[test]
fn kargs_change_only_the_new_default_entry() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let c1 = f.commit(1);
    f.commit(2);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", s(&f.repo), &c1]);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", s(&f.repo), REF]);
    let before = boot_entries(&f.sysroot);
    assert_eq!(before.len(), 2);
    let out = kiln_ok(&[
        "kargs",
        "--sysroot",
        sr,
        "--append",
        "foo=bar",
        "--delete",
        "rw",
        "--replace",
        "console=ttyS1,9600",
    ]);
    assert!(out.contains("New deployment"), "{out}");
    let after = boot_entries(&f.sysroot);
    assert_eq!(after.len(), 2, "{after:?}");
    let strip = |o: &str| {
        o.split_whitespace()
            .filter(|a| !a.starts_with("ostree="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        strip(&after[0].options),
        "root=LABEL=root console=ttyS1,9600 foo=bar"
    );
    // The old default is now the rollback, with its arguments untouched.
    assert_eq!(strip(&after[1].options), strip(&before[0].options));
    assert_eq!(
        after[1].title.replace("ostree:1", ""),
        before[0].title.replace("ostree:0", "")
    );
    check_default_entry(&f.sysroot);
    let st = status_json(&f);
    assert_eq!(
        st["spec"]["kernelArgs"],
        serde_json::json!(["root=LABEL=root", "console=ttyS1,9600", "foo=bar"])
    );
    let out = kiln_ok(&["kargs", "--sysroot", sr]);
    assert_eq!(out.trim(), "root=LABEL=root console=ttyS1,9600 foo=bar");

    // In place: same deployments, only the default entry changes.
    let ids_before = checksums(&st);
    let (default_dir_before, rollback_opts) =
        (deployment_dir(&f, &st, 0), strip(&after[1].options));
    kiln_ok(&["kargs", "--sysroot", sr, "--in-place", "--append", "quiet"]);
    let st = status_json(&f);
    assert_eq!(checksums(&st), ids_before);
    assert_eq!(deployment_dir(&f, &st, 0), default_dir_before);
    let e = boot_entries(&f.sysroot);
    assert_eq!(
        strip(&e[0].options),
        "root=LABEL=root console=ttyS1,9600 foo=bar quiet"
    );
    assert_eq!(strip(&e[1].options), rollback_opts);
    check_default_entry(&f.sysroot);

    // Bad edits fail and change nothing.
    let snap = boot_entries(&f.sysroot);
    let (code, _, err) = kiln(&["kargs", "--sysroot", sr, "--delete", "nosuch"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(boot_entries(&f.sysroot), snap);
}

#[test]
fn diff_lists_package_changes() {
    let f = Fixture::new();
    let c1 = f.commit(1);
    let c2 = f.commit(2);
    let out = kiln_ok(&["diff", "--repo", s(&f.repo), &c1, &c2, "--json"]);
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        d["added"],
        serde_json::json!([{"name": "newpkg", "version": "0.1"}])
    );
    assert_eq!(
        d["removed"],
        serde_json::json!([{"name": "oldpkg", "version": "9"}])
    );
    assert_eq!(
        d["changed"],
        serde_json::json!([{"name": "tool", "from": "1.1", "to": "1.2"}])
    );
    assert_eq!(d["from"]["version"], "1.0");
    let out = kiln_ok(&["diff", "--repo", s(&f.repo), &c1, REF]);
    assert!(out.contains("added:   newpkg 0.1"), "{out}");
    assert!(out.contains("1 added, 1 removed, 1 changed."), "{out}");
    let (code, _, err) = kiln(&["diff", "--repo", s(&f.repo), &c1, "no/such/ref"]);
    assert_ne!(code, 0);
    assert!(err.contains("no/such/ref"), "{err}");
}

/// Recursive listing (path, kind, size, mtime) of a sysroot, to prove "unchanged".
fn snapshot(root: &Path) -> Vec<(String, u64, i64)> {
    let mut v = Vec::new();
    if !root.exists() {
        return v;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            v.push((
                p.strip_prefix(root).unwrap().display().to_string(),
                md.size(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000,
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    v.sort();
    v
}

fn assert_unchanged(before: &[(String, u64, i64)], after: &[(String, u64, i64)]) {
    let a: std::collections::BTreeSet<_> = before.iter().collect();
    let b: std::collections::BTreeSet<_> = after.iter().collect();
    let gone: Vec<_> = a.difference(&b).collect();
    let new: Vec<_> = b.difference(&a).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "a failed command changed the sysroot:\n  before: {gone:?}\n  after: {new:?}"
    );
}

#[test]
fn errors_are_clear_and_change_nothing() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    f.commit(1);

    // Missing ref: nothing is created.
    let (code, _, err) = kiln(&["deploy", "--sysroot", sr, "--repo", repo, "no/such/ref"]);
    assert_ne!(code, 0);
    assert!(err.contains("no ref or commit \"no/such/ref\""), "{err}");
    assert!(!f.sysroot.exists(), "a failed deploy created the sysroot");

    // Not initialized.
    std::fs::create_dir_all(&f.sysroot).unwrap();
    for args in [
        vec!["status", "--sysroot", sr],
        vec!["rollback", "--sysroot", sr],
        vec!["upgrade", "--sysroot", sr, "--repo", repo],
        vec!["cleanup", "--sysroot", sr],
        vec!["pin", "0", "--sysroot", sr],
    ] {
        let (code, _, err) = kiln(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(
            err.contains("is not an initialized OSTree sysroot"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(&f.sysroot).unwrap().count(), 0);

    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    let snap = snapshot(&f.sysroot);

    // Missing ref in an initialized sysroot.
    let (code, _, err) = kiln(&["deploy", "--sysroot", sr, "--repo", repo, "no/such/ref"]);
    assert_ne!(code, 0);
    assert!(err.contains("no/such/ref"), "{err}");
    let (code, _, err) = kiln(&["deploy", "--sysroot", sr, "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("\"nope\""), "{err}");

    // Unknown deployment index.
    for cmd in ["pin", "unpin"] {
        let (code, _, err) = kiln(&[cmd, "7", "--sysroot", sr]);
        assert_ne!(code, 0);
        assert!(
            err.contains("no deployment 7") && err.contains("0..=0"),
            "{err}"
        );
    }
    // Rollback without a second deployment.
    let (code, _, err) = kiln(&["rollback", "--sysroot", sr]);
    assert_ne!(code, 0);
    assert!(err.contains("no rollback deployment"), "{err}");
    // Upgrade from a repo that is not one.
    let (code, _, err) = kiln(&["upgrade", "--sysroot", sr, "--repo", sr]);
    assert_ne!(code, 0);
    assert!(err.contains("is not an OSTree repo"), "{err}");

    // No permission: the same commands as an unprivileged user.
    f.commit(2);
    let nobody = |args: &[&str]| {
        let mut full = vec!["--reuid=65534", "--regid=65534", "--clear-groups", KILN];
        full.extend_from_slice(args);
        let o = duct::cmd("setpriv", full)
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for args in [
        vec!["upgrade", "--sysroot", sr, "--repo", repo],
        vec!["deploy", "--sysroot", sr, "--repo", repo, REF],
        vec!["rollback", "--sysroot", sr],
        vec!["cleanup", "--sysroot", sr],
        vec!["pin", "0", "--sysroot", sr],
        vec!["kargs", "--append", "x=1", "--sysroot", sr],
    ] {
        let (code, err) = nobody(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(
            err.contains("permission denied") && err.contains("needs root"),
            "{args:?}: {err}"
        );
    }
    // Reading works without root.
    let (code, err) = nobody(&["status", "--sysroot", sr]);
    assert_eq!(code, 0, "{err}");

    assert_unchanged(&snap, &snapshot(&f.sysroot));
}

#[test]
fn directory_sysroot_never_freezes_the_host_filesystem() {
    // libostree flushes /boot with FIFREEZE/FITHAW; on a directory sysroot that would
    // freeze the host's filesystem, so kiln's seccomp filter must turn it into EOPNOTSUPP.
    let f = Fixture::new();
    f.commit(1);
    let log = f.dir.path().join("strace.log");
    Cmd::new("strace")
        .args(["-f", "-e", "trace=ioctl", "-o"])
        .arg(&log)
        .arg(KILN)
        .args([
            "deploy",
            "--sysroot",
            s(&f.sysroot),
            "--repo",
            s(&f.repo),
            REF,
        ])
        .run()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let freezes: Vec<&str> = text.lines().filter(|l| l.contains("FIFREEZE")).collect();
    assert!(
        !freezes.is_empty(),
        "libostree made no FIFREEZE call:\n{text}"
    );
    for l in freezes {
        assert!(l.contains("EOPNOTSUPP"), "FIFREEZE reached the kernel: {l}");
    }
}

#[test]
fn deploy_and_upgrade_from_a_configured_remote() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let c1 = f.commit(1);
    // Initialize with a first deployment, then follow a remote.
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", s(&f.repo), REF]);
    Cmd::new("ostree")
        .arg(format!(
            "--repo={}",
            f.sysroot.join("ostree/repo").display()
        ))
        .args(["remote", "add", "--no-gpg-verify", "origin"])
        .arg(format!("file://{}", f.repo.display()))
        .run()
        .unwrap();
    let (code, _, err) = kiln(&["deploy", "--sysroot", sr, "--remote", "nosuch", REF]);
    assert_ne!(code, 0);
    assert!(err.contains("no remote \"nosuch\""), "{err}");
    kiln_ok(&["deploy", "--sysroot", sr, "--remote", "origin", REF]);
    let st = status_json(&f);
    assert_eq!(st["spec"]["refspec"], format!("origin:{REF}"));
    let out = kiln_ok(&["upgrade", "--sysroot", sr]);
    assert!(out.contains("Already up to date"), "{out}");
    let c2 = f.commit(2);
    let (code, out, err) = kiln(&["upgrade", "--check", "--sysroot", sr, "--json"]);
    assert_eq!(code, 77, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "available");
    assert_eq!(v["to"], c2.as_str());
    // A file:// remote of a bare-user repo has no .filez objects: the preview asks the
    // repo itself for the sizes of the objects the sysroot lacks.
    assert_eq!(v["downloadFrom"], "objects", "{v}");
    assert!(v["downloadBytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(checksums(&status_json(&f))[0], c1);
    kiln_ok(&["upgrade", "--sysroot", sr]);
    let st = status_json(&f);
    assert_eq!(st["status"]["default"]["checksum"], c2.as_str());
    assert_eq!(st["status"]["default"]["refspec"], format!("origin:{REF}"));
    assert_eq!(check_default_entry(&f.sysroot), c2);
}

#[test]
fn stateroots_are_kept_apart() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    let c1 = f.commit(1);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, "--os", "a", REF]);
    let c2 = f.commit(2);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, "--os", "b", REF]);
    let st = status_json(&f);
    let roots: Vec<&str> = st["status"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["stateroot"].as_str().unwrap())
        .collect();
    assert_eq!(roots, ["b", "a"]);
    assert_eq!(checksums(&st), vec![c2.clone(), c1.clone()]);
    // b's first deployment took the commit's kargs, not a's.
    assert_eq!(
        st["status"]["deployments"][0]["kernelArgs"],
        serde_json::json!(["root=LABEL=root", "rw", "console=ttyS0,115200"])
    );
    // No rollback within b (a is another OS), and cleanup -r of b keeps a.
    assert_eq!(st["status"]["rollback"], Value::Null);
    kiln_ok(&["cleanup", "-r", "--os", "b", "--sysroot", sr]);
    assert_eq!(checksums(&status_json(&f)), vec![c2.clone(), c1.clone()]);
    assert!(f.sysroot.join("ostree/deploy/a/var").is_dir());
    assert_eq!(check_default_entry(&f.sysroot), c2);
}

/// libostree's pull runs on the thread-default main context; deploys on several threads of
/// one process (parallel tests, a caller with worker threads) must not share one and hang.
#[test]
fn concurrent_deploys_in_one_process_finish() {
    let (tx, rx) = std::sync::mpsc::channel();
    const THREADS: usize = 4;
    for t in 0..THREADS {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                let f = Fixture::new();
                for v in 1..=3 {
                    let c = f.commit(v);
                    let out = deploy::deploy(&req(&f, REF)).unwrap();
                    assert_eq!(out.commit, c, "thread {t}, version {v}");
                }
            });
            tx.send((t, r.is_ok())).unwrap();
        });
    }
    for _ in 0..THREADS {
        let (t, ok) = rx
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("a deploy thread neither finished nor failed within 300 s (hung in a pull?)");
        assert!(ok, "deploy thread {t} failed");
    }
}

/// Everything in a sysroot: (path, kind, mode, content or link target) plus the
/// (path, size, mtime) listing, to prove a refused command left it byte-identical.
type FullSnapshot = (
    std::collections::BTreeMap<String, (char, u32, Vec<u8>)>,
    Vec<(String, u64, i64)>,
);

fn full_snapshot(root: &Path) -> FullSnapshot {
    (walk(root), snapshot(root))
}

fn assert_identical(before: &FullSnapshot, root: &Path, what: &str) {
    let after = full_snapshot(root);
    assert_unchanged(&before.1, &after.1);
    let changed: Vec<&String> = before
        .0
        .iter()
        .filter(|(k, v)| after.0.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(after.0.keys().filter(|k| !before.0.contains_key(*k)))
        .collect();
    assert!(
        changed.is_empty(),
        "{what} changed the sysroot: {changed:?}"
    );
}

/// A refused command: exit 2 (bad input), a message naming `needle`, no panic.
fn refused(args: &[&str], needle: &str) {
    let (code, out, err) = kiln(args);
    assert_eq!(
        code, 2,
        "{args:?} was not refused as bad input:\n{out}\n{err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

/// Status, rollback and deploy all still work on the sysroot, and its default entry is a
/// complete deployment.
fn sysroot_still_works(f: &Fixture) {
    let sr = s(&f.sysroot);
    check_default_entry(&f.sysroot);
    status_json(f);
    kiln_ok(&["rollback", "--sysroot", sr]);
    check_default_entry(&f.sysroot);
    kiln_ok(&["rollback", "--sysroot", sr]);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", s(&f.repo), REF]);
    check_default_entry(&f.sysroot);
    status_json(f);
}

#[test]
fn bad_kernel_arguments_never_reach_the_sysroot() {
    // Issue 18: `--karg "a=b\nc"` and `kargs --replace "console=ttyS0\nfoo"` used to switch
    // the boot entries and then fail, leaving a default entry without ostree= that no
    // command could load; `--karg ''` dropped every argument; `kargs --append ostree=/x`
    // changed nothing yet pushed out the rollback.
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    f.commit(1);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    f.commit(2);
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    let snap = full_snapshot(&f.sysroot);
    let nl = "a=b\nc";
    let nl_console = "console=ttyS0\nfoo";
    for (args, needle) in [
        (vec!["deploy", "--karg", nl], "--karg"),
        (vec!["deploy", "--karg", "a b"], "whitespace"),
        (vec!["deploy", "--karg", ""], "empty kernel argument"),
        (vec!["deploy", "--karg", "ostree=/x"], "ostree="),
        (vec!["deploy", "--karg", "rw", "--karg", "a='b'"], "quotes"),
        (vec!["kargs", "--replace", nl_console], "--replace"),
        (
            vec!["kargs", "--in-place", "--replace", nl_console],
            "--replace",
        ),
        (vec!["kargs", "--append", "ostree=/x"], "ostree="),
        (vec!["kargs", "--append", "BOOT_IMAGE=/x"], "BOOT_IMAGE"),
        (vec!["kargs", "--append", "a b"], "--append"),
        (vec!["kargs", "--delete", ""], "--delete"),
        (vec!["kargs", "--replace", "rw"], "KEY=VALUE"),
        (vec!["kargs", "--delete", "nosuch"], "nosuch"),
    ] {
        let mut full = vec![args[0], "--sysroot", sr];
        full.extend_from_slice(&args[1..]);
        if args[0] == "deploy" {
            full.extend_from_slice(&["--repo", repo, REF]);
        }
        refused(&full, needle);
        assert_identical(&snap, &f.sysroot, &format!("{args:?}"));
    }

    // The library entry point (image builds, the installer) refuses them too.
    for bad in [nl, "", "a b", "ostree=/x"] {
        let mut r = req(&f, REF);
        r.kargs = Some(vec!["rw".into(), bad.into()]);
        let e = deploy::deploy(&r).unwrap_err();
        assert!(
            e.downcast_ref::<kiln::error::InputError>().is_some(),
            "{bad:?}: {e:#}"
        );
        assert_identical(&snap, &f.sysroot, &format!("deploy() with {bad:?}"));
    }

    // An edit that changes nothing makes no deployment and keeps the rollback.
    let out = kiln_ok(&[
        "kargs",
        "--sysroot",
        sr,
        "--replace",
        "console=ttyS0,115200",
    ]);
    assert!(out.contains("No change"), "{out}");
    assert_identical(&snap, &f.sysroot, "a no-change kargs edit");

    sysroot_still_works(&f);
}

#[test]
fn bad_kernel_arguments_in_commits_and_deployments_are_refused() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    f.commit(1);
    // A commit whose kiln.kargs holds a newline: a first deployment would take them.
    Cmd::new("ostree")
        .arg(format!("--repo={repo}"))
        .args([
            "commit",
            "-b",
            "kiln/test/bad",
            &format!("--tree=ref={REF}"),
            "--add-metadata=kiln.kargs=['rw', 'a=b\\nc']",
            "--add-metadata-string=version=9.0",
        ])
        .run()
        .unwrap();
    refused(
        &["deploy", "--sysroot", sr, "--repo", repo, "kiln/test/bad"],
        "kiln.kargs",
    );
    assert!(
        !f.sysroot.exists(),
        "a refused first deploy created the sysroot"
    );

    // A deployment carrying an argument kiln cannot represent (set behind kiln's back):
    // deploying over it (inheriting) is refused, naming the deployment; giving the whole
    // set with --karg works.
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    Cmd::new("ostree")
        .args(["admin", "kargs", "edit-in-place"])
        .arg(format!("--sysroot={sr}"))
        .arg("--append-if-missing=x=\"b c\"")
        .run()
        .unwrap();
    let snap = full_snapshot(&f.sysroot);
    refused(
        &["deploy", "--sysroot", sr, "--repo", repo, REF],
        "inherited",
    );
    assert_identical(&snap, &f.sysroot, "deploy inheriting bad kargs");
    refused(
        &["kargs", "--sysroot", sr, "--append", "quiet"],
        "kernel arguments",
    );
    assert_identical(&snap, &f.sysroot, "kargs over bad kargs");
    kiln_ok(&[
        "deploy",
        "--sysroot",
        sr,
        "--repo",
        repo,
        "--karg",
        "root=LABEL=root",
        "--karg",
        "rw",
        REF,
    ]);
    check_default_entry(&f.sysroot);
    assert_eq!(
        status_json(&f)["spec"]["kernelArgs"],
        serde_json::json!(["root=LABEL=root", "rw"])
    );
}

#[test]
fn bad_names_refs_and_indexes_are_refused_at_the_door() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    let repo = s(&f.repo);
    f.commit(1);
    // Nothing exists yet: a refused deploy must not create the sysroot.
    for (args, needle) in [
        (vec!["--os", "../x", REF], "--os"),
        (vec!["--os", "", REF], "stateroot"),
        (vec!["kiln/../x"], "invalid ref"),
        (vec!["-x"], ""),
        (vec!["o:"], "invalid ref"),
        (vec!["a b"], "invalid ref"),
    ] {
        let mut full = vec!["deploy", "--sysroot", sr, "--repo", repo];
        full.extend_from_slice(&args);
        refused(&full, needle);
        assert!(!f.sysroot.exists(), "{args:?} created the sysroot");
    }
    refused(
        &["deploy", "--sysroot", sr, "--remote=-bad", REF],
        "remote name",
    );
    refused(
        &[
            "deploy",
            "--sysroot",
            sr,
            "--remote",
            "origin",
            "origin:kiln/x",
        ],
        "--remote",
    );
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    let snap = full_snapshot(&f.sysroot);
    for args in [
        vec!["pin", "7"],
        vec!["unpin", "7"],
        vec!["pin", "-1"],
        vec!["pin", "x"],
        vec!["upgrade", "--repo", "/nonexistent"],
        vec!["cleanup", "--os", "a/b"],
        vec!["rollback", "--os", "."],
    ] {
        let mut full = args.clone();
        full.extend_from_slice(&["--sysroot", sr]);
        refused(&full, "");
        assert_identical(&snap, &f.sysroot, &format!("{args:?}"));
    }
}

#[test]
fn remote_and_inspection_arguments_are_refused_at_the_door() {
    let f = Fixture::new();
    let sr = s(&f.sysroot);
    // `kiln remote add NAME URL`: both values are typed when the command line is parsed,
    // before the sysroot is created or root is asked for.
    refused(
        &[
            "remote",
            "add",
            "--sysroot",
            sr,
            "a b",
            "http://example.org/repo",
        ],
        "a b",
    );
    refused(
        &[
            "remote",
            "add",
            "--sysroot",
            sr,
            "origin",
            "ftp://example.org/repo",
        ],
        "remote URL",
    );
    refused(&["remote", "delete", "--sysroot", sr, "a/b"], "a/b");
    assert!(
        !f.sysroot.exists(),
        "a refused remote add created the sysroot"
    );
    // log, show and diff take revs by the one rev rule.
    let repo = s(&f.repo);
    refused(&["log", "--repo", repo, "kiln/../x"], "invalid ref");
    refused(&["show", "--repo", repo, "a b"], "invalid ref");
    refused(&["diff", "--repo", repo, "o:", REF], "invalid ref");
}

/// Health-checked updates on a sysroot directory: a deploy over an existing deployment
/// starts its trial (grubenv, `triesLeft`, the GRUB menu counts the default entry);
/// `kiln upgrade` does not take a rejected newest commit and takes a newer one; `kiln
/// status` shows the rejection; `kiln health forget` lets it be taken again.
#[test]
fn trial_rejection_and_forget_on_a_sysroot() {
    use kiln::deploy::{bootcount, trial};
    let f = Fixture::new();
    let c1 = f.commit(1);
    let (sr, repo) = (s(&f.sysroot), s(&f.repo));
    kiln_ok(&["deploy", "--sysroot", sr, "--repo", repo, REF]);
    // A first deployment has nothing to fall back to: not on trial.
    assert_eq!(trial::read(&f.sysroot).unwrap(), bootcount::Trial::none());
    let c2 = f.commit(2);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    let st = status_json(&f);
    let d0 = &st["status"]["deployments"][0];
    assert_eq!(d0["checksum"], c2.as_str());
    assert_eq!(d0["triesLeft"], bootcount::DEFAULT_TRIES, "{st}");
    assert!(st["status"]["deployments"][1].get("triesLeft").is_none());
    let key = bootcount::key(&c2, d0["deploySerial"].as_i64().unwrap() as i32);
    assert_eq!(
        trial::read(&f.sysroot).unwrap(),
        bootcount::Trial::new(&key, bootcount::DEFAULT_TRIES)
    );
    let menu = std::fs::read_to_string(f.sysroot.join("boot/loader/grub.cfg")).unwrap();
    assert!(
        menu.contains(&format!("\"$kiln_pending\" = \"{key}\"")),
        "{menu}"
    );

    // c2 rejected (as kiln-health.service records it), c3 published over it.
    kiln_ok(&["rollback", "--sysroot", sr]);
    let mut r = trial::Rejections::default();
    r.add(trial::Rejection {
        commit: c2.clone(),
        version: Some("2.0".into()),
        time: 1,
        time_utc: "1970-01-01 00:00:01 UTC".into(),
        failure: trial::Failure {
            unit: Some("web.service".into()),
            reason: "web.service is failed".into(),
            log: vec!["web: bind: address in use".into()],
        },
    });
    trial::save_rejections(&f.sysroot, "kiln", &r).unwrap();
    kiln_ok(&["cleanup", "-r", "--sysroot", sr]);
    let out = kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert!(out.contains("was rejected"), "{out}");
    let st = status_json(&f);
    assert_eq!(checksums(&st), vec![c1.clone()]);
    assert_eq!(st["status"]["rejected"][0]["commit"], c2.as_str(), "{st}");
    assert_eq!(st["status"]["rejected"][0]["unit"], "web.service", "{st}");
    let text = kiln_ok(&["status", "--sysroot", sr]);
    assert!(text.contains(&format!("Rejected: {c2}")), "{text}");
    assert!(text.contains("web: bind: address in use"), "{text}");
    let c3 = f.commit(3);
    kiln_ok(&["upgrade", "--sysroot", sr, "--repo", repo]);
    assert_eq!(checksums(&status_json(&f))[0], c3);

    // Forgotten, the rejected commit may be deployed by an upgrade again (here by hand).
    kiln_ok(&["health", "forget", "--sysroot", sr, &c2[..12]]);
    assert!(status_json(&f)["status"]["rejected"]
        .as_array()
        .unwrap()
        .is_empty());
}
