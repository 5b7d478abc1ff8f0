//! `cargo bench --bench firstboot`: first boot to marker under QEMU (TCG here): QEMU start
//! → GRUB → initramfs with Ignition (config by fw_cfg: a file in /etc, one in /var, a user
//! with an ssh key, a unit that prints a marker) → the marker on the console. Also the
//! same with a kernel argument (one extra reboot), and a plain second boot for comparison.
//! The commit comes from composing `recipes/base.toml` (or `KILN_BENCH_RECIPE`) into
//! `build/repo`; an unchanged recipe makes that a no-change skip. Goals are printed, never
//! asserted. Console logs are kept in `build/test-artifacts/bench-firstboot*.log`.

mod common;

use common::{root, Base};
use kiln::qemu::{Vm, VmOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GOAL_FIRSTBOOT_SECS: f64 = 45.0;
const MARKER: &str = "KILN-IGNITION-MARKER";

fn config(dir: &Path, name: &str, kargs: bool) -> PathBuf {
    let unit = format!(
        "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\n\
         ExecStart=/bin/sh -c 'echo {MARKER} > /dev/console'\n\
         [Install]\nWantedBy=multi-user.target\n"
    );
    let mut v = json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKSF8lDPrFcffgyP702s11YNWgn2sBb+rPuiXVsbso2q kiln-bench"
        ]}]},
        "storage": {"files": [
            {"path": "/etc/kiln-bench.txt", "contents": {"source": "data:,bench"}},
            {"path": "/var/lib/kiln-bench.txt", "contents": {"source": "data:,bench"}}
        ]},
        "systemd": {"units": [{"name": "kiln-bench-marker.service", "enabled": true, "contents": unit}]}
    });
    if kargs {
        v["kernelArguments"] = json!({"shouldExist": ["kiln.bench=1"]});
    }
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).expect("writing the config");
    p
}

/// Boots `image` with `cfg` by fw_cfg; seconds to the first marker, and to a second one
/// after a reboot when `second` is set.
fn boot(image: &Path, cfg: &Path, name: &str, second: bool) -> Option<(f64, Option<f64>)> {
    let mut o = VmOptions::new(image, name);
    // One VM on an idle host: each vCPU gets a core (kiln::qemu::default_cpus).
    o.cpus = 2;
    o.fw_cfg = vec![("opt/com.coreos/config".into(), cfg.to_path_buf())];
    o.artifacts = root().join("build/test-artifacts");
    let t = Instant::now();
    let mut vm = Vm::start(o).expect("starting QEMU");
    // The console log (kernel timestamps) shows where the seconds went.
    vm.keep_log();
    if let Err(e) = vm.wait_for(MARKER, Duration::from_secs(1800)) {
        println!("firstboot: {name}: no marker: {e:#}");
        return None;
    }
    let first = t.elapsed().as_secs_f64();
    if !second {
        return Some((first, None));
    }
    let t2 = Instant::now();
    let r = vm
        .login(Duration::from_secs(600))
        .and_then(|_| vm.send("systemctl reboot\n"))
        .and_then(|_| vm.wait_for(MARKER, Duration::from_secs(1800)));
    Some((first, r.ok().map(|_| t2.elapsed().as_secs_f64())))
}

fn main() {
    let Some(base) = Base::start("bench-firstboot", false) else {
        return;
    };
    let dir = &base.dir;
    let image = dir.join("base.qcow2");
    base.image(&[
        "--format",
        "qcow2",
        "--platform",
        "qemu",
        "--karg",
        "kiln.autologin",
        "--output",
        image.to_str().unwrap(),
        "--json",
    ]);
    let accel = kiln::qemu::accel();

    let plain = config(dir, "plain.ign", false);
    if let Some((first, second)) = boot(&image, &plain, "bench-firstboot", true) {
        println!(
            "firstboot: first boot to marker ({accel:?}): {first:.1} s (goal <= {GOAL_FIRSTBOOT_SECS} s under TCG)"
        );
        if let Some(s) = second {
            println!("firstboot: second boot (no Ignition) to marker: {s:.1} s");
        }
    }
    let kargs = config(dir, "kargs.ign", true);
    if let Some((first, _)) = boot(&image, &kargs, "bench-firstboot-kargs", false) {
        println!(
            "firstboot: first boot with a kernel argument (one extra reboot) to marker: {first:.1} s"
        );
    }
}
