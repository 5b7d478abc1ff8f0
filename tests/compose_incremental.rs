//! Incremental compose against a compose from an empty cache, with the real pipeline
//! (mmdebstrap against the configured mirror, dracut under strace, libostree). Needs root.
//!
//! Each test works in its own cache dirs (their `.deb`s and apt lists hardlinked from
//! `build/cache`, so no download is repeated; no cached root, no initramfs record). Each
//! incremental result is compared with a compose of the same inputs from such an empty
//! cache (OSTree content checksum of the root tree, and the metadata apart from parent,
//! version and subject).
//!
//! `package_changes_equal_composes_from_an_empty_cache`: a small recipe without kernel
//! (minbase and `jq`), so each compose from scratch is one mmdebstrap: `htop` added and
//! `jq` removed are built from the closest cached root by installing/removing just those
//! packages; a package with a maintainer script (`less`) makes the compose bootstrap
//! from scratch and say why.
//!
//! `overlay_and_dracut_changes_equal_a_compose_from_an_empty_cache`: the base recipe with
//! kernel and dracut, once from scratch:
//! 1. a first compose bootstraps, caches the root and builds the initramfs, whose record
//!    covers the kernel's modules, dracut's configuration and its module directories;
//! 2. one changed overlay file that dracut never reads: the root comes from the tree
//!    cache by hard links, the initramfs is reused, the commit re-hashes almost nothing,
//!    and the tree is the first one plus that file;
//! 3. one changed file of a dracut module (in the overlay): the initramfs is rebuilt, and
//!    the tree equals the one composed from an empty cache;
//! 4. a postprocess script that writes into a file of the root in place: the tree has it,
//!    and (5) with the script gone again the tree equals step 3's from-scratch tree: the
//!    script's write never reached the cache.

mod common;

use std::path::{Path, PathBuf};

const EPOCH: &str = "1700000000";

/// `build/cache`'s downloads, hardlinked once into `dir` while holding that cache's
/// compose lock; the seeds of the test's cache dirs are taken from this copy.
fn pristine(dir: &Path) -> PathBuf {
    let shared = common::project_root().join("build/cache");
    std::fs::create_dir_all(dir).unwrap();
    let _l = common::lock(&shared.join("lock"));
    link_caches(&shared, dir);
    dir.to_path_buf()
}

/// A cache dir with the pristine downloads and nothing else.
fn seeded_cache(pristine: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    link_caches(pristine, dir);
    dir.to_path_buf()
}

fn link_caches(from: &Path, to: &Path) {
    // Downloads only: a cached root (CACHE/trees) is checked out by hard links, and must
    // never share inodes with another cache dir's.
    for d in ["debs", "apt-lists"] {
        if from.join(d).is_dir() {
            let st = std::process::Command::new("cp")
                .arg("-al")
                .arg(from.join(d))
                .arg(to)
                .status()
                .unwrap();
            assert!(st.success(), "seeding {d}");
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

fn compose(recipe: &Path, repo: &Path, cache: &Path, what: &str) -> serde_json::Value {
    common::compose_timed(recipe, repo, cache, EPOCH, what)
}

fn content(repo: &Path, v: &serde_json::Value) -> String {
    kiln::reproducible::content_checksum(repo, v["commit"].as_str().unwrap()).unwrap()
}

/// The commit's metadata without what names its place in the ref's history (version,
/// and the recipe's `{serial}` expansion in it).
fn metadata(repo: &Path, v: &serde_json::Value) -> serde_json::Value {
    let r = kiln::repo::open(repo).unwrap();
    let c = kiln::repo::read_commit(&r, v["commit"].as_str().unwrap()).unwrap();
    let mut m = c.metadata;
    m.remove("version");
    serde_json::Value::Object(m)
}

/// The incremental result must be the from-scratch one: fails loudly with both checksums
/// and `ostree diff`'s list of what differs.
fn assert_same_tree(
    what: &str,
    inc: (&Path, &serde_json::Value),
    scratch: (&Path, &serde_json::Value),
) {
    let a = content(inc.0, inc.1);
    let b = content(scratch.0, scratch.1);
    assert_eq!(
        metadata(inc.0, inc.1),
        metadata(scratch.0, scratch.1),
        "{what}: the commit metadata differ"
    );
    if a != b {
        let (ci, cs) = (
            inc.1["commit"].as_str().unwrap(),
            scratch.1["commit"].as_str().unwrap(),
        );
        let diff = ostree_diff(inc.0, scratch.0, ci, cs);
        panic!(
            "{what}: the incremental tree ({ci}) differs from the tree composed from an \
             empty cache ({cs}):\n{diff}"
        );
    }
}

/// `ostree diff` of commit `a` of repo `ra` against commit `b` of repo `rb` (pulled in).
fn ostree_diff(ra: &Path, rb: &Path, a: &str, b: &str) -> String {
    let repo = format!("--repo={}", ra.display());
    let _ = std::process::Command::new("ostree")
        .args([repo.as_str(), "pull-local"])
        .arg(rb)
        .arg(b)
        .status();
    let out = std::process::Command::new("ostree")
        .args([repo.as_str(), "diff", a, b])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut text = list.clone() + &String::from_utf8_lossy(&out.stderr);
    // The first lines of what changed in each modified file.
    for path in list
        .lines()
        .filter_map(|l| l.strip_prefix('M'))
        .map(str::trim)
        .take(5)
    {
        let cat = |c: &str| {
            let o = std::process::Command::new("ostree")
                .args([repo.as_str(), "cat", c, path])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let (x, y) = (cat(a), cat(b));
        let (xl, yl): (Vec<&str>, Vec<&str>) = (x.lines().collect(), y.lines().collect());
        text.push_str(&format!("--- {path}\n"));
        let mut shown = 0;
        for i in 0..xl.len().max(yl.len()) {
            let (l, r) = (xl.get(i).copied(), yl.get(i).copied());
            if l != r && shown < 12 {
                text.push_str(&format!("  line {}: {l:?} / {r:?}\n", i + 1));
                shown += 1;
            }
        }
    }
    text
}

/// The one kept initramfs record of a cache dir.
fn record(cache: &Path) -> serde_json::Value {
    let dir = cache.join("initramfs");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let text = std::fs::read(entries[0].join("manifest.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// A small recipe without kernel: minbase plus `packages`.
fn small_recipe(dir: &Path, packages: &[&str]) -> PathBuf {
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "name = \"small\"\nref = \"kiln/test/small\"\nversion = \"1.{{serial}}\"\n\
         suite = \"bookworm\"\ncomponents = [\"main\"]\npackages = [{}]\n",
        list.join(", ")
    );
    let p = dir.join("small.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The `name=version` list of a commit's packages.
fn packages(repo: &Path, v: &serde_json::Value) -> Vec<String> {
    let m = metadata(repo, v);
    m["kiln.packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn has_package(list: &[String], name: &str) -> bool {
    list.iter().any(|p| p.split('=').next() == Some(name))
}

#[test]
fn package_changes_equal_composes_from_an_empty_cache() {
    let root = common::project_root();
    let td = tempfile::Builder::new()
        .prefix("kiln-incremental-pkgs-")
        .tempdir_in(root.join("build"))
        .unwrap();
    let w = td.path();
    let seed = pristine(&w.join("seed"));
    let cache = seeded_cache(&seed, &w.join("cache"));
    let repo = w.join("repo");
    let rdir = w.join("recipe");
    std::fs::create_dir_all(&rdir).unwrap();
    let scratch = |name: &str, pkgs: &[&str]| {
        let d = w.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let r = small_recipe(&d, pkgs);
        let c = seeded_cache(&seed, &d.join("cache"));
        let v = compose(&r, &d.join("repo"), &c, &format!("{name}, empty cache"));
        assert_eq!(v["reused"]["root"], "bootstrap", "{v}");
        (d.join("repo"), v)
    };

    // The first compose bootstraps.
    let r = small_recipe(&rdir, &["jq"]);
    let v0 = compose(&r, &repo, &cache, "minbase + jq");
    assert_eq!(v0["reused"]["root"], "bootstrap", "{v0}");
    assert_eq!(v0["reused"]["initramfs"], false, "{v0}");
    assert!(has_package(&packages(&repo, &v0), "jq"));

    // htop added: only htop and its libraries are installed, on the cached root.
    small_recipe(&rdir, &["jq", "htop"]);
    let v1 = compose(&r, &repo, &cache, "htop added");
    assert_eq!(v1["reused"]["root"], "packages", "{v1}");
    let inst: Vec<&str> = v1["reused"]["packages"]["installed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(inst.iter().any(|p| p.starts_with("htop=")), "{v1}");
    assert!(inst.len() <= 6, "only htop and its libraries: {v1}");
    assert!(
        v1["reused"]["files_not_rehashed"].as_u64().unwrap() > 2000,
        "the commit takes the cached root's files by dev/ino: {v1}"
    );
    let (s1r, s1) = scratch("scratch-htop", &["jq", "htop"]);
    assert_same_tree("htop added", (&repo, &v1), (&s1r, &s1));

    // jq removed: purged with the libraries nothing else needs.
    small_recipe(&rdir, &["htop"]);
    let v2 = compose(&r, &repo, &cache, "jq removed");
    assert_eq!(v2["reused"]["root"], "packages", "{v2}");
    let removed = v2["reused"]["packages"]["removed"].to_string();
    assert!(
        removed.contains("\"jq\"") && removed.contains("libjq1"),
        "{v2}"
    );
    let p2 = packages(&repo, &v2);
    assert!(
        !has_package(&p2, "jq") && !has_package(&p2, "libonig5"),
        "{p2:?}"
    );
    let (s2r, s2) = scratch("scratch-nojq", &["htop"]);
    assert_same_tree("jq removed", (&repo, &v2), (&s2r, &s2));

    // A package with a maintainer script: bootstrapped from scratch, and said why.
    small_recipe(&rdir, &["htop", "less"]);
    let v3 = compose(&r, &repo, &cache, "less added");
    assert_eq!(v3["reused"]["root"], "bootstrap", "{v3}");
    let why = v3["reused"]["why_not"]["bootstrap"].as_str().unwrap_or("");
    assert!(
        why.contains("less has a") && why.contains("maintainer script"),
        "{v3}"
    );

    // jq back: the two most recent roots are kept (htop; htop and less), so jq is
    // installed on the first; the tree is step 2's from-scratch one.
    small_recipe(&rdir, &["jq", "htop"]);
    let v4 = compose(&r, &repo, &cache, "jq back");
    assert_eq!(v4["reused"]["root"], "packages", "{v4}");
    assert_same_tree("jq back", (&repo, &v4), (&s1r, &s1));
}

#[test]
fn overlay_and_dracut_changes_equal_a_compose_from_an_empty_cache() {
    let root = common::project_root();
    let td = tempfile::Builder::new()
        .prefix("kiln-incremental-")
        .tempdir_in(root.join("build"))
        .unwrap();
    let w = td.path();
    for d in ["recipes", "overlays"] {
        copy_tree(&root.join(d), &w.join(d));
    }
    let recipe = w.join("recipes/base.toml");
    let seed = pristine(&w.join("seed"));
    let cache = seeded_cache(&seed, &w.join("cache"));
    let repo = w.join("repo");

    // 1. The first compose builds and keeps the initramfs.
    let v1 = compose(&recipe, &repo, &cache, "first compose");
    assert_eq!(v1["reused"]["initramfs"], false, "{v1}");
    let rec = record(&cache);
    let inputs = rec["inputs"].as_object().unwrap();
    let has = |f: &dyn Fn(&str, &serde_json::Value) -> bool| {
        inputs.iter().any(|(p, v)| f(p, &v[1]["state"]))
    };
    assert!(
        has(&|p, s| p.contains("/modules/") && p.ends_with(".ko") && s["kind"] == "file"),
        "the record covers the kernel's modules"
    );
    assert!(
        has(&|p, s| p.ends_with("/modules.dep.bin") && s["kind"] == "file"),
        "the record covers the kernel's module index"
    );
    assert!(
        has(&|p, s| p == "/etc/dracut.conf.d" && s["entries"].is_array()),
        "the record lists dracut's configuration directory"
    );
    assert!(
        has(&|p, s| p.starts_with("/usr/lib/dracut/modules.d/") && s["kind"] == "file"),
        "the record covers dracut's module files"
    );
    assert!(
        has(&|_, s| s["kind"] == "missing"),
        "the record holds what dracut looked for and did not find"
    );

    // 2. An overlay file dracut never reads: the first tree plus that file.
    let added = w.join("overlays/base/usr/share/kiln-incremental-test");
    std::fs::create_dir_all(added.parent().unwrap()).unwrap();
    std::fs::write(&added, "changed\n").unwrap();
    let v2 = compose(&recipe, &repo, &cache, "overlay change");
    assert_eq!(v2["reused"]["initramfs"], true, "{v2}");
    assert_eq!(v2["reused"]["bootstrap"], true, "{v2}");
    let linked = v2["reused"]["files_linked"].as_u64().unwrap();
    let unhashed = v2["reused"]["files_not_rehashed"].as_u64().unwrap();
    assert!(
        linked > 5000,
        "the root is hard-linked from the tree cache: {v2}"
    );
    assert!(
        unhashed * 10 > linked * 8,
        "the commit re-hashes only what changed: {v2}"
    );
    let (c1, c2) = (
        v1["commit"].as_str().unwrap(),
        v2["commit"].as_str().unwrap(),
    );
    let diff = ostree_diff(&repo, &repo, c1, c2);
    let lines: Vec<&str> = diff.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with('A')
            && lines[0].ends_with(" /usr/share/kiln-incremental-test"),
        "the overlay file is the only difference:\n{diff}"
    );

    // 3. A file of one of kiln's dracut modules.
    let module = w.join("overlays/base/usr/lib/dracut/modules.d");
    let file = std::fs::read_dir(&module)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("module-setup.sh"))
        .find(|p| p.is_file())
        .expect("a dracut module in overlays/base");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n# changed by the incremental compose test\n");
    std::fs::write(&file, text).unwrap();
    let v3 = compose(&recipe, &repo, &cache, "dracut module change");
    assert_eq!(v3["reused"]["initramfs"], false, "{v3}");
    assert!(v3["reused"]["why_not"]["initramfs"].is_string(), "{v3}");
    let scratch3 = w.join("scratch3");
    let c3 = seeded_cache(&seed, &scratch3.join("cache"));
    let s3 = compose(
        &recipe,
        &scratch3.join("repo"),
        &c3,
        "module change, empty cache",
    );
    assert_eq!(s3["reused"]["initramfs"], false, "{s3}");
    assert_same_tree(
        "overlay and dracut module change",
        (&repo, &v3),
        (&scratch3.join("repo"), &s3),
    );
    assert_ne!(content(&repo, &v2), content(&repo, &v3));

    // 4. A script that appends to a file of the root: the tree has the change...
    let text = std::fs::read_to_string(&recipe).unwrap();
    let script = w.join("recipes/append.sh");
    std::fs::write(
        &script,
        "echo '# appended in place' >> /usr/share/base-files/motd\n",
    )
    .unwrap();
    let with_script = text.replacen(
        "\nremove-files = [",
        "\npostprocess = [\"append.sh\"]\n\nremove-files = [",
        1,
    );
    assert_ne!(text, with_script, "the recipe has a remove-files list");
    std::fs::write(&recipe, &with_script).unwrap();
    let v4 = compose(&recipe, &repo, &cache, "script writing in place");
    assert_eq!(v4["reused"]["bootstrap"], true, "{v4}");
    let r = kiln::repo::open(&repo).unwrap();
    let t = kiln::repo::tree::CommitTree::open(&r, v4["commit"].as_str().unwrap()).unwrap();
    let motd = t
        .read("/usr/share/base-files/motd")
        .expect("motd in the tree");
    assert!(
        String::from_utf8_lossy(&motd).contains("# appended in place"),
        "the script ran on the tree"
    );

    // 5. ...and never reached the cache: without the script the tree is step 3's again.
    std::fs::write(&recipe, &text).unwrap();
    let v5 = compose(&recipe, &repo, &cache, "script removed");
    assert_eq!(v5["reused"]["bootstrap"], true, "{v5}");
    assert_same_tree(
        "script removed",
        (&repo, &v5),
        (&scratch3.join("repo"), &s3),
    );
}

/// Runs a program of the test's setup, failing loudly.
fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway signing key in `gnupg` (its own GNUPGHOME); returns its public keyring.
fn signing_key(gnupg: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(gnupg).unwrap();
    std::fs::set_permissions(gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let gpg = || {
        let mut c = std::process::Command::new("gpg");
        c.env("GNUPGHOME", gnupg).args(["--batch", "--no-tty"]);
        c
    };
    run(gpg().args([
        "--passphrase",
        "",
        "--quick-gen-key",
        "kiln upgrade test <kiln-test@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]));
    let out = gpg().arg("--export").output().unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    out.stdout
}

/// A flat apt repository in `dir` holding `kiln-upgrade-test` at `version` (a file under
/// /usr/share, no maintainer scripts), its InRelease signed with the key in `gnupg`.
fn local_repo(dir: &Path, gnupg: &Path, version: &str) {
    use sha2::{Digest, Sha256};
    let pkg = dir.join("build");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/kiln-upgrade-test")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: kiln-upgrade-test\nVersion: {version}\nArchitecture: all\n\
             Maintainer: kiln tests <kiln-test@example.invalid>\nPriority: optional\n\
             Section: misc\nDescription: a package of kiln's upgrade test\n"
        ),
    )
    .unwrap();
    std::fs::write(
        pkg.join("usr/share/kiln-upgrade-test/version"),
        format!("{version}\n"),
    )
    .unwrap();
    let deb = dir.join(format!("kiln-upgrade-test_{version}_all.deb"));
    run(std::process::Command::new("dpkg-deb")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&pkg)
        .arg(&deb));
    std::fs::remove_dir_all(&pkg).unwrap();
    let packages = run(std::process::Command::new("dpkg-scanpackages")
        .current_dir(dir)
        .args(["-m", ".", "/dev/null"]));
    std::fs::write(dir.join("Packages"), &packages).unwrap();
    let release = format!(
        "Origin: kiln-test\nLabel: kiln-test\nDate: Tue, 14 Nov 2023 22:13:20 UTC\n\
         SHA256:\n {} {} Packages\n",
        hex::encode(Sha256::digest(packages.as_bytes())),
        packages.len()
    );
    std::fs::write(dir.join("Release"), release).unwrap();
    run(std::process::Command::new("gpg")
        .env("GNUPGHOME", gnupg)
        .args(["--batch", "--no-tty", "--yes", "--clearsign", "-o"])
        .arg(dir.join("InRelease"))
        .arg(dir.join("Release")));
}

/// The small recipe with `packages` and one flat repository at `repo`, signed by
/// `keys/test.gpg` next to the recipe.
fn recipe_with_repo(dir: &Path, packages: &[&str], repo: &Path) -> PathBuf {
    let r = small_recipe(dir, packages);
    let mut text = std::fs::read_to_string(&r).unwrap();
    text.push_str(&format!(
        "\n[[repositories]]\nuri = \"file://{}\"\nsuite = \"./\"\nsigned-by = \"keys/test.gpg\"\n",
        repo.display()
    ));
    std::fs::write(&r, text).unwrap();
    r
}

#[test]
fn an_upgrade_from_another_repository_equals_a_compose_from_an_empty_cache() {
    let root = common::project_root();
    let td = tempfile::Builder::new()
        .prefix("kiln-incremental-upgrade-")
        .tempdir_in(root.join("build"))
        .unwrap();
    let w = td.path();
    let gnupg = w.join("gnupg");
    let key = signing_key(&gnupg);
    let (repo_a, repo_b) = (w.join("repo-a"), w.join("repo-b"));
    for (d, v) in [(&repo_a, "1.0"), (&repo_b, "2.0")] {
        std::fs::create_dir_all(d).unwrap();
        local_repo(d, &gnupg, v);
    }
    let seed = pristine(&w.join("seed"));
    let cache = seeded_cache(&seed, &w.join("cache"));
    let repo = w.join("repo");
    let rdir = w.join("recipe");
    std::fs::create_dir_all(rdir.join("keys")).unwrap();
    std::fs::write(rdir.join("keys/test.gpg"), &key).unwrap();
    let pkgs = ["jq", "kiln-upgrade-test"];
    let in_tree = |repo: &Path, v: &serde_json::Value, path: &str| -> Vec<u8> {
        let r = kiln::repo::open(repo).unwrap();
        let t = kiln::repo::tree::CommitTree::open(&r, v["commit"].as_str().unwrap()).unwrap();
        t.read(path).unwrap_or_else(|| panic!("{path} in the tree"))
    };

    // Version 1.0, pinned by being the only one repository A has.
    let r = recipe_with_repo(&rdir, &pkgs, &repo_a);
    let v0 = compose(&r, &repo, &cache, "repository A (1.0)");
    assert_eq!(v0["reused"]["root"], "bootstrap", "{v0}");
    assert!(packages(&repo, &v0).contains(&"kiln-upgrade-test=1.0".to_string()));
    assert_eq!(
        in_tree(&repo, &v0, "/usr/share/kiln-upgrade-test/version"),
        b"1.0\n"
    );
    // The tree's apt sources name the keyring's copy in the tree, not the build host's.
    let list = String::from_utf8(in_tree(
        &repo,
        &v0,
        "/usr/etc/apt/sources.list.d/0000sources.list",
    ))
    .unwrap();
    let line = list.lines().last().unwrap();
    assert!(
        line.starts_with("deb [signed-by=/etc/apt/keyrings/kiln-")
            && line.ends_with(&format!(".gpg] file://{} ./", repo_a.display())),
        "{list}"
    );
    let kpath = line
        .split("signed-by=")
        .nth(1)
        .and_then(|x| x.split(']').next())
        .unwrap();
    assert_eq!(in_tree(&repo, &v0, &format!("/usr{kpath}")), key);
    assert!(!list.contains(&rdir.display().to_string()), "{list}");

    // Repository B has 2.0: the same recipe pointed at it.
    recipe_with_repo(&rdir, &pkgs, &repo_b);
    let v1 = compose(&r, &repo, &cache, "repository B (2.0)");
    // Built from the cached root: the lists updated, the package upgraded.
    assert_eq!(v1["reused"]["root"], "packages", "{v1}");
    assert_eq!(
        v1["reused"]["packages"]["upgraded"],
        serde_json::json!(["kiln-upgrade-test=1.0->2.0"]),
        "{v1}"
    );
    assert!(packages(&repo, &v1).contains(&"kiln-upgrade-test=2.0".to_string()));
    assert_eq!(
        in_tree(&repo, &v1, "/usr/share/kiln-upgrade-test/version"),
        b"2.0\n"
    );

    // The same recipe in another directory, composed from an empty cache.
    let sdir = w.join("scratch");
    copy_tree(&rdir, &sdir.join("recipe"));
    let sc = seeded_cache(&seed, &sdir.join("cache"));
    let s1 = compose(
        &sdir.join("recipe/small.toml"),
        &sdir.join("repo"),
        &sc,
        "repository B, empty cache",
    );
    assert_eq!(s1["reused"]["root"], "bootstrap", "{s1}");
    assert_same_tree(
        "upgrade by another repository",
        (&repo, &v1),
        (&sdir.join("repo"), &s1),
    );

    // Nothing changed: the repository's InRelease is part of the input hash, unchanged.
    let v2 = common::compose(&r, &repo, &cache, &[("SOURCE_DATE_EPOCH", EPOCH)]);
    assert_eq!(v2["skipped"], true, "{v2}");
}
