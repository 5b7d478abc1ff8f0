//! `cargo bench --bench cloud`: for every platform (docs/cloud.md), the seconds
//! `kiln image --platform` spends converting and checking the disk into the platform's
//! format (its format stage), the whole build's seconds, and the artifact's size. The
//! commit comes from composing `recipes/base.toml` (or `KILN_BENCH_RECIPE`) into
//! `build/repo`; an unchanged recipe makes that a no-change skip. Nothing is asserted.

use std::path::PathBuf;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kiln(args: &[&str]) -> (serde_json::Value, f64) {
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running kiln");
    assert!(out.status.success(), "kiln {args:?} failed");
    let v = serde_json::from_slice(&out.stdout).expect("kiln --json output");
    (v, t.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let recipe = std::env::var_os("KILN_BENCH_RECIPE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("recipes/base.toml"));
    let repo = root().join("build/repo");
    let cache = root().join("build/cache");
    let out_dir = root().join("build/bench-cloud");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let (c, _) = kiln(&[
        "compose",
        recipe.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    let ref_ = c["ref"].as_str().expect("ref").to_string();
    let out = format!("{}/", out_dir.display());

    let mut rows = Vec::new();
    for (platform, format) in [
        ("qemu", None),
        ("metal", None),
        ("aws", None),
        ("aws", Some("raw")),
        ("gcp", None),
        ("azure", None),
        ("vmware", None),
        ("openstack", None),
    ] {
        let mut args = vec![
            "image",
            "--repo",
            repo.to_str().unwrap(),
            "--ref",
            &ref_,
            "--platform",
            platform,
            "--output",
            &out,
            "--json",
        ];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        let (v, total) = kiln(&args);
        let fmt = v["format"].as_str().unwrap_or("?").to_string();
        let convert = v["timings"][fmt.as_str()].as_f64().unwrap_or(f64::NAN);
        let size = v["size"].as_u64().unwrap_or(0);
        rows.push((platform, fmt, convert, total, size));
    }
    println!();
    println!(
        "{:<10} {:<7} {:>11} {:>9} {:>12}",
        "platform", "format", "convert s", "total s", "size MiB"
    );
    for (p, f, convert, total, size) in &rows {
        println!(
            "{p:<10} {f:<7} {convert:>11.1} {total:>9.1} {:>12.1}",
            *size as f64 / 1048576.0
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(p, f, convert, total, size)| {
            serde_json::json!({"platform": p, "format": f, "convert_seconds": convert,
                               "total_seconds": total, "bytes": size})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "cloud", "platforms": json})
    );
}
