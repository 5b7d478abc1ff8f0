// suite-minutes: 4 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! Fleet updates under QEMU (TCG, run as root): a VM built to follow a `kiln publish`ed
//! server (nginx on 127.0.0.1, reached only through a guestfwd) stages v2 by itself,
//! boots it and rolls back. The fleet tests without a VM are in tests/fleet.rs.

mod common;

use common::fleet::{s, Env, Gpg, Nginx};
use kiln::cmd::Cmd;
use serde_json::Value;

/// e2e under QEMU (TCG): the base image built to follow the fleet's server
/// (`kiln image --remote`, the release key trusted), provisioned by Ignition with
/// `mode = "stage"`, boots v1; the automatic update finds v2 on nginx (127.0.0.1, reached
/// only through QEMU's restricted user network and one guestfwd), pulls and stages it;
/// after a reboot the VM runs v2; `kiln rollback` + reboot returns to v1.
#[test]
fn vm_follows_the_server_stages_v2_and_rolls_back() {
    use common::{vm_login, wait_booted, VM_CMD};
    use kiln::qemu::{Vm, VmOptions};
    let f = common::base_commit();
    let env = Env::new();
    let work = common::fixture_workdir("fleet-e2e-");
    let key = Gpg::new(env.dir.path(), "release");

    // v2 of the base image, published signed as the server's newest commit of the ref.
    let v2 = common::base_v2(&f, work.path());
    Cmd::new("ostree")
        .arg(format!("--repo={}", s(&env.build)))
        .args(["pull-local", s(&f.repo), &v2])
        .run()
        .unwrap();
    Cmd::new("ostree")
        .arg(format!("--repo={}", s(&env.build)))
        .args(["refs", &format!("--create={}", f.ref_), &v2])
        .run()
        .unwrap();
    let p = env.publish(
        "srv",
        &["--gpg-sign", &key.fpr, "--gpg-homedir", s(&key.home)],
    );
    assert_eq!(p["refs"][0]["to"], v2.as_str(), "{p}");
    let nginx = Nginx::start(env.dir.path(), &env.path("srv"));

    // The image follows origin=http://10.0.2.100/ (the guestfwd address).
    let image = work.path().join("fleet.qcow2");
    let mut o = kiln::image::ImageOptions::new(&f.repo, &f.ref_, &image);
    o.extra_kargs = vec!["kiln.autologin".into()];
    o.remote = Some(kiln::image::ImageRemote {
        name: "origin".into(),
        url: "http://10.0.2.100/".into(),
        gpg_keys: vec![key.public.clone()],
        gpg_verify: true,
    });
    let mut progress = kiln::progress::Progress::new(false);
    kiln::image::build(&o, &mut progress).expect("kiln image --remote");

    // Ignition (fw_cfg) sets the machine's update policy.
    let ign = work.path().join("stage.ign");
    std::fs::write(
        &ign,
        serde_json::json!({
            "ignition": {"version": "3.3.0"},
            "storage": {"files": [{
                "path": "/etc/kiln/updates.toml",
                "mode": 420,
                "contents": {"source": "data:,mode%20%3D%20%22stage%22%0A"}
            }]}
        })
        .to_string(),
    )
    .unwrap();
    let mut vo = VmOptions::new(&image, "fleet-e2e");
    vo.artifacts = common::vm_artifacts();
    vo.network = true;
    vo.guestfwd = vec![("10.0.2.100:80".into(), nginx.port)];
    vo.fw_cfg = vec![("opt/com.coreos/config".into(), ign)];
    let mut vm = Vm::start(vo).unwrap();

    assert_eq!(wait_booted(&mut vm, "boot 1"), f.commit);
    vm_login(&mut vm);
    let st = common::vm_status_json(&mut vm);
    let refspec = st["status"]["deployments"][0]["refspec"].clone();
    assert_eq!(refspec, format!("origin:{}", f.ref_).as_str(), "{st}");
    // The server answers through the guestfwd (and nothing else is reachable).
    vm.run_ok(
        "curl -sS -m 60 -o /dev/null http://10.0.2.100/config",
        VM_CMD,
    )
    .unwrap_or_else(|e| panic!("the VM cannot reach the server: {e}"));
    // What kiln-upgrade.timer starts (hourly); started now rather than waited for.
    let (st, out) = vm
        .run(
            "timeout 1200 systemctl start kiln-upgrade.service; r=$?; \
             journalctl -b --no-pager -u kiln-upgrade.service | tail -n 40; (exit $r)",
            std::time::Duration::from_secs(1300),
        )
        .unwrap();
    assert_eq!(st, 0, "kiln-upgrade.service failed:\n{out}");
    let last: Value = serde_json::from_str(
        &vm.run_ok("cat /var/lib/kiln/last-check.json", VM_CMD)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["mode"], "stage", "{last}");
    assert_eq!(last["result"], "staged", "{last}");
    assert_eq!(last["to"], v2.as_str(), "{last}");
    let (reqs, bytes) = nginx.take_log();
    assert!(
        reqs.iter().any(|r| r.contains("/summary")),
        "the VM did not ask the server: {reqs:?}"
    );
    eprintln!("the VM pulled {} requests, {bytes} bytes", reqs.len());

    vm.send("systemctl reboot\n").unwrap();
    assert_eq!(
        wait_booted(&mut vm, "boot 2"),
        v2,
        "the staged update did not boot"
    );
    vm_login(&mut vm);
    assert_eq!(
        vm.run_ok("cat /usr/share/kiln-e2e-v2", VM_CMD).unwrap(),
        "v2"
    );
    assert_eq!(
        vm.run_ok("cat /etc/kiln/updates.toml", VM_CMD).unwrap(),
        "mode = \"stage\""
    );

    vm.run_ok("kiln rollback", VM_CMD).unwrap();
    vm.send("systemctl reboot\n").unwrap();
    assert_eq!(
        wait_booted(&mut vm, "boot 3"),
        f.commit,
        "rollback did not boot v1"
    );
}
