//! `cargo bench --bench install`: `kiln install` seconds for the base image — a local raw
//! image to a sparse file, a local qcow2 to a sparse file, and a raw image to a loop
//! device — with the write rate. The commit comes from composing `recipes/base.toml` (or
//! `KILN_BENCH_RECIPE`) into `build/repo` (a no-change skip when unchanged); the images are
//! built once with `kiln image`. Goals are printed, never asserted.

mod common;

use common::{kiln_json as kiln, Base};
use std::path::{Path, PathBuf};

const GOAL_INSTALL_SECS: f64 = 60.0;
const TARGET_BYTES: u64 = 8 << 30;

fn sparse(p: &Path) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(TARGET_BYTES).unwrap();
}

fn main() {
    let Some(base) = Base::start("bench-install", false) else {
        return;
    };
    let dir = &base.dir;
    for name in ["base.raw", "base.qcow2"] {
        base.image(&["--output", dir.join(name).to_str().unwrap(), "--json"]);
    }
    let target = dir.join("target.img");
    let ign = dir.join("config.ign");
    std::fs::write(&ign, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();

    let run = |label: &str, device: &Path, image: &str| {
        let (v, secs) = kiln(&[
            "install",
            device.to_str().unwrap(),
            "--image",
            dir.join(image).to_str().unwrap(),
            "--ignition",
            ign.to_str().unwrap(),
            "--json",
        ]);
        let bytes = v["image_size"].as_u64().unwrap_or(0);
        println!(
            "install: {label}: {secs:.1} s (goal <= {GOAL_INSTALL_SECS} s), {} MiB image, \
             {:.0} MiB/s; stages {}",
            bytes >> 20,
            (bytes >> 20) as f64 / secs,
            v["timings"]
        );
    };
    sparse(&target);
    run("raw -> sparse file", &target, "base.raw");
    sparse(&target);
    run("qcow2 -> sparse file", &target, "base.qcow2");
    sparse(&target);
    let lo = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&target)
        .output()
        .expect("losetup");
    if lo.status.success() {
        let dev = PathBuf::from(String::from_utf8_lossy(&lo.stdout).trim());
        run("raw -> loop device", &dev, "base.raw");
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&dev)
            .status();
    } else {
        println!(
            "install: no loop device: {}",
            String::from_utf8_lossy(&lo.stderr)
        );
    }
    let _ = std::fs::remove_file(&target);
}
