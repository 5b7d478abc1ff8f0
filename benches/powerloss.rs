//! `cargo bench --bench powerloss`: the power-loss scenario of `tests/vm_powerloss.rs`
//! (the same code: `tests/common/powerloss.rs`) — one VM hard-reset at each named moment
//! of an upgrade, a deploy, staged finalization, a rollback and a kargs change, checked
//! after every reset. Prints how many resets ran and the time per reset cycle (the
//! operation up to the reset, the boot after it, login, `ostree fsck`, `kiln status`).
//! Nothing is asserted beyond what the scenario checks. The console log is kept in
//! `build/test-artifacts/bench-powerloss.log`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/powerloss.rs"]
mod powerloss;

use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let t = Instant::now();
    let s = powerloss::powerloss_setup();
    let setup = t.elapsed();
    // The machine of the saved base system (vCPUs included: a resume needs the same).
    let o = powerloss::vm_options(&s, "bench-powerloss");
    let t = Instant::now();
    let mut vm = common::booted::resume_booted_with(o);
    vm.keep_log();
    let cycles = powerloss::run(&mut vm, &s);
    let all = t.elapsed();
    let accel = kiln::qemu::accel();
    for c in &cycles {
        println!(
            "powerloss: {:<60} booted {}  recovery {:6.1} s  cycle {:6.1} s",
            c.what,
            &c.booted[..12],
            c.recovery.as_secs_f64(),
            c.total.as_secs_f64()
        );
    }
    let n = cycles.len() as f64;
    let per = cycles.iter().map(|c| c.total.as_secs_f64()).sum::<f64>() / n;
    let rec = cycles.iter().map(|c| c.recovery.as_secs_f64()).sum::<f64>() / n;
    println!(
        "powerloss: {} resets ({accel:?}), {per:.1} s per reset cycle ({rec:.1} s of it from \
         the reset to a checked machine); {:.1} s with the resume of the booted base system; setup (the booted base \
         system: image, update disk, boot and save, or a saved one reused) {:.1} s",
        cycles.len(),
        all.as_secs_f64(),
        setup.as_secs_f64()
    );
}
