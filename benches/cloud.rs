//! `cargo bench --bench cloud`: for every platform (docs/cloud.md), the seconds
//! `kiln image --platform` spends converting and checking the disk into the platform's
//! format (its format stage), the whole build's seconds, and the artifact's size. The
//! commit comes from composing `recipes/base.toml` (or `KILN_BENCH_RECIPE`) into
//! `build/repo`; an unchanged recipe makes that a no-change skip. Nothing is asserted.

mod common;

use common::Base;

fn main() {
    let Some(base) = Base::start("bench-cloud", true) else {
        return;
    };
    let out = format!("{}/", base.dir.display());

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
        let mut args = vec!["--platform", platform, "--output", &out, "--json"];
        if let Some(f) = format {
            args.extend(["--format", f]);
        }
        let (v, total) = base.image(&args);
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
