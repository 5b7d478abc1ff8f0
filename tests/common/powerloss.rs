//! The power-loss scenario, shared by `tests/vm_powerloss.rs` (asserts) and
//! `benches/powerloss.rs` (counts and times the resets). Include it with
//! `#[path = "common/powerloss.rs"] mod powerloss;` next to `mod common;`.
//!
//! One VM, many hard resets (QMP `system_reset`: no sync, no shutdown, the guest's page
//! cache is lost). Each reset lands at a named moment of a sysroot operation on the booted
//! system; after it the machine must boot a complete deployment (the boot marker names
//! its commit), the sysroot's repo must be whole, and `kiln status` must work. "Whole" is
//! checked by what the interrupted operation could have broken ([`RepoCheck`]): where it
//! wrote objects (a pull from the update disk), a full `ostree fsck` (in the sysroot's bare
//! repo the deployments' files are hard links to the objects it verifies); where it only
//! checked out, wrote boot entries or pruned, every commit's tree is walked to its last
//! object (what a reset during a prune or a cleanup could lose). The moments:
//!
//! 1. `kiln upgrade` at `upgrade:pulled` (new objects in the repo, nothing deployed):
//!    boots the old commit.
//! 2. `kiln deploy` at `deploy:staged` (the staged deployment written, its
//!    `/run/ostree/staged-deployment` note lost with /run): boots the old commit.
//! 3. Staged finalization at shutdown (`ostree-finalize-staged.service` runs
//!    `ostree admin finalize-staged`; a drop-in in /run prints a mark before and after
//!    it): reset just after it finished, before systemd's own sync and unmounts — must
//!    boot the new deployment (finalization is durable when it returns); then, after
//!    staging again, reset half-way through it (as long as the first one took) and right
//!    at its start — either deployment may boot, never a broken one.
//! 4. `kiln rollback` at `rollback:written`: must boot the rollback target.
//! 5. `kiln kargs --in-place` on a staged kargs change, at `kargs:written`: must boot the
//!    running deployment without the staged arguments (the staging record is in /run).

#![allow(dead_code)]

use crate::common::{self, VM_CMD};
use kiln::qemu::{Vm, VmOptions};
use std::time::{Duration, Instant};

use common::booted::UPDATES;
const FINALIZE_START: &str = "KILN-FINALIZE-START";
const FINALIZE_DONE: &str = "KILN-FINALIZE-DONE";

/// The booted base system (`common::booted`: the base commit's image, an update disk
/// holding v2) and the two commits.
pub struct Setup {
    pub base: common::booted::BootedBase,
    pub ref_: String,
    pub v1: String,
    pub v2: String,
}

pub fn powerloss_setup() -> Setup {
    let base = common::booted::booted_fixture();
    Setup {
        ref_: base.ref_.clone(),
        v1: base.v1.clone(),
        v2: base.v2.clone(),
        base,
    }
}

/// The VM: the booted base system resumed (writes go to a throwaway overlay that
/// survives resets), with the update disk, restricted user networking, and the QMP
/// monitor the resets go through. Start it with `common::booted::resume_booted_with`.
pub fn vm_options(s: &Setup, name: &str) -> VmOptions {
    common::booted::booted_options(&s.base, name)
}

/// One reset and what followed it.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// What was interrupted, and where.
    pub what: String,
    /// The commit that booted after the reset.
    pub booted: String,
    /// From the reset to a checked machine (booted, logged in, fsck, status).
    pub recovery: Duration,
    /// The whole cycle: the operation up to the reset, and the recovery.
    pub total: Duration,
}

/// Runs every reset of the scenario on `vm` (the booted base system, just resumed) and
/// returns them. Panics (with the console log kept) when a check fails.
pub fn run(vm: &mut Vm, s: &Setup) -> Vec<Cycle> {
    let (a, b) = (s.v1.as_str(), s.v2.as_str());
    // Nothing was written yet: the full fsck of the first cycle covers the base's objects.
    checked(vm, "resumed base system", RepoCheck::Complete);
    let mut cycles = Vec::new();

    // 1, 2: an upgrade and a deploy interrupted before anything boots differently.
    let t = Instant::now();
    interrupt_at(
        vm,
        &format!("kiln upgrade --repo {UPDATES}"),
        "upgrade:pulled",
    );
    cycles.push(recover(
        vm,
        "kiln upgrade at upgrade:pulled",
        &[a],
        RepoCheck::Fsck,
        t,
    ));
    let t = Instant::now();
    interrupt_at(
        vm,
        &format!("kiln deploy --repo {UPDATES} {}", s.ref_),
        "deploy:staged",
    );
    cycles.push(recover(
        vm,
        "kiln deploy at deploy:staged",
        &[a],
        RepoCheck::Fsck,
        t,
    ));
    let st = common::vm_status_json(vm);
    let deps = st["status"]["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 1, "the lost staged deployment is listed: {st}");

    // 3: staged finalization at shutdown. First with the reset right after it: measures
    // how long it takes, and the result must be durable.
    let mut booted = a.to_string();
    let mut finalize = Duration::from_secs(2);
    for when in [Finalize::Done, Finalize::Halfway, Finalize::Start] {
        let t = Instant::now();
        let target = if booted == a { b } else { a };
        // Staging v2 pulls it from the update disk; v1 is checked out of the sysroot's repo.
        let check = stage(vm, s, target);
        let took = reset_in_finalization(vm, when, finalize);
        if when == Finalize::Done {
            finalize = took;
        }
        let expect: Vec<&str> = match when {
            Finalize::Done => vec![target],
            _ => vec![booted.as_str(), target],
        };
        let what = format!("staged finalization, reset {when:?} ({took:.1?} into it)");
        let c = recover(vm, &what, &expect, check, t);
        booted = c.booted.clone();
        cycles.push(c);
    }

    // 4: a rollback, reset once the new boot order is written: the rollback must hold.
    let other = if booted == a { b } else { a };
    let t = Instant::now();
    interrupt_at(vm, "kiln rollback", "rollback:written");
    cycles.push(recover(
        vm,
        "kiln rollback at rollback:written",
        &[other],
        RepoCheck::Complete,
        t,
    ));

    // 5: kernel arguments on the booted system. In place on the running deployment is
    // refused with nothing written; a change stages a new deployment, whose arguments
    // `--in-place` then rewrites (twice; reset after the second write): the running
    // deployment boots again, with none of them.
    let t = Instant::now();
    let (st, out) = vm
        .run("kiln kargs --in-place --append kiln.powerloss=0", VM_CMD)
        .unwrap();
    assert_eq!(st, 2, "in-place kargs on the booted deployment: {out}");
    assert!(out.contains("without --in-place"), "{out}");
    vm.run_ok("kiln kargs --append kiln.powerloss=1", VM_CMD)
        .unwrap();
    vm.run_ok("kiln kargs --in-place --append kiln.powerloss=2", VM_CMD)
        .unwrap();
    let next = vm.run_ok("kiln kargs", VM_CMD).unwrap();
    for k in ["kiln.powerloss=1", "kiln.powerloss=2"] {
        assert!(next.split_whitespace().any(|a| a == k), "{k}: {next}");
    }
    interrupt_at(
        vm,
        "kiln kargs --in-place --append kiln.powerloss=3",
        "kargs:written",
    );
    let c = recover(
        vm,
        "kiln kargs --in-place (staged) at kargs:written",
        &[other],
        RepoCheck::Complete,
        t,
    );
    let cmdline = vm.run_ok("cat /proc/cmdline", VM_CMD).unwrap();
    assert!(!cmdline.contains("kiln.powerloss"), "{cmdline}");
    cycles.push(c);
    cycles
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finalize {
    /// Right after `ostree admin finalize-staged` returned.
    Done,
    /// Half as long into it as the `Done` run took.
    Halfway,
    /// As soon as it starts.
    Start,
}

/// Runs `cmd` in the guest with `KILN_FAULT_POINT=point`, waits until kiln stops there
/// and hard-resets the guest.
fn interrupt_at(vm: &mut Vm, cmd: &str, point: &str) {
    vm.send(&format!(
        "{}={point} {cmd}\n",
        kiln::deploy::safety::FAULT_POINT_ENV
    ))
    .unwrap();
    let mark = format!("{} {point}", kiln::deploy::safety::FAULT_MARK);
    vm.wait_for(&mark, common::boot_timeout())
        .unwrap_or_else(|e| panic!("`{cmd}` never reached {point}: {e:#}"));
    vm.reset().expect("system_reset");
}

/// Stages `target` (v2 from the update disk by its ref, v1 by checksum from the
/// sysroot's own repo) for the next boot; how the repo is checked after a reset in this
/// cycle (a pull wrote objects; a checkout of the repo's own commit did not).
fn stage(vm: &mut Vm, s: &Setup, target: &str) -> RepoCheck {
    let (cmd, check) = if target == s.v2 {
        (
            format!("kiln deploy --repo {UPDATES} {}", s.ref_),
            RepoCheck::Fsck,
        )
    } else {
        (format!("kiln deploy {target}"), RepoCheck::Complete)
    };
    let out = vm.run_ok(&cmd, VM_CMD).unwrap();
    eprintln!("staged {target}: {out}");
    check
}

/// The image's finalization (overlays/base: libostree's finalization, then /boot
/// checkpointed), run between the marks exactly as the image runs it.
const IMAGE_DROPIN: &str = "/usr/lib/systemd/system/ostree-finalize-staged.service.d/kiln.conf";
const FINALIZE_CMD: &str = "ExecStop=/usr/bin/kiln finalize-staged";

/// Reboots with marks around the finalization and resets at `when`; returns how far into
/// the finalization the reset came (host time between the start mark and the reset).
fn reset_in_finalization(vm: &mut Vm, when: Finalize, took: Duration) -> Duration {
    let dropin = "/run/systemd/system/ostree-finalize-staged.service.d";
    vm.run_ok(
        &format!(
            "grep -qx '{FINALIZE_CMD}' {IMAGE_DROPIN} && \
             mkdir -p {dropin} && cat > {dropin}/powerloss.conf <<'EOF'\n\
             [Service]\n\
             ExecStop=\n\
             ExecStop=/bin/sh -c 'echo {FINALIZE_START} > /dev/console'\n\
             {FINALIZE_CMD}\n\
             ExecStop=/bin/sh -c 'echo {FINALIZE_DONE} > /dev/console'\n\
             EOF\n\
             systemctl daemon-reload && systemctl is-active ostree-finalize-staged.service"
        ),
        VM_CMD,
    )
    .unwrap();
    vm.send("systemctl reboot\n").unwrap();
    vm.wait_for(FINALIZE_START, common::boot_timeout()).unwrap();
    let t = Instant::now();
    match when {
        Finalize::Done => {
            vm.wait_for(FINALIZE_DONE, common::boot_timeout()).unwrap();
        }
        Finalize::Halfway => std::thread::sleep(took / 2),
        Finalize::Start => {}
    }
    vm.reset().expect("system_reset");
    t.elapsed()
}

/// After a reset: the machine boots one of `expect`, and is checked (the repo by `repo`).
/// Returns the cycle.
fn recover(vm: &mut Vm, what: &str, expect: &[&str], repo: RepoCheck, t0: Instant) -> Cycle {
    let t = Instant::now();
    let booted = common::wait_booted(vm, &format!("after reset: {what}"));
    assert!(
        expect.contains(&booted.as_str()),
        "{what}: booted {booted}, expected one of {expect:?}"
    );
    checked(vm, what, repo);
    let st = common::vm_status_json(vm);
    assert_eq!(common::booted_in_status(&st), booted, "{what}: {st}");
    let c = Cycle {
        what: what.to_string(),
        booted,
        recovery: t.elapsed(),
        total: t0.elapsed(),
    };
    eprintln!(
        "powerloss: {what}: booted {} after {:.0?} (cycle {:.0?})",
        c.booted, c.recovery, c.total
    );
    c
}

/// How the sysroot's repo is checked after a reset: by what the cycle's operation wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoCheck {
    /// Objects were written (a pull): `ostree fsck`, every object of every commit read
    /// and its checksum verified.
    Fsck,
    /// No object was written (a checkout of a commit already in the repo, boot entries,
    /// a prune): objects that were not written cannot have changed, so every commit that
    /// is not marked partial (fsck skips those too) must still reach every object of its
    /// tree (`ostree ls -R` reads each dirtree and dirmeta and opens each file object). A
    /// prune or cleanup cut short loses objects; this finds the commit they belonged to.
    Complete,
}

/// Every complete commit's tree, walked to its objects (`RepoCheck::Complete`).
const COMPLETE_CMD: &str = "n=0; for f in /ostree/repo/objects/*/*.commit; do \
     c=$(basename \"$(dirname \"$f\")\")$(basename \"$f\" .commit); \
     [ -e /ostree/repo/state/$c.commitpartial ] && continue; \
     ostree ls -R \"$c\" >/dev/null || { echo \"commit $c: objects missing\"; exit 1; }; \
     n=$((n+1)); done; echo \"$n commits complete\"";

/// Logs in, mounts the update disk, and checks the repo (`repo`) and `kiln status`.
fn checked(vm: &mut Vm, what: &str, repo: RepoCheck) {
    common::vm_login(vm);
    let t = Instant::now();
    match repo {
        RepoCheck::Fsck => {
            let (st, out) = vm
                .run(
                    "ostree fsck 2>&1 | tail -n 5; r=${PIPESTATUS[0]}; (exit $r)",
                    VM_CMD,
                )
                .unwrap();
            assert_eq!(st, 0, "{what}: ostree fsck failed:\n{out}");
            eprintln!(
                "powerloss: {what}: ostree fsck passed in {:.0?}",
                t.elapsed()
            );
        }
        RepoCheck::Complete => {
            let (st, out) = vm.run(&format!("({COMPLETE_CMD}) 2>&1"), VM_CMD).unwrap();
            assert_eq!(st, 0, "{what}: the repo lost objects:\n{out}");
            assert!(
                !out.starts_with("0 commits"),
                "{what}: no commit found: {out}"
            );
            eprintln!("powerloss: {what}: {out} in {:.0?}", t.elapsed());
        }
    }
    vm.run_ok("kiln status", VM_CMD)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    common::booted::mount_updates(vm);
    vm.run_ok(&format!("test -d {UPDATES}"), VM_CMD).unwrap();
}
