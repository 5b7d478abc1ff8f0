//! `cargo bench --bench image`: commit → qcow2 (and raw) seconds with per-stage times,
//! and boot-to-marker seconds under QEMU (TCG here) with BIOS and UEFI. The commit comes
//! from composing `recipes/base.toml` (or `KILN_BENCH_RECIPE`) into `build/repo`; an
//! unchanged recipe makes that a no-change skip. Goals are printed, never asserted.

mod common;

use common::{root, Base};
use kiln::qemu::{Vm, VmOptions};
use std::time::{Duration, Instant};

const GOAL_IMAGE_SECS: f64 = 30.0;
const GOAL_BOOT_SECS: f64 = 60.0;

fn main() {
    let Some(base) = Base::start("bench-image", false) else {
        return;
    };
    let out_dir = &base.dir;

    let mut rows = Vec::new();
    for (fmt, name) in [("qcow2", "base.qcow2"), ("raw", "base.raw")] {
        let out = out_dir.join(name);
        let (v, secs) = base.image(&[
            "--format",
            fmt,
            "--karg",
            "kiln.autologin",
            "--output",
            out.to_str().unwrap(),
            "--json",
        ]);
        println!(
            "image: commit -> {fmt}: {secs:.1} s (goal <= {GOAL_IMAGE_SECS} s for qcow2), {} MiB on disk; stages {}",
            v["size"].as_u64().unwrap_or(0) / (1024 * 1024),
            v["timings"]
        );
        rows.push((fmt, secs));
    }

    for uefi in [false, true] {
        let mut o = VmOptions::new(
            out_dir.join("base.qcow2"),
            if uefi { "bench-uefi" } else { "bench-bios" },
        );
        o.uefi = uefi;
        // One VM on an idle host: each vCPU gets a core (kiln::qemu::default_cpus).
        o.cpus = 2;
        o.artifacts = root().join("build/test-artifacts");
        let t = Instant::now();
        let mut vm = Vm::start(o).expect("starting QEMU");
        match vm.wait_for("KILN-BOOTED", Duration::from_secs(1800)) {
            Ok(_) => println!(
                "image: boot to marker ({}, {:?}): {:.1} s (goal <= {GOAL_BOOT_SECS} s under TCG)",
                if uefi { "UEFI" } else { "BIOS" },
                kiln::qemu::accel(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => println!("image: boot to marker failed: {e:#}"),
        }
    }
}
