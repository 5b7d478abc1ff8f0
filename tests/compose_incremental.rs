//! Incremental compose against a compose from an empty cache, with the real pipeline
//! (mmdebstrap against the configured mirror, dracut under strace, libostree). Needs root.
//!
//! One test, in order, in its own cache dirs (their `.deb`s and apt lists hardlinked from
//! `build/cache`, so no download is repeated; no cached root, no initramfs record). Each
//! incremental result is compared with a compose of the same inputs from such an empty
//! cache (OSTree content checksum of the root tree, and the metadata apart from parent,
//! version and subject), or with an earlier one of the same inputs:
//! 1. a first compose bootstraps, caches the root and builds the initramfs, whose record
//!    covers the kernel's modules, dracut's configuration and its module directories;
//! 2. one changed overlay file that dracut never reads: the root comes from the tree
//!    cache by hard links, the initramfs is reused, the commit re-hashes almost nothing;
//! 3. one changed file of a dracut module (in the overlay): the initramfs is rebuilt;
//! 4. a package added (`htop`): bootstrapped again, equal to the from-scratch tree;
//! 5. the package removed again: the cached root of step 3 is reused, and the tree equals
//!    step 3's from-scratch tree;
//! 6. a postprocess script that writes into a file of the root in place: the tree has it,
//!    and (7) with the script gone again the tree equals step 3's: the script's write
//!    never reached the cache.

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
    let t = std::time::Instant::now();
    let v = common::compose(recipe, repo, cache, &[("SOURCE_DATE_EPOCH", EPOCH)]);
    eprintln!(
        "{what}: {:.1} s, reused {}, stages {}",
        t.elapsed().as_secs_f64(),
        v["reused"],
        v["stages"]
    );
    assert_eq!(v["skipped"], serde_json::Value::Bool(false), "{what}: {v}");
    v
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

/// The incremental result must be the from-scratch one: fails loudly with both checksums.
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
    assert_eq!(
        a, b,
        "{what}: the incremental tree ({}) differs from the tree composed from an empty \
         cache ({}); compare them with `ostree diff`",
        inc.1["commit"], scratch.1["commit"]
    );
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

#[test]
fn incremental_composes_equal_composes_from_an_empty_cache() {
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

    // 2. An overlay file dracut never reads.
    let motd = w.join("overlays/base/usr/share/kiln-incremental-test");
    std::fs::create_dir_all(motd.parent().unwrap()).unwrap();
    std::fs::write(&motd, "changed\n").unwrap();
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
    let scratch2 = w.join("scratch2");
    let c2 = seeded_cache(&seed, &scratch2.join("cache"));
    let s2 = compose(
        &recipe,
        &scratch2.join("repo"),
        &c2,
        "overlay change, empty cache",
    );
    assert_eq!(s2["reused"]["initramfs"], false, "{s2}");
    assert_same_tree(
        "overlay change",
        (&repo, &v2),
        (&scratch2.join("repo"), &s2),
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
    let scratch3 = w.join("scratch3");
    let c3 = seeded_cache(&seed, &scratch3.join("cache"));
    let s3 = compose(
        &recipe,
        &scratch3.join("repo"),
        &c3,
        "module change, empty cache",
    );
    assert_same_tree(
        "dracut module change",
        (&repo, &v3),
        (&scratch3.join("repo"), &s3),
    );
    assert_ne!(content(&repo, &v2), content(&repo, &v3));

    // 4. A package added: bootstrapped again (the root's key changed).
    let text = std::fs::read_to_string(&recipe).unwrap();
    let added = text.replacen("packages = [", "packages = [\n    \"htop\",", 1);
    assert_ne!(text, added, "the recipe has a packages list");
    std::fs::write(&recipe, &added).unwrap();
    let v4 = compose(&recipe, &repo, &cache, "htop added");
    assert_eq!(v4["reused"]["bootstrap"], false, "{v4}");
    let scratch4 = w.join("scratch4");
    let c4 = seeded_cache(&seed, &scratch4.join("cache"));
    let s4 = compose(
        &recipe,
        &scratch4.join("repo"),
        &c4,
        "htop added, empty cache",
    );
    assert_same_tree("htop added", (&repo, &v4), (&scratch4.join("repo"), &s4));
    assert_ne!(content(&repo, &v3), content(&repo, &v4));

    // 5. Removed again: step 3's cached root is reused.
    std::fs::write(&recipe, &text).unwrap();
    let v5 = compose(&recipe, &repo, &cache, "htop removed");
    assert_eq!(v5["reused"]["bootstrap"], true, "{v5}");
    assert_same_tree("htop removed", (&repo, &v5), (&scratch3.join("repo"), &s3));

    // 6. A script that appends to a file of the root: the tree has the change...
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
    let v6 = compose(&recipe, &repo, &cache, "script writing in place");
    assert_eq!(v6["reused"]["bootstrap"], true, "{v6}");
    let r = kiln::repo::open(&repo).unwrap();
    let t = kiln::repo::tree::CommitTree::open(&r, v6["commit"].as_str().unwrap()).unwrap();
    let motd = t
        .read("/usr/share/base-files/motd")
        .expect("motd in the tree");
    assert!(
        String::from_utf8_lossy(&motd).contains("# appended in place"),
        "the script ran on the tree"
    );

    // 7. ...and never reached the cache: without the script the tree is step 3's again.
    std::fs::write(&recipe, &text).unwrap();
    let v7 = compose(&recipe, &repo, &cache, "script removed");
    assert_eq!(v7["reused"]["bootstrap"], true, "{v7}");
    assert_same_tree(
        "script removed",
        (&repo, &v7),
        (&scratch3.join("repo"), &s3),
    );
}
