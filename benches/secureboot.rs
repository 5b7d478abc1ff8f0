//! `cargo bench --bench secureboot`: boot to the boot marker on UEFI with Secure Boot
//! enforced (OVMF's Secure Boot build, Microsoft's keys, SMM: `kiln run --secure-boot`)
//! and without (plain OVMF), the same image, one run each. Both are first boots of a fresh
//! copy (`snapshot`), so both run the same path: shim → signed GRUB → signed kernel →
//! initramfs → multi-user. The commit comes from composing `recipes/base.toml` (or
//! `KILN_BENCH_RECIPE`) into `build/repo`. Nothing is asserted but that both boot.
//! Console logs are kept in `build/test-artifacts/bench-secureboot-*.log`.

mod common;

use common::{root, Base};
use kiln::qemu::{Vm, VmOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// Seconds from QEMU start to the boot marker.
fn boot(image: &Path, secure_boot: bool) -> Option<f64> {
    let name = if secure_boot {
        "bench-secureboot-on"
    } else {
        "bench-secureboot-off"
    };
    let mut o = VmOptions::new(image, name);
    // One VM on an idle host: each vCPU gets a core (kiln::qemu::default_cpus).
    o.cpus = 2;
    o.uefi = true;
    o.secure_boot = secure_boot;
    o.artifacts = root().join("build/test-artifacts");
    let t = Instant::now();
    let mut vm = Vm::start(o).expect("starting QEMU");
    vm.keep_log();
    match vm.wait_for("KILN-BOOTED", Duration::from_secs(1800)) {
        Ok(_) => Some(t.elapsed().as_secs_f64()),
        Err(e) => {
            println!("secureboot: {name}: no marker: {e:#}");
            None
        }
    }
}

fn main() {
    let Some(base) = Base::start("bench-secureboot", false) else {
        return;
    };
    let image = base.dir.join("base.qcow2");
    base.image(&[
        "--format",
        "qcow2",
        "--platform",
        "qemu",
        "--firmware",
        "hybrid",
        "--output",
        image.to_str().unwrap(),
        "--json",
    ]);
    let accel = kiln::qemu::accel();
    let off = boot(&image, false);
    let on = boot(&image, true);
    if let Some(s) = off {
        println!("secureboot: UEFI, Secure Boot off, boot to marker ({accel:?}): {s:.1} s");
    }
    if let Some(s) = on {
        println!("secureboot: UEFI, Secure Boot enforced, boot to marker ({accel:?}): {s:.1} s");
    }
    if let (Some(a), Some(b)) = (off, on) {
        println!(
            "secureboot: Secure Boot costs {:+.1} s ({:+.0} %)",
            b - a,
            (b - a) / a * 100.0
        );
    }
}
