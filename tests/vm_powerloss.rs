// suite-minutes: 15 (TCG run time: 23.4 min here under a load average of 6; CI took 13.3 min before the lighter repo checks, weighed 20; tests/suite.sh balances the VM test files over two groups by it)
//! Real power loss: one VM, hard resets (QMP `system_reset`, nothing synced) at the named
//! fault points of a staged upgrade's finalization, a deploy, an upgrade, a rollback and a
//! kernel-argument change on the booted system; after each reset the machine boots a
//! complete deployment, the repo is whole (`ostree fsck` where the cycle pulled objects,
//! every commit's objects reachable where it did not) and `kiln status` works. The moments and
//! what each must boot: `tests/common/powerloss.rs` (shared with `benches/powerloss.rs`),
//! docs/updating.md ("Power loss").
//!
//! `tests/crash.rs` SIGKILLs kiln on the host, which keeps the page cache; here the guest
//! kernel dies with it. Console logs of failures land in `build/test-artifacts/`.

mod common;
#[path = "common/powerloss.rs"]
mod powerloss;

#[test]
fn hard_resets_during_updates_leave_a_bootable_consistent_system() {
    let s = powerloss::powerloss_setup();
    let t = std::time::Instant::now();
    let mut vm = common::booted::resume_booted_with(powerloss::vm_options(&s, "vm-powerloss"));
    let cycles = powerloss::run(&mut vm, &s);
    eprintln!(
        "powerloss: {} resets in {:.0?} (the resume included)",
        cycles.len(),
        t.elapsed()
    );
    assert_eq!(cycles.len(), 7, "{cycles:#?}");
    // The finalization that completed before the reset must have booted its deployment,
    // and the scenario must have booted both commits across the resets.
    assert!(cycles.iter().any(|c| c.booted == s.v2), "{cycles:#?}");
    assert!(cycles.iter().any(|c| c.booted == s.v1), "{cycles:#?}");
}
