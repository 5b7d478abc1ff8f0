//! Shared fixtures for deployment tests: small synthetic bootable commits and temp
//! sysroots that can be removed despite libostree's immutable deployment directories.
#![allow(dead_code)]

pub mod booted;
pub mod derived;
pub mod fleet;
pub mod fleetlock;
pub mod initramfs;
pub mod install;
pub mod oci;

use kiln::cmd::Cmd;
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const REF: &str = "kiln/test/x86_64/base";
pub const KVER: &str = "6.1.0-test";
pub const OS: &str = "kiln";

/// A temp dir holding a source repo and a sysroot.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub sysroot: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("kiln-deploy-test")
            .tempdir_in(std::env::var_os("KILN_TEST_TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        let repo = dir.path().join("repo");
        repo::open_or_create(&repo, repo::RepoMode::BareUser).unwrap();
        let sysroot = dir.path().join("sysroot");
        Fixture { dir, repo, sysroot }
    }

    /// Commits version `v` of the synthetic OS to [`REF`] and returns its checksum.
    /// Each version changes /usr/bin/tool, /usr/etc/motd and the package list.
    pub fn commit(&self, v: u32) -> String {
        self.commit_with(v, |_| {})
    }

    pub fn commit_with(&self, v: u32, edit: impl FnOnce(&Path)) -> String {
        let t = self.dir.path().join(format!("tree-{v}"));
        let _ = std::fs::remove_dir_all(&t);
        let m = t.join("usr/lib/modules").join(KVER);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(t.join("usr/etc")).unwrap();
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        // The kernel changes only every other version, like real updates.
        std::fs::write(m.join("vmlinuz"), format!("kernel {}\n", v / 2)).unwrap();
        std::fs::write(m.join("initramfs.img"), format!("initramfs {}\n", v / 2)).unwrap();
        std::fs::write(
            t.join("usr/lib/os-release"),
            format!("ID=kiln\nNAME=\"Kiln Test\"\nVERSION_ID={v}\nPRETTY_NAME=\"Kiln Test {v}\"\n"),
        )
        .unwrap();
        std::fs::write(t.join("usr/bin/tool"), format!("#!/bin/sh\necho v{v}\n")).unwrap();
        std::fs::write(t.join("usr/etc/motd"), format!("welcome to v{v}\n")).unwrap();
        std::fs::write(t.join("usr/etc/hostname"), "kiln\n").unwrap();
        std::fs::write(t.join("usr/etc/keep.conf"), "default\n").unwrap();
        std::fs::write(t.join("usr/etc/delete-me.conf"), "will be deleted\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", t.join("usr/etc/os-release")).unwrap();
        edit(&t);
        let r = repo::open(&self.repo).unwrap();
        let mut pkgs = vec![
            "base-files=12.4".to_string(),
            format!("tool=1.{v}"),
            "systemd=252.1".to_string(),
        ];
        if v >= 2 {
            pkgs.push("newpkg=0.1".into());
        }
        if v < 2 {
            pkgs.push("oldpkg=9".into());
        }
        pkgs.sort();
        let res = repo::commit_dir(
            &r,
            &t,
            &CommitOptions {
                ref_: REF.into(),
                timestamp: 1_700_000_000 + u64::from(v) * 86400,
                subject: Some(format!("v{v}")),
                metadata: vec![
                    (keys::VERSION.into(), MetaValue::Str(format!("{v}.0"))),
                    (keys::PACKAGES.into(), MetaValue::StrList(pkgs)),
                    (
                        keys::KARGS.into(),
                        MetaValue::StrList(vec![
                            "root=LABEL=root".into(),
                            "rw".into(),
                            "console=ttyS0,115200".into(),
                        ]),
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        unlock_deployments(&self.sysroot);
    }
}

/// Clears the immutable flag libostree sets on deployment roots so a temp dir can go.
pub fn unlock_deployments(sysroot: &Path) {
    let Ok(osdirs) = std::fs::read_dir(sysroot.join("ostree/deploy")) else {
        return;
    };
    for os in osdirs.flatten() {
        if let Ok(deps) = std::fs::read_dir(os.path().join("deploy")) {
            for d in deps.flatten() {
                if d.path().is_dir() {
                    let _ = kiln::cmd::Cmd::new("chattr").arg("-i").arg(d.path()).run();
                }
            }
        }
    }
}

/// A parsed BLS entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub file: String,
    pub title: String,
    pub version: u64,
    pub options: String,
    pub linux: String,
    pub initrd: String,
}

/// The boot entries of the current boot version, default (highest version) first.
pub fn boot_entries(sysroot: &Path) -> Vec<Entry> {
    let dir = sysroot.join("boot/loader/entries");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut kv = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, val)) = line.split_once(' ') {
                kv.insert(k.to_string(), val.trim().to_string());
            }
        }
        v.push(Entry {
            file: e.file_name().to_string_lossy().into_owned(),
            title: kv["title"].clone(),
            version: kv["version"].parse().unwrap(),
            options: kv["options"].clone(),
            linux: kv["linux"].clone(),
            initrd: kv.get("initrd").cloned().unwrap_or_default(),
        });
    }
    v.sort_by_key(|e| std::cmp::Reverse(e.version));
    v
}

/// One `menuentry` of the GRUB menu kiln writes for libostree (boot/loader/grub.cfg).
#[derive(Debug, Clone, PartialEq)]
pub struct MenuEntry {
    pub title: String,
    pub linux: String,
    /// The kernel arguments, unquoted.
    pub args: String,
    pub initrd: String,
    /// The entry adds `$kiln_trial_kargs` (the default entry of a menu with a rollback
    /// entry, when its deployment is known: boot counting, src/deploy/bootcount.rs).
    pub trial_kargs: bool,
}

/// The GRUB menu of the current boot version (boot/loader/grub.cfg), in order; checks
/// the menu boots the first entry after a timeout and falls back to the second.
pub fn grub_menu(sysroot: &Path) -> Vec<MenuEntry> {
    let path = sysroot.join("boot/loader/grub.cfg");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // kiln quotes a word as a whole: '...' (literal) or "..." (expands $variables).
    let unquote = |w: &str| {
        for q in ['\'', '"'] {
            if w.len() >= 2 && w.starts_with(q) && w.ends_with(q) {
                return w[1..w.len() - 1].to_string();
            }
        }
        w.to_string()
    };
    let mut v: Vec<MenuEntry> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("menuentry ") {
            let title = rest.split(" --id ").next().unwrap();
            v.push(MenuEntry {
                title: unquote(title),
                linux: String::new(),
                args: String::new(),
                initrd: String::new(),
                trial_kargs: false,
            });
        } else if let Some(rest) = t.strip_prefix("linux ") {
            let mut w = rest.split_whitespace().map(unquote);
            let e = v.last_mut().expect("linux outside a menuentry");
            e.linux = w.next().unwrap();
            let mut args: Vec<String> = w.collect();
            e.trial_kargs = args.last().map(String::as_str) == Some("$kiln_trial_kargs");
            if e.trial_kargs {
                args.pop();
            }
            e.args = args.join(" ");
        } else if let Some(rest) = t.strip_prefix("initrd ") {
            v.last_mut().expect("initrd outside a menuentry").initrd = unquote(rest);
        }
    }
    assert!(
        text.contains("set default=0\n"),
        "no default entry:\n{text}"
    );
    assert!(text.contains("set timeout="), "no menu timeout:\n{text}");
    assert_eq!(
        text.contains("set fallback=1\n"),
        v.len() > 1,
        "fallback to the rollback entry:\n{text}"
    );
    v
}

/// The deployment directory a boot entry's `ostree=` argument leads to.
pub fn entry_deployment(sysroot: &Path, e: &Entry) -> PathBuf {
    let ostree_arg = e
        .options
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))
        .unwrap();
    let link = sysroot.join(ostree_arg.trim_start_matches('/'));
    std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()))
}

/// Checks that the default boot entry (BLS and the GRUB menu agree, entry by entry) points
/// at a complete deployment whose /usr matches its commit; returns that commit.
pub fn check_default_entry(sysroot: &Path) -> String {
    let entries = boot_entries(sysroot);
    assert!(!entries.is_empty(), "no boot entries");
    let menu = grub_menu(sysroot);
    assert_eq!(menu.len(), entries.len(), "grub.cfg and BLS entries differ");
    for (i, (m, en)) in menu.iter().zip(&entries).enumerate() {
        assert!(
            !m.trial_kargs || (i == 0 && menu.len() > 1),
            "trial arguments on entry {i}"
        );
        assert_eq!(m.title, en.title, "menu order differs from {}", en.file);
        assert_eq!(m.linux, en.linux, "menu kernel differs from {}", en.file);
        assert_eq!(m.args, en.options, "menu arguments differ from {}", en.file);
        assert_eq!(m.initrd, en.initrd, "menu initrd differs from {}", en.file);
    }
    let e = &entries[0];
    assert!(sysroot
        .join("boot")
        .join(e.linux.trim_start_matches('/'))
        .is_file());
    assert!(sysroot
        .join("boot")
        .join(e.initrd.trim_start_matches('/'))
        .is_file());
    let dep = entry_deployment(sysroot, e);
    let name = dep.file_name().unwrap().to_string_lossy().into_owned();
    let commit = name.split('.').next().unwrap().to_string();
    assert!(dep.with_extension("").exists() || dep.exists());
    assert!(
        dep.parent()
            .unwrap()
            .join(format!("{name}.origin"))
            .is_file(),
        "deployment {name} has no origin file"
    );
    assert_usr_matches_commit(sysroot, &dep, &commit);
    commit
}

/// Compares `dep/usr` with a fresh copy-checkout of `commit`'s /usr.
pub fn assert_usr_matches_commit(sysroot: &Path, dep: &Path, commit: &str) {
    let td = tempfile::tempdir_in("/var/tmp").unwrap();
    let co = td.path().join("usr");
    Cmd::new("ostree")
        .arg(format!("--repo={}", sysroot.join("ostree/repo").display()))
        .args(["checkout", "-U", "--force-copy", "--subpath=/usr", commit])
        .arg(&co)
        .run()
        .unwrap();
    compare_trees(&co, &dep.join("usr"));
}

pub fn compare_trees(a: &Path, b: &Path) {
    let la = walk(a);
    let lb = walk(b);
    assert_eq!(
        la.keys().collect::<Vec<_>>(),
        lb.keys().collect::<Vec<_>>(),
        "file lists differ: {} vs {}",
        a.display(),
        b.display()
    );
    for (k, va) in &la {
        assert_eq!(va, &lb[k], "{k} differs");
    }
}

/// path -> (kind, mode, content or link target)
pub fn walk(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                m.insert(rel, ('l', 0, t.as_os_str().as_encoded_bytes().to_vec()));
            } else if md.is_dir() {
                m.insert(rel, ('d', mode, Vec::new()));
                stack.push(p);
            } else {
                m.insert(rel, ('f', mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    m
}

// ---- composed base commit (shared by integration and e2e tests) ----

// Shared fixtures for integration and e2e tests.
//
// [`base_commit`] composes `recipes/base.toml` with the real `kiln` binary into
// `build/test-fixture/repo`, once per test run: a file lock (`flock`) serialises test
// binaries, and compose's own input hash makes every later call a no-change skip (a
// fraction of a second) until the recipe, its overlays, the kiln binary or the mirror
// state change. `KILN_TEST_RECIPE` points it at another recipe.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;

/// A composed commit in a repo.
#[derive(Debug, Clone)]
pub struct Composed {
    pub repo: PathBuf,
    pub ref_: String,
    pub commit: String,
    /// The recipe it was composed from.
    pub recipe: PathBuf,
    /// The cache dir used (its .debs make later composes fast).
    pub cache_dir: PathBuf,
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `kiln` binary built for this test run.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

pub fn fixture_dir() -> PathBuf {
    project_root().join("build/test-fixture")
}

pub fn base_recipe() -> PathBuf {
    std::env::var_os("KILN_TEST_RECIPE")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("recipes/base.toml"))
}

/// Holds an exclusive flock until dropped.
pub struct FileLock(std::fs::File);

pub fn lock(path: &Path) -> FileLock {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: plain flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    FileLock(f)
}

/// [`compose`] with SOURCE_DATE_EPOCH `epoch`, its time and what it reused printed; it
/// must not have been skipped.
pub fn compose_timed(
    recipe: &Path,
    repo: &Path,
    cache: &Path,
    epoch: &str,
    what: &str,
) -> serde_json::Value {
    let t = std::time::Instant::now();
    let v = compose(recipe, repo, cache, &[("SOURCE_DATE_EPOCH", epoch)]);
    eprintln!(
        "{what}: {:.1} s, reused {}, stages {}",
        t.elapsed().as_secs_f64(),
        v["reused"],
        v["stages"]
    );
    assert_eq!(v["skipped"], serde_json::Value::Bool(false), "{what}: {v}");
    v
}

/// Runs `kiln compose --json` and returns the parsed output. Panics with kiln's stderr
/// on failure.
pub fn compose(
    recipe: &Path,
    repo: &Path,
    cache: &Path,
    extra_env: &[(&str, &str)],
) -> serde_json::Value {
    let mut c = std::process::Command::new(kiln_bin());
    c.arg("compose")
        .arg(recipe)
        .arg("--repo")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--json");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c.output().expect("running kiln compose");
    assert!(
        out.status.success(),
        "kiln compose {} failed:\n{}",
        recipe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kiln compose --json output")
}

/// The shared composed commit of `recipes/base.toml`.
pub fn base_commit() -> Composed {
    static F: OnceLock<Composed> = OnceLock::new();
    F.get_or_init(|| fixture_commit(base_recipe())).clone()
}

/// Composes `recipe` into the shared fixture repo under the fixture lock.
fn fixture_commit(recipe: PathBuf) -> Composed {
    let dir = fixture_dir();
    let _l = lock(&dir.join("lock"));
    let repo = dir.join("repo");
    let cache = project_root().join("build/cache");
    let v = compose(&recipe, &repo, &cache, &[]);
    Composed {
        repo,
        ref_: v["ref"].as_str().unwrap().to_string(),
        commit: v["commit"].as_str().unwrap().to_string(),
        recipe,
        cache_dir: cache,
    }
}

/// The composed commit of a variant recipe, `recipes/NAME.toml` (it includes base.toml),
/// in the shared fixture repo; `KILN_TEST_RECIPE_<NAME>` (upper case) names another file.
/// Recomposed only when its inputs changed (compose's input hash); the compose cache is
/// the one [`base_commit`] uses.
pub fn variant_commit(name: &str) -> Composed {
    let recipe = std::env::var_os(format!("KILN_TEST_RECIPE_{}", name.to_uppercase()))
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(format!("recipes/{name}.toml")));
    fixture_commit(recipe)
}

/// Runs the kiln binary under test: (exit code, stdout, stderr).
pub fn kiln(args: &[&str]) -> (i32, String, String) {
    let out = duct::cmd(env!("CARGO_BIN_EXE_kiln"), args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the kiln binary and asserts success; returns stdout.
pub fn kiln_ok(args: &[&str]) -> String {
    let (code, out, err) = kiln(args);
    assert_eq!(code, 0, "kiln {args:?} failed:\n{out}\n{err}");
    out
}

// ---- QEMU e2e helpers (shared by the VM tests) ----

/// Timeout of one guest command.
pub const VM_CMD: std::time::Duration = std::time::Duration::from_secs(300);

/// Boot timeout: `KILN_E2E_BOOT_TIMEOUT` seconds, default 900 (TCG on a busy 2-core CI
/// runner is slow).
pub fn boot_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(
        std::env::var("KILN_E2E_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(900),
    )
}

/// Where console logs of failed boots land.
pub fn vm_artifacts() -> PathBuf {
    project_root().join("build/test-artifacts")
}

/// A work dir on the same filesystem as the fixture repo.
pub fn fixture_workdir(prefix: &str) -> tempfile::TempDir {
    let base = fixture_dir();
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap()
}

/// Parses `KILN-BOOTED commit=… deployment=…` into the commit checksum.
pub fn booted_commit(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("commit="))
        .unwrap_or_else(|| panic!("no commit= in marker line {line:?}"))
        .to_string()
}

/// Waits for the boot marker and returns the booted commit.
pub fn wait_booted(vm: &mut kiln::qemu::Vm, what: &str) -> String {
    let line = vm.wait_for("KILN-BOOTED", boot_timeout()).unwrap();
    eprintln!("{what} after {:?}: {line}", vm.elapsed());
    booted_commit(&line)
}

/// The autologin shell (`kiln.autologin`), with pagers and colours off.
pub fn vm_login(vm: &mut kiln::qemu::Vm) {
    vm.login(boot_timeout()).unwrap();
    vm.run_ok(
        "export PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb",
        VM_CMD,
    )
    .unwrap();
}

/// `kiln status --json` in the guest.
pub fn vm_status_json(vm: &mut kiln::qemu::Vm) -> serde_json::Value {
    let out = vm.run_ok("kiln status --json", VM_CMD).unwrap();
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The checksum of the booted deployment in `kiln status --json` output.
pub fn booted_in_status(v: &serde_json::Value) -> String {
    let deps = v["status"]["deployments"].as_array().expect("deployments");
    deps.iter()
        .find(|d| d["booted"].as_bool() == Some(true))
        .and_then(|d| d["checksum"].as_str())
        .unwrap_or_else(|| panic!("no booted deployment in {v}"))
        .to_string()
}

/// v2 of the base commit: v1's tree plus `/usr/share/kiln-e2e-v2` ("v2"), parent v1,
/// v1's kernel arguments, a later timestamp. An orphan commit in the fixture repo (the
/// fixture's ref is left alone); returns its checksum.
pub fn base_v2(f: &Composed, work: &Path) -> String {
    let add = work.join("v2-add");
    std::fs::create_dir_all(add.join("usr/share")).unwrap();
    std::fs::write(add.join("usr/share/kiln-e2e-v2"), "v2\n").unwrap();
    base_variant(f, &add, "e2e-v2")
}

/// A commit of v1's tree with the files under `add` laid over it, parent v1, v1's kernel
/// arguments, a later timestamp, version `<v1>-<suffix>`: an orphan commit in the fixture
/// repo bound to the fixture's ref (which is left alone); returns its checksum.
pub fn base_variant(f: &Composed, add: &Path, suffix: &str) -> String {
    let src = kiln::repo::open(&f.repo).unwrap();
    let v1 = kiln::repo::read_commit(&src, &f.commit).unwrap();
    drop(src);
    let kargs = v1.meta_list(kiln::repo::keys::KARGS);
    let kargs_variant = format!(
        "[{}]",
        kargs
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut commit = Cmd::new("ostree")
        .arg(format!("--repo={}", f.repo.display()))
        .args(["commit", "--orphan", "--bootable"])
        // `ostree commit` writes an (empty) ref binding even for --orphan; bind the ref
        // machines follow, as a published commit would be.
        .arg(format!("--bind-ref={}", f.ref_))
        .arg(format!("--parent={}", f.commit))
        .arg(format!("--tree=ref={}", f.commit))
        .arg(format!("--tree=dir={}", add.display()))
        .arg(format!("--timestamp=@{}", v1.timestamp + 86400))
        .arg(format!(
            "--add-metadata-string=version={}-{suffix}",
            v1.version.clone().unwrap_or_default()
        ))
        .args(["-s", suffix]);
    if !kargs.is_empty() {
        commit = commit.arg(format!("--add-metadata=kiln.kargs=@as {kargs_variant}"));
    }
    commit.read().unwrap()
}

/// Makes v2 of the base commit (v1's tree plus one file, parent v1, same kernel
/// arguments) and an ext4 disk image holding an archive repo with v2 on the base ref.
pub fn update_disk(f: &Composed, work: &Path) -> (PathBuf, String) {
    let v2 = base_v2(f, work);
    (update_disk_with(f, work, &v2, &[]), v2)
}

/// An ext4 disk image holding an archive repo with `v2` on the base ref and each
/// `(ref, commit)` of `extra` (commits of the fixture repo).
pub fn update_disk_with(f: &Composed, work: &Path, v2: &str, extra: &[(&str, &str)]) -> PathBuf {
    let mut refs = vec![("repo", f.repo.as_path(), f.ref_.as_str(), v2)];
    refs.extend(
        extra
            .iter()
            .map(|(r, c)| ("repo", f.repo.as_path(), *r, *c)),
    );
    archive_disk(work, &refs)
}

/// An ext4 disk image (label `updates`) of archive repos: each `(name, src, ref, commit)`
/// puts `commit`, pulled from the repo `src`, on `ref` in the archive repo `name` (the
/// guest mounts the disk at /run/updates: `booted::mount_updates`).
pub fn archive_disk(work: &Path, refs: &[(&str, &Path, &str, &str)]) -> PathBuf {
    let updates = work.join("updates");
    for (name, src, r, c) in refs {
        let repo = updates.join(name);
        let ostree = |args: &[&str]| {
            Cmd::new("ostree")
                .arg(format!("--repo={}", repo.display()))
                .args(args)
                .run()
                .unwrap()
        };
        if !repo.join("config").exists() {
            std::fs::create_dir_all(&repo).unwrap();
            ostree(&["init", "--mode=archive"]);
        }
        ostree(&["pull-local", "--depth=0", src.to_str().unwrap(), c]);
        ostree(&["refs", &format!("--create={r}"), c]);
    }
    let disk = work.join("updates.ext4");
    let log = work.join("mkfs.log");
    kiln::image::disk::mkfs_ext4(
        &updates,
        &disk,
        3 * 1024 * 1024 * 1024,
        "updates",
        "00000000-4b49-4c4e-8000-0000000000c0",
        None,
        &log,
    )
    .unwrap();
    disk
}

/// The base commit published with `kiln publish --oci` as `:base` in a fresh OCI layout
/// `NAME-PID` of the fixture dir (container image names are lower case: no temp dir
/// name in the path); the layout and the publish's JSON.
pub fn publish_base_layout(name: &str) -> (PathBuf, serde_json::Value) {
    let base = base_commit();
    let layout = fixture_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    let t = std::time::Instant::now();
    let p: serde_json::Value = serde_json::from_str(&kiln_ok(&[
        "publish",
        "--repo",
        base.repo.to_str().unwrap(),
        "--ref",
        &base.ref_,
        "--oci",
        &format!("oci:{}:base", layout.display()),
        "--json",
    ]))
    .unwrap();
    eprintln!("publish --oci: {:?}", t.elapsed());
    (layout, p)
}
