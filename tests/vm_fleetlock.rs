// suite-minutes: 5 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! Coordinated reboots under QEMU (TCG, run as root): the saved booted base system,
//! following the update disk, with `strategy = "fleetlock"` against `kiln fleetlock
//! serve` and etcd on 127.0.0.1 (reached only through a guestfwd). The tests without a
//! VM are in tests/fleetlock.rs.

mod common;

use common::fleetlock::{post, Etcd, Server};
use common::{vm_login, wait_booted, VM_CMD};
use serde_json::Value;
use std::time::{Duration, Instant};

const PREFIX: &str = "kiln/fleetlock/v1/groups/";

/// e2e: the only slot of the group is held by another machine: the agent waits (no
/// reboot) and is counted as waiting; once the operator releases the dead holder, the
/// agent takes the slot, runs its pre-reboot hook and reboots into v2; after
/// kiln-health.service marks the boot good, kiln-fleetlock-steady.service gives the slot
/// back and runs the post-boot hook. The holder's id, read back from etcd's history, is
/// the machine's id derived from its machine-id.
#[test]
fn vm_takes_a_slot_reboots_into_v2_and_gives_it_back() {
    let b = common::booted::booted_fixture();
    let td = tempfile::Builder::new()
        .prefix("kiln-fleetlock-e2e")
        .tempdir_in("/var/tmp")
        .unwrap();
    let etcd = Etcd::start(&td.path().join("etcd"), 1);
    let eps = etcd.endpoints().join(",");
    let server = Server::start(
        &common::kiln_bin(),
        td.path(),
        "e2e",
        &etcd.endpoints(),
        &["default=1"],
    );
    let http = ureq::AgentBuilder::new().build();
    let hold = r#"{"client_params":{"id":"dead-machine","group":"default"}}"#;
    let (code, text) = post(
        &http,
        &format!("{}/v1/pre-reboot", server.url()),
        true,
        hold,
    );
    assert_eq!(code, 200, "{text}");

    let mut o = common::booted::booted_options(&b, "fleetlock-e2e");
    o.guestfwd = vec![("10.0.2.100:80".into(), server.port)];
    let mut vm = common::booted::resume_booted_with(o);
    common::booted::mount_updates(&mut vm);
    let setup = format!(
        "ostree admin set-origin --set=gpg-verify=false origin file://{up} && \
         mkdir -p /etc/kiln/pre-reboot.d /etc/kiln/post-boot.d && \
         printf '%s\\n' 'mode = \"apply\"' 'reboot = \"immediate\"' 'strategy = \"fleetlock\"' \
           '[fleetlock]' 'url = \"http://10.0.2.100\"' > /etc/kiln/updates.toml && \
         printf '#!/bin/sh\\necho drained > /var/kiln-drained\\n' > /etc/kiln/pre-reboot.d/10-drain && \
         printf '#!/bin/sh\\necho uncordoned > /var/kiln-uncordoned\\n' > /etc/kiln/post-boot.d/10-uncordon && \
         chmod 755 /etc/kiln/pre-reboot.d/10-drain /etc/kiln/post-boot.d/10-uncordon && \
         systemctl enable kiln-fleetlock-steady.service && cat /etc/machine-id",
        up = common::booted::UPDATES
    );
    let machine_id = vm.run_ok(&setup, VM_CMD).unwrap();
    let machine_id = machine_id.lines().last().unwrap().trim().to_string();
    let id = kiln::fleetlock::client::machine_lock_id(&machine_id).unwrap();
    vm.run_ok(
        "curl -sS -m 60 http://10.0.2.100/metrics | grep -c kiln_fleetlock",
        VM_CMD,
    )
    .unwrap_or_else(|e| panic!("the VM cannot reach the server: {e}"));

    // What kiln-upgrade.timer starts; it waits for the slot and must not reboot.
    vm.run_ok("systemctl start --no-block kiln-upgrade.service", VM_CMD)
        .unwrap();
    let metrics = || {
        http.get(&format!("{}/metrics", server.url()))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    let t = Instant::now();
    while !metrics().contains("kiln_fleetlock_waiting_clients{group=\"default\"} 1") {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "the agent never asked for a slot:\n{}\n{}",
            metrics(),
            vm.run(
                "journalctl -b --no-pager -u kiln-upgrade.service | tail -n 30",
                VM_CMD
            )
            .map(|r| r.1)
            .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, journal) = vm
        .run(
            "journalctl -b --no-pager -u kiln-upgrade.service | tail -n 30",
            VM_CMD,
        )
        .unwrap();
    assert!(journal.contains("failed_lock"), "{journal}");
    assert!(
        vm.run("test -e /var/kiln-drained", VM_CMD).unwrap().0 != 0,
        "the pre-reboot hook ran without a slot"
    );

    // The operator lets the dead holder go; the agent gets the slot and reboots.
    common::kiln_ok(&["fleetlock", "release", "dead-machine", "--etcd", &eps]);
    assert_eq!(wait_booted(&mut vm, "boot 2"), b.v2, "did not boot v2");
    vm_login(&mut vm);
    let (st, out) = vm
        .run(
            "timeout 900 systemctl start kiln-fleetlock-steady.service; r=$?; \
             journalctl -b --no-pager -u kiln-health.service -u kiln-fleetlock-steady.service | tail -n 30; (exit $r)",
            Duration::from_secs(960),
        )
        .unwrap();
    assert_eq!(st, 0, "kiln-fleetlock-steady.service failed:\n{out}");
    vm.run_ok("test -e /run/kiln/boot-good", VM_CMD).unwrap();
    assert_eq!(
        vm.run_ok("cat /var/kiln-drained", VM_CMD).unwrap(),
        "drained"
    );
    assert_eq!(
        vm.run_ok("cat /var/kiln-uncordoned", VM_CMD).unwrap(),
        "uncordoned"
    );
    assert!(
        vm.run("test -e /var/lib/kiln/fleetlock-slot.json", VM_CMD)
            .unwrap()
            .0
            != 0
    );
    let last: Value = serde_json::from_str(
        &vm.run_ok("cat /var/lib/kiln/last-check.json", VM_CMD)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (last["result"].as_str(), last["reboot"].as_str()),
        (Some("staged"), Some("requested")),
        "{last}"
    );

    // The slot is free again; etcd's history shows the machine's id holding it alone.
    let st: Value = serde_json::from_str(&common::kiln_ok(&[
        "fleetlock",
        "status",
        "--etcd",
        &eps,
        "--json",
    ]))
    .unwrap();
    assert_eq!(st[0]["holders"], serde_json::json!([]), "{st}");
    let history = etcd.holder_history(PREFIX);
    assert!(
        history.iter().any(|(_, _, h)| h == &vec![id.clone()]),
        "{id} never held the slot: {history:?}"
    );
    assert!(history.iter().all(|(_, _, h)| h.len() <= 1), "{history:?}");
    assert!(metrics().contains("kiln_fleetlock_slots_held{group=\"default\"} 0"));
}
