//! Bit-identical builds (docs/reproducible.md), with the real pipeline: mmdebstrap against
//! the host's apt mirror, dracut, libostree, mkfs, GRUB and qemu-img. Needs root.
//!
//! One test, run in order, so that later steps can reuse the caches earlier steps filled
//! where that is legitimate (a bootstrap with the same key is the same root):
//! 1. `kiln verify-reproducible recipes/base.toml --format raw,qcow2` with one
//!    SOURCE_DATE_EPOCH: two composes in separate cache dirs and repos give one commit
//!    checksum, and the raw and qcow2 images of the two commits have one sha256;
//! 2. one changed byte in an overlay file of base changes the tree (content checksum) and
//!    the commit;
//! 3. another epoch changes the commit;
//! 4. a recipe whose postprocess script writes the wall-clock time is caught by
//!    `verify-reproducible` (exit 1), which names the file, and so does diffoscope's report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EPOCH: u64 = 1_700_000_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kiln(epoch: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("SOURCE_DATE_EPOCH", epoch.to_string());
    c
}

fn run(mut c: Command, what: &str) -> Output {
    let t = std::time::Instant::now();
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "{what}: exit {:?} in {:.1} s",
        out.status.code(),
        t.elapsed().as_secs_f64()
    );
    out
}

fn ok_json(c: Command, what: &str) -> serde_json::Value {
    let out = run(c, what);
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: bad JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn compose(recipe: &Path, repo: &Path, cache: &Path, epoch: u64, what: &str) -> String {
    let mut c = kiln(epoch);
    c.arg("compose")
        .arg(recipe)
        .arg("--repo")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--json");
    let v = ok_json(c, what);
    v["commit"].as_str().unwrap().to_string()
}

fn content(repo: &Path, commit: &str) -> String {
    kiln::reproducible::content_checksum(repo, commit).unwrap()
}

/// Copies the cached bootstrap roots (the tree cache, `CACHE/trees`) of one cache dir into
/// another. A full copy: composes check roots out of it by hard links, so two caches must
/// not share inodes.
fn seed_bootstraps(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let st = Command::new("cp")
        .args(["-a"])
        .arg(from.join("trees"))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

struct Work(tempfile::TempDir);

impl Drop for Work {
    fn drop(&mut self) {
        // libostree makes deployment roots immutable (images built from the commits).
        let _ = Command::new("chattr")
            .args(["-R", "-i"])
            .arg(self.0.path())
            .output();
    }
}

#[test]
fn builds_are_bit_identical_and_differences_are_found() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test composes with mmdebstrap --mode=root and must run as root"
    );
    let base = std::env::var_os("KILN_TEST_TMPDIR").unwrap_or_else(|| "/var/tmp".into());
    let w = Work(
        tempfile::Builder::new()
            .prefix("kiln-repro-test")
            .tempdir_in(base)
            .unwrap(),
    );
    let w = w.0.path().to_path_buf();
    let recipe = root().join("recipes/base.toml");

    // 1. Two independent builds of recipes/base.toml.
    let vdir = w.join("verify");
    let mut c = kiln(EPOCH);
    c.arg("verify-reproducible")
        .arg(&recipe)
        .args(["--format", "raw,qcow2", "--work-dir"])
        .arg(&vdir)
        .arg("--json");
    let out = run(c, "verify-reproducible base");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify-reproducible: bad JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert!(
        out.status.success() && v["reproducible"] == true,
        "two builds of base differ: {}",
        v["differences"]
    );
    let commit = v["a"]["commit"].as_str().unwrap().to_string();
    assert_eq!(commit.len(), 64);
    assert_eq!(v["b"]["commit"], v["a"]["commit"]);
    assert_eq!(v["b"]["content_checksum"], v["a"]["content_checksum"]);
    assert_eq!(v["a"]["epoch"], EPOCH);
    for f in ["raw", "qcow2"] {
        let sa = v["a"]["images"][f].as_str().unwrap();
        assert_eq!(sa.len(), 64, "{f}");
        assert_eq!(v["b"]["images"][f].as_str(), Some(sa), "{f} images differ");
        // The image on disk is the one reported.
        let file = vdir.join("b").join(format!("disk.{f}"));
        assert_eq!(kiln::image::manifest::sha256_file(&file).unwrap(), sa);
    }
    let cache_a = vdir.join("a/cache");
    let repo_a = vdir.join("a/repo");
    let base_content = content(&repo_a, &commit);
    // No build path, host name or work dir anywhere in the commit's metadata.
    let r = kiln::repo::open(&repo_a).unwrap();
    let info = kiln::repo::read_commit(&r, &commit).unwrap();
    drop(r);
    let md = serde_json::to_string(&info.metadata).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        !md.contains(w.to_str().unwrap()),
        "work dir in metadata: {md}"
    );
    assert!(
        host.trim().len() < 4 || !md.contains(host.trim()),
        "host name {host:?} in metadata"
    );
    assert_eq!(info.timestamp, EPOCH);
    for k in [
        "kiln.inputhash",
        "kiln.version",
        "kiln.mirror-state",
        "kiln.source-date-epoch",
        "kiln.recipe-sha256",
    ] {
        assert!(
            info.metadata.contains_key(k),
            "{k} missing from the metadata"
        );
    }

    // 1b. The root built on disk instead of in memory (docs/compose.md, "Building"), from
    // a cache holding only build a's `.deb`s and apt lists: the same commit.
    let disk = w.join("on-disk");
    let disk_cache = disk.join("cache");
    std::fs::create_dir_all(&disk_cache).unwrap();
    for d in ["debs", "apt-lists"] {
        let st = Command::new("cp")
            .arg("-al")
            .arg(cache_a.join(d))
            .arg(&disk_cache)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut c = kiln(EPOCH);
    c.env("KILN_BOOTSTRAP_TMPFS", "0")
        .arg("compose")
        .arg(&recipe)
        .arg("--repo")
        .arg(disk.join("repo"))
        .arg("--cache-dir")
        .arg(&disk_cache)
        .arg("--json");
    let v = ok_json(c, "compose with the root built on disk");
    assert_eq!(v["reused"]["root"], "bootstrap", "{v}");
    assert_eq!(
        v["commit"].as_str(),
        Some(commit.as_str()),
        "the root built on disk gave another commit than the one built in memory"
    );

    // 2. One changed byte in an overlay file of base: the tree and the commit change.
    // Same packages, same epoch: the cached bootstrap of build a is legitimately reused.
    let d = w.join("overlay-byte");
    let rel = "usr/lib/systemd/network/80-kiln-dhcp.network";
    let mut bytes = std::fs::read(root().join("overlays/base").join(rel)).unwrap();
    assert_eq!(bytes[0], b'#', "{rel} no longer starts with a comment");
    bytes[2] = bytes[2].to_ascii_uppercase();
    let changed = d.join("overlay").join(rel);
    std::fs::create_dir_all(changed.parent().unwrap()).unwrap();
    std::fs::write(&changed, &bytes).unwrap();
    std::fs::write(
        d.join("r.toml"),
        format!(
            "include = [{:?}]\noverlays = [\"overlay\"]\n",
            recipe.display().to_string()
        ),
    )
    .unwrap();
    let repo = d.join("repo");
    let c = compose(&d.join("r.toml"), &repo, &cache_a, EPOCH, "overlay byte");
    assert_ne!(c, commit, "a changed overlay byte kept the commit");
    assert_ne!(
        content(&repo, &c),
        base_content,
        "a changed overlay byte kept the tree"
    );

    // 3. Another epoch: another commit (a new bootstrap: its key includes the epoch).
    let e = w.join("epoch");
    let other = compose(
        &recipe,
        &e.join("repo"),
        &cache_a,
        EPOCH + 86_400,
        "epoch+1d",
    );
    assert_ne!(other, commit, "a changed epoch kept the commit checksum");
    let r = kiln::repo::open(&e.join("repo")).unwrap();
    assert_eq!(
        kiln::repo::read_commit(&r, &other).unwrap().timestamp,
        EPOCH + 86_400
    );
    drop(r);

    // 4. A postprocess script that writes the wall-clock time is caught and named. Both
    // builds start from the same cached bootstrap (same packages and epoch as step 1).
    let cdir = w.join("clock");
    for side in ["a", "b"] {
        seed_bootstraps(&cache_a, &cdir.join(side).join("cache"));
    }
    let mut c = kiln(EPOCH);
    c.arg("verify-reproducible")
        .arg(root().join("tests/fixtures/reproducible/clock.toml"))
        .args(["--format", "none", "--work-dir"])
        .arg(&cdir);
    let out = run(c, "verify-reproducible clock");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the clock recipe was not reported as unreproducible; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("file /usr/lib/kiln-build-clock"),
        "the report does not name the file:\n{stdout}"
    );
    let report = std::fs::read_to_string(cdir.join("diffoscope.txt")).expect("diffoscope report");
    assert!(
        report.contains("usr/lib/kiln-build-clock"),
        "diffoscope's report does not name the file:\n{report}"
    );
    // Nothing else differs: the metadata only by what follows from the tree.
    for line in stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("file "))
    {
        assert!(
            line.contains("/usr/lib/kiln-build-clock"),
            "unexpected difference: {line}"
        );
    }
}
