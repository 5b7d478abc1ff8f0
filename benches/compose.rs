//! `cargo bench --bench compose`: a real compose of `recipes/base.toml` (or
//! `KILN_BENCH_RECIPE`) into a fresh repo, with per-stage seconds; kiln's commit step
//! against `ostree commit` on the same tree (bare-user); a no-change recompose; peak RSS.
//! Goals are printed next to the measurements, never asserted.

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
    let mut c = std::process::Command::new(common::KILN);
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
        "{:<44} {:>9.2}s {:>14}",
        "no-change recompose", nochange, "< 2 s"
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
}
