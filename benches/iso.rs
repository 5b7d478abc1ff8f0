//! `cargo bench --bench iso`: live media. Commit → ISO seconds and size with a squashfs
//! root image and with an EROFS one (per-stage times; the root image's own size), commit →
//! PXE files, and `kiln iso ignition embed` / `kiln iso kargs modify` seconds on the built
//! ISO. The commit comes from composing `recipes/base.toml` (or `KILN_BENCH_RECIPE`) into
//! `build/repo`; an unchanged recipe makes that a no-change skip. Goals are printed, never
//! asserted.

mod common;

use common::{kiln_timed as kiln, median, mib, Base};
use std::path::PathBuf;

const GOAL_EMBED_SECS: f64 = 5.0;

fn main() {
    let Some(base) = Base::start("bench-iso", false) else {
        return;
    };
    let out_dir = &base.dir;

    let build = |format: &str, fs: &str, out: &PathBuf| -> (serde_json::Value, f64) {
        base.image(&[
            "--format",
            format,
            "--live-fs",
            fs,
            "--output",
            out.to_str().unwrap(),
            "--json",
        ])
    };

    for fs in ["squashfs", "erofs"] {
        let out = out_dir.join(format!("base-{fs}.iso"));
        let (v, secs) = build("iso", fs, &out);
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "iso: commit -> ISO ({fs}): {secs:.1} s, ISO {:.0} MiB, root image {:.0} MiB; stages {}",
            mib(size),
            mib(v["root_image_size"].as_u64().unwrap_or(0)),
            v["timings"]
        );
    }
    let pxe = out_dir.join("pxe");
    let (v, secs) = build("pxe", "squashfs", &pxe);
    let total: u64 = v["artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["size"].as_u64()).sum())
        .unwrap_or(0);
    println!(
        "iso: commit -> PXE files (squashfs): {secs:.1} s, {:.0} MiB in total",
        mib(total)
    );

    let iso = out_dir.join("base-squashfs.iso");
    let ign = out_dir.join("bench.ign");
    std::fs::write(
        &ign,
        r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/bench","contents":{"source":"data:,x"}}]}}"#,
    )
    .unwrap();
    let mut embeds = Vec::new();
    for _ in 0..5 {
        let (_, secs) = kiln(&[
            "iso",
            "ignition",
            "embed",
            "--force",
            "--ignition",
            ign.to_str().unwrap(),
            iso.to_str().unwrap(),
        ]);
        embeds.push(secs);
    }
    println!(
        "iso: ignition embed into a {:.0} MiB ISO: median {:.3} s (goal < {GOAL_EMBED_SECS} s)",
        mib(std::fs::metadata(&iso).map(|m| m.len()).unwrap_or(0)),
        median(embeds)
    );
    let (_, secs) = kiln(&[
        "iso",
        "kargs",
        "modify",
        "--append",
        "kiln.bench=1",
        iso.to_str().unwrap(),
    ]);
    println!("iso: kargs modify: {secs:.3} s");
}
