//! FleetLock helpers shared by tests/fleetlock.rs, tests/vm_fleetlock.rs and
//! benches/fleetlock.rs (which includes this file by path): a real etcd cluster on
//! 127.0.0.1 (free ports, data in a temp dir), `kiln fleetlock serve` instances, the
//! semaphore history read back from etcd, and a load of good and bad requests.
//! Self-contained: it uses nothing else of tests/common.
#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} on 127.0.0.1:{port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of real `etcd` processes on 127.0.0.1; stopped on drop.
pub struct Etcd {
    dir: PathBuf,
    members: Vec<Member>,
    initial: String,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(dir: &Path, n: usize) -> Etcd {
        std::fs::create_dir_all(dir).unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut e = Etcd {
            dir: dir.to_path_buf(),
            members,
            initial,
        };
        for i in 0..n {
            e.spawn(i);
        }
        for m in &e.members {
            wait_port(m.client, "etcd");
        }
        e.wait_healthy();
        e
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(&self.initial)
            .args(["--initial-cluster-token", "kiln-test"])
            .args(["--initial-cluster-state", "new"])
            // A busy 2-core machine: give the leader's heartbeats room.
            .args(["--heartbeat-interval", "200", "--election-timeout", "2000"]);
        let log = self.dir.join(format!("{}.log", m.name));
        let child = spawn_logged(&mut cmd, &log);
        self.members[i].child = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        stop(&mut self.members[i].child);
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        wait_port(self.members[i].client, "etcd");
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            let eps: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .map(|m| format!("http://127.0.0.1:{}", m.client))
                .collect();
            let ok = Command::new("etcdctl")
                .arg(format!("--endpoints={}", eps.join(",")))
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "etcd did not become healthy; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl ARGS -w json` against the running members.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        let out = Command::new("etcdctl")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(args)
            .args(["-w", "json"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every group's holders at every revision from 1 to now, read back from etcd's
    /// history (`etcdctl get --rev=N`): (revision, group, holders).
    pub fn holder_history(&self, prefix: &str) -> Vec<(i64, String, Vec<String>)> {
        let now = self.ctl_json(&["get", "--prefix", prefix])["header"]["revision"]
            .as_i64()
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for rev in 1..=now {
            let v = self.ctl_json(&["get", "--prefix", prefix, &format!("--rev={rev}")]);
            for kv in v["kvs"].as_array().into_iter().flatten() {
                let key =
                    String::from_utf8(b64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap();
                let sem: Value =
                    serde_json::from_slice(&b64.decode(kv["value"].as_str().unwrap()).unwrap())
                        .unwrap();
                let holders = sem["holders"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h.as_str().unwrap().to_string())
                    .collect();
                out.push((rev, key.trim_start_matches(prefix).to_string(), holders));
            }
        }
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            stop(&mut m.child);
        }
    }
}

/// A `kiln fleetlock serve` process; stopped on drop.
pub struct Server {
    kiln: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `kiln fleetlock serve` on a free port with `groups` (`NAME=SLOTS`).
    pub fn start(kiln: &Path, dir: &Path, name: &str, etcd: &[String], groups: &[&str]) -> Server {
        let port = free_port();
        let mut args = vec![
            "fleetlock".to_string(),
            "serve".into(),
            "--etcd".into(),
            etcd.join(","),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        for g in groups {
            args.push("--group".into());
            args.push(g.to_string());
        }
        let mut s = Server {
            kiln: kiln.to_path_buf(),
            args,
            log: dir.join(format!("fleetlock-{name}.log")),
            port,
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.child = Some(spawn_logged(
            Command::new(&self.kiln).args(&self.args),
            &self.log,
        ));
        wait_port(self.port, "kiln fleetlock serve");
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// POSTs a FleetLock request: (status, body).
pub fn post(agent: &ureq::Agent, url: &str, header: bool, body: &str) -> (u16, String) {
    let mut req = agent.post(url);
    if header {
        req = req.set("fleet-lock-protocol", "true");
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// One answer of [`hammer`].
pub struct Answer {
    pub kind: usize,
    pub status: u16,
    pub body: String,
    pub latency: Duration,
}

/// What request `i` of [`hammer`] is: 0 take a slot, 1 give it back, 2 no protocol
/// header, 3 malformed JSON, 4 unknown group.
pub const KINDS: [&str; 5] = [
    "pre-reboot",
    "steady-state",
    "no header",
    "malformed JSON",
    "unknown group",
];

/// `total` requests from `clients` concurrent clients (each its own connection pool and
/// id), cycling through [`KINDS`]; `group` must have at least `clients` slots.
pub fn hammer(base: &str, group: &str, clients: usize, total: usize) -> Vec<Answer> {
    let per = total / clients;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let base = base.to_string();
            let group = group.to_string();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let good =
                    format!(r#"{{"client_params":{{"id":"client-{c}","group":"{group}"}}}}"#);
                let unknown =
                    format!(r#"{{"client_params":{{"id":"client-{c}","group":"no-such-group"}}}}"#);
                let mut out = Vec::with_capacity(per);
                for i in 0..per {
                    let kind = i % KINDS.len();
                    let (path, header, body) = match kind {
                        0 => ("pre-reboot", true, good.as_str()),
                        1 => ("steady-state", true, good.as_str()),
                        2 => ("pre-reboot", false, good.as_str()),
                        3 => ("pre-reboot", true, r#"{"client_params": {"id": "#),
                        _ => ("steady-state", true, unknown.as_str()),
                    };
                    let t = Instant::now();
                    let (status, body) = post(&agent, &format!("{base}/v1/{path}"), header, body);
                    out.push(Answer {
                        kind,
                        status,
                        body,
                        latency: t.elapsed(),
                    });
                }
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}
