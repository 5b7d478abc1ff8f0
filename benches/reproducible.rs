//! `cargo bench --bench reproducible`: the time of `kiln verify-reproducible` on
//! `recipes/base.toml` (or `KILN_BENCH_RECIPE`): two composes from cold caches plus a raw and
//! a qcow2 image of each, compared. Prints the total, each build's compose and image
//! seconds, and the verdict; nothing is asserted.
//!
//! The work dir is `build/bench-reproducible` (removed first, so both builds are cold).

mod common;

use std::time::Instant;

fn main() {
    if common::listing() {
        return;
    }
    let recipe = common::bench_recipe();
    let work = common::root().join("build/bench-reproducible");
    if work.exists() {
        let _ = std::process::Command::new("chattr")
            .args(["-R", "-i"])
            .arg(&work)
            .output();
        std::fs::remove_dir_all(&work).expect("removing the previous bench work dir");
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "1700000000".into());
    let t = Instant::now();
    let out = std::process::Command::new(common::KILN)
        .arg("verify-reproducible")
        .arg(&recipe)
        .args(["--format", "raw,qcow2", "--json", "--work-dir"])
        .arg(&work)
        .env("SOURCE_DATE_EPOCH", &epoch)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running kiln verify-reproducible");
    let total = t.elapsed().as_secs_f64();
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "verify-reproducible gave no JSON ({e}); exit {:?}",
                out.status.code()
            );
            std::process::exit(1);
        }
    };
    println!("reproducible/double-build  total {total:8.1} s  (SOURCE_DATE_EPOCH={epoch})");
    for side in ["a", "b"] {
        println!(
            "reproducible/build-{side}     compose {:8.1} s  images {:8.1} s",
            v[side]["compose_seconds"].as_f64().unwrap_or(f64::NAN),
            v[side]["image_seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "reproducible/verdict       {}  commit {}",
        if v["reproducible"] == true {
            "identical"
        } else {
            "DIFFERENT"
        },
        v["a"]["commit"].as_str().unwrap_or("-")
    );
    if v["reproducible"] != true {
        println!("differences: {}", v["differences"]);
    }
}
