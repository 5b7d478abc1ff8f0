//! `cargo bench --bench compose`: a real compose of `recipes/base.toml` (or
//! `KILN_BENCH_RECIPE`) into a fresh repo, with per-stage seconds; kiln's commit step
//! against `ostree commit` on the same tree (bare-user); a no-change recompose; peak RSS.
//! Then the incremental cases, each beside the from-scratch figure (issue 25): one
//! changed overlay file, one added package (`htop`), and two cold composes (empty cache
//! but the `.deb`s: the first learns the epoch, the second has it in SOURCE_DATE_EPOCH)
//! against a bare `mmdebstrap --variant=minbase --include=<packages>` in the same run,
//! with the cold initramfs stage. Goals are printed next to the measurements,
//! never asserted.

mod common;

use common::{bench_recipe, root, run_measured, self_maxrss_mib};
use std::path::Path;
use std::time::Instant;

fn kiln_compose(
    recipe: &Path,
    repo: &Path,
    cache: &Path,
    keep: Option<&Path>,
) -> (serde_json::Value, f64, f64) {
    kiln_compose_env(recipe, repo, cache, keep, &[])
}

fn kiln_compose_env(
    recipe: &Path,
    repo: &Path,
    cache: &Path,
    keep: Option<&Path>,
    env: &[(&str, String)],
) -> (serde_json::Value, f64, f64) {
    let mut c = std::process::Command::new(common::KILN);
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg("compose")
        .arg(recipe)
        .arg("--repo")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--json");
    if let Some(k) = keep {
        c.arg("--keep-tree").arg(k);
    }
    let (out, secs, rss) = run_measured(&mut c);
    (
        serde_json::from_slice(&out).expect("compose JSON"),
        secs,
        rss,
    )
}

fn main() {
    if common::listing() {
        return;
    }
    let recipe = bench_recipe();
    let cache = root().join("build/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::Builder::new()
        .prefix("kiln-bench-")
        .tempdir_in(&cache)
        .unwrap();
    let repo = work.path().join("repo");
    let tree = work.path().join("tree");

    println!("kiln compose benchmark: {}", recipe.display());
    let (v, total, rss_full) = kiln_compose(&recipe, &repo, &cache, Some(&tree));
    println!(
        "full compose (warm .deb cache): {total:.1} s, commit {}",
        v["commit"]
    );
    if let Some(stages) = v["stages"].as_object() {
        for (k, s) in stages {
            println!("  stage {k:<12} {:>7.2} s", s.as_f64().unwrap_or(0.0));
        }
    }

    // Commit step: kiln (libostree in-process) vs the ostree CLI, same tree, fresh
    // bare-user repos; best of two each.
    let mut ours = f64::MAX;
    let mut cli = f64::MAX;
    let rss_before = self_maxrss_mib();
    for i in 0..2 {
        let a = work.path().join(format!("a{i}"));
        let r = kiln::repo::open_or_create(&a, kiln::repo::RepoMode::BareUser).unwrap();
        let t = Instant::now();
        kiln::repo::commit_dir(
            &r,
            &tree,
            &kiln::repo::CommitOptions {
                ref_: "bench".into(),
                timestamp: 0,
                bootable: true,
                ..Default::default()
            },
        )
        .unwrap();
        ours = ours.min(t.elapsed().as_secs_f64());
        drop(r);
        std::fs::remove_dir_all(&a).unwrap();

        let b = work.path().join(format!("b{i}"));
        let st = std::process::Command::new("ostree")
            .arg(format!("--repo={}", b.display()))
            .args(["init", "--mode=bare-user"])
            .status()
            .unwrap();
        assert!(st.success());
        let (_, secs, _) = run_measured(
            std::process::Command::new("ostree")
                .arg(format!("--repo={}", b.display()))
                .args(["commit", "-b", "bench", "--timestamp=@0"])
                .arg(format!("--tree=dir={}", tree.display())),
        );
        cli = cli.min(secs);
        std::fs::remove_dir_all(&b).unwrap();
    }
    let rss_commit = self_maxrss_mib().max(rss_before);

    let (v2, nochange, rss_nochange) = kiln_compose(&recipe, &repo, &cache, None);
    assert_eq!(v2["skipped"], serde_json::Value::Bool(true), "{v2}");
    let inc = incremental(&recipe, work.path(), &cache, nochange);

    println!();
    println!("{:<44} {:>10} {:>14}", "measure", "value", "goal");
    println!(
        "{:<44} {:>9.2}s {:>14}",
        "commit: kiln (libostree, bare-user)", ours, ""
    );
    println!(
        "{:<44} {:>9.2}s {:>14}",
        "commit: ostree CLI (bare-user)", cli, ""
    );
    println!(
        "{:<44} {:>9.2}x {:>14}",
        "commit ratio kiln/CLI",
        ours / cli,
        "<= 1.0x"
    );
    println!(
        "{:<44} {:>7.1}MiB {:>14}",
        "peak RSS, kiln commit (in process)", rss_commit, "< 100 MB"
    );
    println!(
        "{:<44} {:>7.1}MiB {:>14}",
        "peak RSS, no-change compose", rss_nochange, "< 100 MB"
    );
    println!(
        "{:<44} {:>7.1}MiB {:>14}",
        "peak RSS, full compose incl. apt/dracut", rss_full, "(info)"
    );
    for (what, value, goal) in inc {
        // Ratios ("… / bare mmdebstrap") in x, everything else in seconds.
        let unit = if what.contains("/ ") { "x" } else { "s" };
        println!("{what:<44} {value:>9.2}{unit} {goal:>14}");
    }
}

/// A copy of the recipe's directory tree (recipes/ and overlays/ side by side).
fn copy_recipe(recipe: &Path, dir: &Path) -> std::path::PathBuf {
    let src = recipe.parent().unwrap().parent().unwrap();
    for d in ["recipes", "overlays"] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(src.join(d))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    dir.join("recipes").join(recipe.file_name().unwrap())
}

fn show(what: &str, v: &serde_json::Value, secs: f64) {
    println!("{what}: {secs:.1} s, reused {}", v["reused"]);
    if let Some(stages) = v["stages"].as_object() {
        for (k, s) in stages {
            println!("  stage {k:<12} {:>7.2} s", s.as_f64().unwrap_or(0.0));
        }
    }
}

/// A cache dir `dir/name` with `cache`'s `.deb`s and apt lists (hard links) only.
fn cold_cache(cache: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let c = dir.join(name);
    std::fs::create_dir_all(&c).unwrap();
    for d in ["debs", "apt-lists"] {
        let st = std::process::Command::new("cp")
            .arg("-al")
            .arg(cache.join(d))
            .arg(&c)
            .status()
            .unwrap();
        assert!(st.success());
    }
    c
}

/// A commit's timestamp (seconds since the epoch).
fn commit_timestamp(repo: &Path, commit: &str) -> u64 {
    let r = kiln::repo::open(repo).unwrap();
    let (v, _) = r.load_commit(commit).unwrap();
    ostree::commit_get_timestamp(&v)
}

/// The incremental cases, each composed on a warm cache after the full compose, and a
/// cold compose (empty cache but the `.deb`s) whose time each is shown beside: (measure,
/// seconds, goal) rows for the table.
fn incremental(
    recipe: &Path,
    work: &Path,
    cache: &Path,
    nochange: f64,
) -> Vec<(String, f64, String)> {
    let mut rows = Vec::new();
    let dir = work.join("inc");
    std::fs::create_dir_all(&dir).unwrap();
    let r = copy_recipe(recipe, &dir);
    let repo = dir.join("repo");
    let (v, base, _) = kiln_compose(&r, &repo, cache, None);
    show("incremental base (copied recipe)", &v, base);

    // One overlay file changed.
    let f = dir.join("overlays/base/usr/share/kiln-bench-overlay");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, "1\n").unwrap();
    let (v, overlay, _) = kiln_compose(&r, &repo, cache, None);
    show("one overlay file changed", &v, overlay);

    // One package added.
    let text = std::fs::read_to_string(&r).unwrap();
    let added = text.replacen("packages = [", "packages = [\n    \"htop\",", 1);
    assert_ne!(text, added, "the recipe has a packages list");
    std::fs::write(&r, added).unwrap();
    let (v, htop, _) = kiln_compose(&r, &repo, cache, None);
    show("htop added", &v, htop);
    // "packages": only htop and its libraries installed on the cached root.
    println!(
        "  root: {} (installed {}; not reused because: {})",
        v["reused"]["root"],
        v["reused"]["packages"]["installed"],
        v["reused"]["why_not"]["bootstrap"]
    );

    // Cold: a cache with the .debs and apt lists only, against bare mmdebstrap. Twice:
    // as a new user's first compose (no epoch known: one mmdebstrap run to learn the
    // newest changelog date, one to build), and with SOURCE_DATE_EPOCH set to that date
    // (as CI sets it, or as kiln remembers it per package set): one mmdebstrap run, like
    // the bare one.
    std::fs::write(&r, &text).unwrap();
    let (v, cold_learn, _) = kiln_compose(
        &r,
        &dir.join("cold-repo"),
        &cold_cache(cache, &dir, "cold-cache"),
        None,
    );
    show("cold compose, epoch learned", &v, cold_learn);
    let epoch = commit_timestamp(&dir.join("cold-repo"), v["commit"].as_str().unwrap());
    let (v, cold, _) = kiln_compose_env(
        &r,
        &dir.join("cold-repo2"),
        &cold_cache(cache, &dir, "cold-cache2"),
        None,
        &[("SOURCE_DATE_EPOCH", epoch.to_string())],
    );
    show("cold compose, SOURCE_DATE_EPOCH set", &v, cold);
    let initrd = v["stages"]["initramfs"].as_f64().unwrap_or(0.0);
    for (what, secs, goal) in [
        ("no change", nochange, "<= 0.5 s"),
        ("one overlay file changed", overlay, "<= 8 s"),
        ("htop added", htop, "<= 30 s"),
    ] {
        rows.push((
            format!("{what} (from scratch {cold:.0} s)"),
            secs,
            goal.to_string(),
        ));
    }
    let shown = std::process::Command::new(common::KILN)
        .args(["recipe", "show", "--json"])
        .arg(&r)
        .output()
        .unwrap();
    let rj: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("recipe JSON");
    let pkgs: Vec<&str> = rj["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    let suite = rj["suite"].as_str().unwrap_or("bookworm");
    let t = Instant::now();
    let st = std::process::Command::new("mmdebstrap")
        .args(["--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={}", pkgs.join(",")))
        .arg(suite)
        .arg(dir.join("bare-root"))
        .env("INITRD", "No")
        .status()
        .unwrap();
    assert!(st.success(), "bare mmdebstrap");
    let bare = t.elapsed().as_secs_f64();
    rows.push((
        "bare mmdebstrap, same packages".into(),
        bare,
        "(info)".into(),
    ));
    rows.push((
        "cold compose, epoch learned".into(),
        cold_learn,
        "(info)".into(),
    ));
    rows.push((
        "  / bare mmdebstrap".into(),
        cold_learn / bare,
        "(info)".into(),
    ));
    rows.push((
        "cold compose, SOURCE_DATE_EPOCH".into(),
        cold,
        "(info)".into(),
    ));
    rows.push(("  / bare mmdebstrap".into(), cold / bare, "<= 0.6x".into()));
    rows.push(("initramfs stage, cold".into(), initrd, "<= 20 s".into()));
    rows
}
