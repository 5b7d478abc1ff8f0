// suite-minutes: 25 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! Health-checked updates under QEMU (TCG): boot counting in GRUB, kiln-health.service,
//! automatic rollback and the memory of rejected commits (docs/updating.md). One VM (the
//! saved booted base system, resumed) goes through a bad release, a healthy one and a
//! kernel panic; the update server is a file:// remote on a read-only disk, whose second
//! repo plays the server after v3 was published.

mod common;

use common::{vm_login, vm_status_json, wait_booted, VM_CMD};
use kiln::qemu::Vm;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// An update disk of archive repos: each `(repo, ref, commit)` puts `commit` (of the
/// fixture repo) on `ref` in `repo` (the guest mounts it at /run/updates).
fn update_disk(f: &common::Composed, work: &Path, refs: &[(&str, &str, &str)]) -> PathBuf {
    let refs: Vec<_> = refs
        .iter()
        .map(|(name, r, c)| (*name, f.repo.as_path(), *r, *c))
        .collect();
    common::archive_disk(work, &refs)
}

/// A variant of v1 whose policy gives new deployments `tries` boots; `bad`: it also
/// ships a unit that fails and names it in `[health] required-units`.
fn variant(f: &common::Composed, work: &Path, name: &str, tries: u32, bad: bool) -> String {
    let add = work.join(name);
    let lib = add.join("usr/lib/kiln");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("updates.toml"),
        format!("mode = \"off\"\ntries = {tries}\n"),
    )
    .unwrap();
    if bad {
        let sys = add.join("usr/lib/systemd/system");
        std::fs::create_dir_all(sys.join("multi-user.target.wants")).unwrap();
        std::fs::write(
            sys.join("kiln-e2e-bad.service"),
            "[Unit]\nDescription=kiln e2e: a service that fails\n[Service]\nType=oneshot\n\
             RemainAfterExit=yes\nExecStart=/bin/sh -c 'echo kiln-e2e: the service is broken; exit 1'\n\
             [Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../kiln-e2e-bad.service",
            sys.join("multi-user.target.wants/kiln-e2e-bad.service"),
        )
        .unwrap();
        std::fs::write(
            lib.join("health.toml"),
            "required-units = [\"kiln-e2e-bad.service\"]\ntimeout = \"120s\"\n",
        )
        .unwrap();
    }
    common::base_variant(f, &add, name)
}

/// Waits until `want` boots (its boot marker; at most `max` boots), then counts the boots
/// since console offset `from` by their kernel command lines: `(trial, other)`, where a
/// trial boot is one GRUB gave the trial arguments (the deployment on trial took a try).
/// A failing boot may reboot before its boot marker prints; its command line is there.
fn boots_until(vm: &mut Vm, from: usize, want: &str, max: usize) -> (usize, usize) {
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some(want) {
        if seen.len() == max {
            vm.keep_log();
            panic!("{want} did not boot within {max} boots: {seen:?}");
        }
        seen.push(wait_booted(vm, "health"));
    }
    let text = vm.console();
    let lines: Vec<&str> = text
        .get(from..)
        .unwrap_or(&text)
        .lines()
        .filter(|l| l.contains("Kernel command line:"))
        .collect();
    let trial = lines
        .iter()
        .filter(|l| l.contains(kiln::deploy::bootcount::TRIAL_KARGS))
        .count();
    (trial, lines.len() - trial)
}

/// Logs in and waits for kiln-health.service to finish; its state.
fn health_state(vm: &mut Vm) -> String {
    vm_login(vm);
    vm.run(
        "systemctl is-system-running --wait >/dev/null; systemctl show -p ActiveState --value kiln-health.service",
        VM_CMD,
    )
    .unwrap()
    .1
    .trim()
    .to_string()
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    vm.run_ok(cmd, VM_CMD)
        .unwrap_or_else(|e| panic!("{cmd}: {e:#}"))
}

fn dep<'a>(st: &'a Value, commit: &str) -> Option<&'a Value> {
    st["status"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["checksum"] == commit)
}

/// e2e under QEMU (TCG): v1 booted follows a server; v2 is published with a required unit
/// that exits 1. The agent (`kiln upgrade --auto`, mode apply) stages v2 and reboots by
/// itself; v2 fails its health check, GRUB counts its 2 tries, and the machine ends on v1
/// with no human action; `kiln status --json` names v2 rejected with the failing unit and
/// its log; the next agent run does not stage v2. v3 (healthy) is then published, taken
/// and marked good. Last, a deployment of v3 whose kernel cannot start its init
/// (`rdinit=/nonexistent`: the kernel panics) falls back to v3 by itself.
#[test]
fn vm_bad_release_rolls_back_and_is_never_taken_again() {
    let f = common::base_commit();
    let base = common::booted::booted_fixture();
    let work = common::fixture_workdir("health-");
    let v1 = base.v1.clone();
    let v2 = variant(&f, work.path(), "health-bad", 2, true);
    let v3 = variant(&f, work.path(), "health-good", 1, false);
    let r = f.ref_.as_str();
    let disk = update_disk(&f, work.path(), &[("repo", r, &v2), ("repo2", r, &v3)]);
    let mut o = common::booted::booted_options(&base, "health");
    o.disks[0].path = disk;
    let mut vm = common::booted::resume_booted_with(o);
    common::booted::mount_updates(&mut vm);

    // The base boot is good, nothing on trial.
    assert_eq!(health_state(&mut vm), "active");
    let st = vm_status_json(&mut vm);
    assert_eq!(st["status"]["bootGood"], true, "{st}");
    assert!(dep(&st, &v1).unwrap().get("triesLeft").is_none(), "{st}");

    // Follow the server; the agent applies at once.
    sh(
        &mut vm,
        &format!(
            "ostree admin set-origin --set=gpg-verify=false updates file:///run/updates/repo {}",
            f.ref_
        ),
    );
    sh(
        &mut vm,
        "mkdir -p /etc/kiln && printf 'mode = \"apply\"\\nreboot = \"immediate\"\\n' > /etc/kiln/updates.toml",
    );
    let from = vm.console().len();
    vm.send("kiln upgrade --auto\n").unwrap();
    // v2 boots twice (2 tries), fails each time, then v1 boots: N + 1 boots.
    assert_eq!(boots_until(&mut vm, from, &v1, 3), (2, 1));
    let console = vm.console();
    assert!(
        console.contains("kiln-e2e-bad.service is failed"),
        "the failed check is not on the console"
    );
    assert_eq!(health_state(&mut vm), "active");
    let st = vm_status_json(&mut vm);
    assert_eq!(common::booted_in_status(&st), v1, "{st}");
    assert_eq!(st["status"]["default"]["checksum"], v1.as_str(), "{st}");
    let rej = st["status"]["rejected"].as_array().unwrap();
    assert_eq!(rej.len(), 1, "{st}");
    assert_eq!(rej[0]["commit"], v2.as_str(), "{st}");
    assert_eq!(rej[0]["unit"], "kiln-e2e-bad.service", "{st}");
    let log = rej[0]["log"].to_string();
    assert!(log.contains("the service is broken"), "{st}");
    assert!(dep(&st, &v1).unwrap().get("triesLeft").is_none(), "{st}");
    let text = sh(&mut vm, "kiln status");
    assert!(text.contains(&format!("Rejected: {v2}")), "{text}");
    let env = sh(&mut vm, "head -c 512 /boot/grub/grubenv; echo");
    assert!(!env.contains(&format!("kiln_pending={v2}")), "{env}");

    // The next agent run does not take v2 again.
    common::booted::mount_updates(&mut vm);
    sh(&mut vm, "kiln upgrade --auto");
    let st = vm_status_json(&mut vm);
    assert_eq!(
        st["status"]["lastUpdateCheck"]["result"], "rejected",
        "{st}"
    );
    assert!(st["status"]["staged"].is_null(), "{st}");

    // v3 is published (the server's ref moves): taken, booted, marked good.
    sh(
        &mut vm,
        "ostree remote delete updates && ostree remote add --set=gpg-verify=false updates file:///run/updates/repo2",
    );
    let from = vm.console().len();
    vm.send("kiln upgrade --auto\n").unwrap();
    assert_eq!(boots_until(&mut vm, from, &v3, 1), (1, 0));
    assert_eq!(health_state(&mut vm), "active");
    let st = vm_status_json(&mut vm);
    assert_eq!(common::booted_in_status(&st), v3, "{st}");
    assert_eq!(st["status"]["bootGood"], true, "{st}");
    assert!(dep(&st, &v3).unwrap().get("triesLeft").is_none(), "{st}");
    assert_eq!(st["status"]["rejected"].as_array().unwrap().len(), 1);
    let env = sh(&mut vm, "head -c 512 /boot/grub/grubenv; echo");
    assert!(
        !env.contains("kiln_tries="),
        "the trial of v3 did not end: {env}"
    );

    // A kernel panic on trial (v3's policy: 1 try): GRUB falls back with no human action.
    sh(&mut vm, "kiln kargs --append rdinit=/nonexistent");
    let st = vm_status_json(&mut vm);
    assert_eq!(st["status"]["staged"]["triesLeft"], 1, "{st}");
    let from = vm.console().len();
    vm.send("systemctl reboot\n").unwrap();
    vm.wait_for("Kernel panic", common::boot_timeout())
        .expect("the deployment on trial did not panic");
    assert_eq!(boots_until(&mut vm, from, &v3, 1), (1, 1));
    assert_eq!(health_state(&mut vm), "active");
    let cmdline = sh(&mut vm, "cat /proc/cmdline");
    assert!(!cmdline.contains("rdinit=/nonexistent"), "{cmdline}");
    let st = vm_status_json(&mut vm);
    let next = &st["status"]["default"];
    assert_eq!(next["checksum"], v3.as_str(), "{st}");
    assert!(
        !next["kernelArgs"].to_string().contains("rdinit"),
        "the panicking deployment is still the default: {st}"
    );
    // Same commit as the one running: not the commit's fault, not remembered.
    assert_eq!(
        st["status"]["rejected"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    let journal = sh(
        &mut vm,
        "journalctl -b -u kiln-health.service --no-pager -o cat",
    );
    assert!(journal.contains("Abandoned deployment"), "{journal}");
}

/// Where a drop-in sets the fault point of `kiln health check` (in /etc: a staged
/// deployment's /etc is merged from it, so the deployment on trial has it too).
const FAULT_DROPIN: &str = "/etc/systemd/system/kiln-health.service.d/50-fault.conf";

/// One power-loss moment of the v2 → v1 fallback.
struct Moment {
    what: &'static str,
    /// The bad commit staged (its policy gives it 1 or 2 tries).
    commit: String,
    /// A fault point of `kiln health check`, or `None`: reset right after GRUB's write
    /// (when the kernel prints its first line).
    point: Option<&'static str>,
    /// Its tries: the trial boots from `systemctl reboot` to v1, the reset one included.
    tries: usize,
}

/// e2e under QEMU (TCG): power loss (QEMU hard reset, `system_reset`) at the moments that
/// write boot-counting state during the v2 → v1 fallback, in one VM: GRUB's `save_env`,
/// the failed check's record (tries left: reboot), and the cleared trial (Linux's write of
/// grubenv on the boot partition). After each the machine boots v2 or v1, never neither,
/// takes exactly its tries (counted in boots) and ends on v1 with v2 rejected and nothing
/// on trial. The rejection's other two writes are power-loss tested elsewhere on the same
/// code: the new boot order is `rollback:written` of tests/vm_powerloss.rs; the record is
/// written as the failure record is (temp file, fsync, rename, directory fsync), which the
/// second moment cuts.
#[test]
fn vm_power_loss_during_fallback_keeps_tries_accounted() {
    let f = common::base_commit();
    let base = common::booted::booted_fixture();
    let work = common::fixture_workdir("health-powerloss-");
    let v1 = base.v1.clone();
    let bad2 = variant(&f, work.path(), "health-bad", 2, true);
    let bad1 = variant(&f, work.path(), "health-bad-once", 1, true);
    let disk = update_disk(
        &f,
        work.path(),
        &[("repo", "e2e/bad2", &bad2), ("repo", "e2e/bad1", &bad1)],
    );
    let mut o = common::booted::booted_options(&base, "health-powerloss");
    o.disks[0].path = disk;
    let mut vm = common::booted::resume_booted_with(o);
    let moments = [
        // GRUB took the only try; the rollback entry boots next, v1 abandons v2.
        Moment {
            what: "GRUB save_env",
            commit: bad1.clone(),
            point: None,
            tries: 1,
        },
        // Tries left: the failure is recorded, then the reset instead of the reboot.
        Moment {
            what: "failed check recorded",
            commit: bad2.clone(),
            point: Some("trial:failure-written"),
            tries: 2,
        },
        Moment {
            what: "trial cleared",
            commit: bad1.clone(),
            point: Some("trial:env-written"),
            tries: 1,
        },
    ];
    for m in &moments {
        let t = std::time::Instant::now();
        common::booted::mount_updates(&mut vm);
        match m.point {
            Some(p) => sh(
                &mut vm,
                &format!(
                    "mkdir -p {d} && printf '[Service]\\nEnvironment={e}={p}\\n' > {FAULT_DROPIN}",
                    d = Path::new(FAULT_DROPIN).parent().unwrap().display(),
                    e = kiln::deploy::safety::FAULT_POINT_ENV
                ),
            ),
            None => sh(&mut vm, &format!("rm -f {FAULT_DROPIN}")),
        };
        // A rejection from an earlier moment is forgotten: this one must record it anew.
        vm.run(&format!("kiln health forget {}", m.commit), VM_CMD)
            .unwrap();
        sh(
            &mut vm,
            &format!("kiln deploy --repo /run/updates/repo {}", m.commit),
        );
        let from = vm.console().len();
        vm.send("systemctl reboot\n").unwrap();
        match m.point {
            // Right after GRUB's save_env: the kernel's first lines.
            None => vm.wait_for("Kernel command line:", common::boot_timeout()),
            Some(p) => vm.wait_for(
                &format!("{} {p}", kiln::deploy::safety::FAULT_MARK),
                common::boot_timeout() * 2,
            ),
        }
        .unwrap_or_else(|e| panic!("{}: the moment never came: {e:#}", m.what));
        vm.reset().expect("system_reset");
        // Up to v1, the reset boot included: exactly its tries, then v1.
        let seen = boots_until(&mut vm, from, &v1, m.tries + 1);
        assert_eq!(seen, (m.tries, 1), "{}: trial and other boots", m.what);
        assert_eq!(health_state(&mut vm), "active", "{}", m.what);
        let st = vm_status_json(&mut vm);
        assert_eq!(common::booted_in_status(&st), v1, "{}: {st}", m.what);
        assert_eq!(
            st["status"]["default"]["checksum"],
            v1.as_str(),
            "{}: {st}",
            m.what
        );
        assert!(
            st["status"]["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["commit"] == m.commit.as_str()),
            "{}: not rejected: {st}",
            m.what
        );
        let env = sh(&mut vm, "head -c 512 /boot/grub/grubenv; echo");
        assert!(
            !env.contains("kiln_tries="),
            "{}: still on trial: {env}",
            m.what
        );
        eprintln!(
            "power loss at {}: boots {seen:?} in {:.0?}",
            m.what,
            t.elapsed()
        );
    }
}
