//! Coordinated reboots on this machine (run as root): a real 3-member etcd cluster and
//! `kiln fleetlock serve` instances on 127.0.0.1, agents driving directory sysroots with
//! their reboot recorded by `--reboot-command`. The limit is checked from etcd's own
//! revision history. A VM taking and giving back a slot: tests/vm_fleetlock.rs.

mod common;

use common::fleet::{commit_with_policy, s, Env};
use common::fleetlock::{hammer, post, Etcd, Server, KINDS};
use common::{kiln, kiln_bin, kiln_ok, OS};
use kiln::updates::{Fleetlock, Mode, Reboot, Strategy, Updates};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PREFIX: &str = "kiln/fleetlock/v1/groups/";
const AGENTS: usize = 8;
const SLOTS: usize = 2;

fn policy(url: &str) -> Updates {
    Updates {
        mode: Mode::Apply,
        reboot: Reboot::Immediate,
        strategy: Strategy::Fleetlock,
        fleetlock: Some(Fleetlock {
            url: url.into(),
            group: "default".into(),
        }),
        ..Default::default()
    }
}

fn write_exec(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The default deployment's directory of a sysroot.
fn default_deployment(sysroot: &Path) -> PathBuf {
    let st: Value =
        serde_json::from_str(&kiln_ok(&["status", "--sysroot", s(sysroot), "--json"])).unwrap();
    sysroot.join(st["status"]["default"]["path"].as_str().unwrap())
}

/// One machine: a sysroot following the published repo, its own machine-id, its policy
/// pointing at `url`, and a reboot command that records the reboot.
struct Machine {
    sysroot: PathBuf,
    reboots: PathBuf,
    reboot_cmd: PathBuf,
    boot_good: PathBuf,
}

fn machine(env: &Env, i: usize, pub_url: &str, url: &str) -> Machine {
    let dir = env.path(&format!("m{i}"));
    let sysroot = dir.join("sysroot");
    kiln_ok(&[
        "remote",
        "add",
        "origin",
        pub_url,
        "--sysroot",
        s(&sysroot),
        "--no-gpg-verify",
        "--force",
    ]);
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&sysroot),
        "--remote",
        "origin",
        common::REF,
    ]);
    let dep = default_deployment(&sysroot);
    std::fs::write(
        dep.join("etc/machine-id"),
        format!("{:032x}\n", 0xabc000 + i),
    )
    .unwrap();
    std::fs::create_dir_all(dep.join("etc/kiln")).unwrap();
    std::fs::write(
        dep.join("etc/kiln/updates.toml"),
        toml::to_string(&policy(url)).unwrap(),
    )
    .unwrap();
    let reboots = dir.join("reboots.log");
    let reboot_cmd = dir.join("reboot");
    write_exec(
        &reboot_cmd,
        &format!("#!/bin/sh\necho reboot >> {}\n", reboots.display()),
    );
    Machine {
        sysroot,
        reboots,
        reboot_cmd,
        boot_good: dir.join("boot-good"),
    }
}

fn reboot_count(m: &Machine) -> usize {
    std::fs::read_to_string(&m.reboots)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// One agent's life: the automatic update takes a slot and "reboots"; the machine is
/// down a while, the boot is marked good, the steady-state step gives the slot back.
fn agent_run(m: &Machine) -> Result<(), String> {
    let (code, out, err) = kiln(&[
        "upgrade",
        "--auto",
        "--sysroot",
        s(&m.sysroot),
        "--reboot-command",
        s(&m.reboot_cmd),
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}\n{err}"))?;
    if code != 0 || r["result"] != "deployed" || r["reboot"] != "requested" {
        return Err(format!("upgrade --auto: {code} {r}\n{err}"));
    }
    if reboot_count(m) != 1 {
        return Err("the reboot was not run once".into());
    }
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&m.boot_good, "").unwrap();
    let (code, out, err) = kiln(&[
        "fleetlock",
        "steady-state",
        "--sysroot",
        s(&m.sysroot),
        "--boot-good",
        s(&m.boot_good),
        "--patience",
        "5min",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}\n{err}"))?;
    if code != 0 || r["fleetlock"] != true {
        return Err(format!("steady-state: {code} {r}\n{err}"));
    }
    Ok(())
}

#[test]
fn eight_agents_two_slots_through_etcd_and_server_faults() {
    let env = Env::new();
    let work = env.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut etcd = Etcd::start(&env.path("etcd"), 3);
    let eps = etcd.endpoints();
    let group = format!("default={SLOTS}");
    let mut a = Server::start(&kiln_bin(), env.dir.path(), "a", &eps, &[&group]);
    let b = Server::start(&kiln_bin(), env.dir.path(), "b", &eps, &[&group]);

    commit_with_policy(&env.build, &work, 1, &policy(&a.url()));
    env.publish("pub", &[]);
    let pub_url = format!("file://{}", env.path("pub").display());
    let machines: Vec<Machine> = (0..AGENTS)
        .map(|i| {
            machine(
                &env,
                i,
                &pub_url,
                &if i % 2 == 0 { a.url() } else { b.url() },
            )
        })
        .collect();
    // A pre-reboot hook on one machine records that it ran with the slot held.
    let hook_log = env.path("hook.log");
    write_exec(
        &default_deployment(&machines[0].sysroot).join("etc/kiln/pre-reboot.d/10-drain"),
        &format!("#!/bin/sh\necho drained >> {}\n", hook_log.display()),
    );
    commit_with_policy(&env.build, &work, 2, &policy(&a.url()));
    env.publish("pub", &[]);

    let start = Instant::now();
    let machines = std::sync::Arc::new(machines);
    let agents: Vec<_> = (0..AGENTS)
        .map(|i| {
            let ms = std::sync::Arc::clone(&machines);
            std::thread::spawn(move || agent_run(&ms[i]))
        })
        .collect();
    // Faults while the agents run: an etcd member dies and comes back, then a server.
    std::thread::sleep(Duration::from_secs(3));
    etcd.kill(1);
    std::thread::sleep(Duration::from_secs(4));
    etcd.restart(1);
    std::thread::sleep(Duration::from_secs(1));
    let done = machines.iter().filter(|m| m.boot_good.exists()).count();
    assert!(
        done < AGENTS,
        "every agent finished before the server fault"
    );
    a.kill();
    std::thread::sleep(Duration::from_secs(4));
    a.restart();
    let mut failures = Vec::new();
    for (i, t) in agents.into_iter().enumerate() {
        if let Err(e) = t.join().unwrap() {
            failures.push(format!("agent {i}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\nserver a:\n{}", a.log());
    eprintln!("8 agents done in {:.1} s", start.elapsed().as_secs_f64());
    etcd.wait_healthy();
    for m in machines.iter() {
        assert_eq!(reboot_count(m), 1, "{}", m.sysroot.display());
    }
    assert_eq!(std::fs::read_to_string(&hook_log).unwrap(), "drained\n");

    // The limit, from etcd's history of the group's key: never more than SLOTS holders
    // at any revision; every machine held a slot once; none holds one now.
    let history = etcd.holder_history(PREFIX);
    let max = history.iter().map(|(_, _, h)| h.len()).max().unwrap();
    assert!(max <= SLOTS, "over the limit: {history:?}");
    assert_eq!(max, SLOTS, "the agents never competed: {history:?}");
    let ids: BTreeSet<&String> = history.iter().flat_map(|(_, _, h)| h).collect();
    assert_eq!(ids.len(), AGENTS, "{history:?}");
    assert!(history.last().unwrap().2.is_empty(), "{history:?}");
    let st: Value = serde_json::from_str(&kiln_ok(&[
        "fleetlock",
        "status",
        "--etcd",
        &eps.join(","),
        "--json",
    ]))
    .unwrap();
    assert_eq!(st[0]["holders"], serde_json::json!([]), "{st}");
    assert_eq!(st[0]["totalSlots"], SLOTS);

    // A failing pre-reboot hook cancels that reboot and gives the slot back.
    let m = &machines[1];
    write_exec(
        &default_deployment(&m.sysroot).join("etc/kiln/pre-reboot.d/50-fail"),
        "#!/bin/sh\necho cannot drain >&2\nexit 1\n",
    );
    commit_with_policy(&env.build, &work, 3, &policy(&a.url()));
    env.publish("pub", &[]);
    let (code, out, err) = kiln(&[
        "upgrade",
        "--auto",
        "--sysroot",
        s(&m.sysroot),
        "--reboot-command",
        s(&m.reboot_cmd),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reboot"], "cancelledByHook", "{r}");
    assert!(r["error"].as_str().unwrap().contains("50-fail"), "{r}");
    assert_eq!(reboot_count(m), 1, "the cancelled reboot ran");
    let history = etcd.holder_history(PREFIX);
    assert!(history.last().unwrap().2.is_empty(), "{history:?}");
    drop(b);
    let _ = OS;
}

#[test]
fn bad_requests_get_fleetlock_errors_and_the_server_survives_load() {
    let td = tempfile::Builder::new()
        .prefix("kiln-fleetlock-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let etcd = Etcd::start(&td.path().join("etcd"), 1);
    let eps = etcd.endpoints();
    let mut srv = Server::start(&kiln_bin(), td.path(), "s", &eps, &["default=1", "load=50"]);
    let agent = ureq::AgentBuilder::new().build();
    let url = |p: &str| format!("{}/v1/{p}", srv.url());
    let body = |id: &str, g: &str| format!(r#"{{"client_params":{{"id":"{id}","group":"{g}"}}}}"#);
    let kind = |b: &str| {
        serde_json::from_str::<Value>(b).unwrap()["kind"]
            .as_str()
            .unwrap()
            .to_string()
    };

    for (path, header, b, status, k) in [
        (
            "pre-reboot",
            false,
            body("x", "default"),
            400,
            "invalid_client_identity",
        ),
        (
            "pre-reboot",
            true,
            "{not json".to_string(),
            400,
            "invalid_client_identity",
        ),
        (
            "pre-reboot",
            true,
            r#"{"client_params":{"id":"x"}}"#.to_string(),
            400,
            "invalid_client_identity",
        ),
        (
            "steady-state",
            true,
            body("", "default"),
            400,
            "invalid_client_identity",
        ),
        ("pre-reboot", true, body("x", "nope"), 400, "unknown_group"),
        ("elsewhere", true, body("x", "default"), 404, "not_found"),
    ] {
        let (code, text) = post(&agent, &url(path), header, &b);
        assert_eq!(
            (code, kind(&text).as_str()),
            (status, k),
            "{path} {b}: {text}"
        );
    }
    // One slot: a second machine is refused as airlock refuses; taking is idempotent.
    assert_eq!(
        post(&agent, &url("pre-reboot"), true, &body("dead", "default")).0,
        200
    );
    assert_eq!(
        post(&agent, &url("pre-reboot"), true, &body("dead", "default")).0,
        200
    );
    let (code, text) = post(&agent, &url("pre-reboot"), true, &body("other", "default"));
    assert_eq!((code, kind(&text).as_str()), (500, "failed_lock"), "{text}");
    // A machine died holding it: the operator sees it and lets it go.
    let st = kiln_ok(&["fleetlock", "status", "--etcd", &eps.join(",")]);
    assert!(st.contains("default: 1 of 1 slots held: dead"), "{st}");
    kiln_ok(&["fleetlock", "release", "dead", "--etcd", &eps.join(",")]);
    let (code, _, err) = kiln(&["fleetlock", "release", "dead", "--etcd", &eps.join(",")]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        post(&agent, &url("pre-reboot"), true, &body("other", "default")).0,
        200
    );
    let (code, _, err) = kiln(&["fleetlock", "serve", "--etcd", "ftp://x", "--group", "a=0"]);
    assert_eq!(code, 2, "{err}");

    // 10,000 requests from 50 clients, a fifth of them of each kind: each one answered
    // as the protocol says, the server alive after.
    let answers = hammer(&srv.url(), "load", 50, 10_000);
    assert_eq!(answers.len(), 10_000);
    for a in &answers {
        let want = match a.kind {
            0 | 1 => (200, None),
            4 => (400, Some("unknown_group")),
            _ => (400, Some("invalid_client_identity")),
        };
        let got_kind = (a.status != 200).then(|| kind(&a.body));
        assert_eq!(
            (a.status, got_kind.as_deref()),
            want,
            "{}: {}",
            KINDS[a.kind],
            a.body
        );
    }
    assert!(srv.alive(), "{}", srv.log());
    let metrics = agent
        .get(&format!("{}/metrics", srv.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "kiln_fleetlock_slots_held{group=\"load\"} 0",
        "kiln_fleetlock_slots_held{group=\"default\"} 1",
        "kiln_fleetlock_slots{group=\"load\"} 50",
        "kiln_fleetlock_requests_total{endpoint=\"pre-reboot\",result=\"ok\"} 2003",
        "kiln_fleetlock_waiting_clients{group=\"default\"} 0",
        "kiln_fleetlock_etcd_up 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
