//! Whether KVM works here, and the vCPUs a guest gets by default.

use super::optstr::opt_path;
use crate::cmd::Cmd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The vCPUs a guest gets unless told otherwise: 2 with KVM, 1 under TCG. Each TCG vCPU
/// is a host thread that spins while the guest waits on another vCPU (IPIs, spinlocks, RCU);
/// when the host cannot give every vCPU its own core (two test VMs and a compose on two
/// cores), a 2-vCPU guest stalls itself: seen here as RCU stalls and 43 s soft lockups in
/// udev, boots of 110–180 s, and once a first boot that never finished in 900 s. One vCPU
/// cannot wait on a descheduled sibling: the same load gave 107–131 s and no stall. On an
/// idle host 2 vCPUs boot faster (40 s vs 53 s), so the benchmarks ask for 2 and
/// `kiln run --cpus` chooses.
pub fn default_cpus() -> u32 {
    match accel() {
        Accel::Kvm => 2,
        Accel::Tcg => 1,
    }
}

/// The accelerator QEMU is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Decides whether KVM works: `/dev/kvm` must open, and a probe VM must get as far as
/// SeaBIOS printing its banner (KVM can exist and still fail at the first MSR write, or
/// hang). `KILN_ACCEL=tcg|kvm` overrides the probe. The answer is cached per process.
pub fn accel() -> Accel {
    static A: OnceLock<Accel> = OnceLock::new();
    *A.get_or_init(|| match std::env::var("KILN_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => {
            if probe_kvm() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

fn probe_kvm() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok(td) = tempfile::tempdir() else {
        return false;
    };
    let dbg = td.path().join("debugcon.log");
    let Ok(dbg_opt) = opt_path(&dbg) else {
        return false;
    };
    let h = Cmd::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-no-reboot", "-chardev"])
        .arg(format!("file,path={dbg_opt},id=d"))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=d"])
        .spawn_logged(&td.path().join("qemu.log"));
    let Ok(h) = h else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut ok = false;
    while Instant::now() < deadline {
        if std::fs::read(&dbg)
            .map(|b| String::from_utf8_lossy(&b).contains("SeaBIOS"))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        if let Ok(Some(_)) = h.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = h.kill();
    ok
}
