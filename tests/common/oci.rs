//! Registry helpers shared by tests/oci.rs, tests/vm_oci.rs and benches/oci.rs: Debian's
//! `docker-registry` on 127.0.0.1 with TLS from a CA the test makes (openssl), its access
//! log parsed for bytes served; a TCP relay that can vanish mid-transfer; a machine's
//! containers configuration (certs.d, policy.json, registries.d with a file lookaside for
//! simple signatures); a synthetic OS whose files belong to packages in its own dpkg
//! database. Self-contained, so benches/common includes it too.
#![allow(dead_code)]

use kiln::cmd::Cmd;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A test CA and a server certificate for 127.0.0.1.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn new(dir: &Path) -> Tls {
        Tls::for_ips(dir, &["127.0.0.1"])
    }

    /// A server certificate valid for each address of `ips` (a VM reaches the registry
    /// at its guestfwd address, the host at 127.0.0.1).
    pub fn for_ips(dir: &Path, ips: &[&str]) -> Tls {
        std::fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n);
        let ssl = |args: &[&str]| {
            Cmd::new("openssl").args(args).run().unwrap();
        };
        let s = |x: &PathBuf| x.to_str().unwrap().to_string();
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kiln test CA",
            "-keyout",
            &s(&p("ca.key")),
            "-out",
            &s(&p("ca.crt")),
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &s(&p("server.key")),
            "-out",
            &s(&p("server.csr")),
        ]);
        let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        std::fs::write(p("ext.cnf"), format!("subjectAltName={}\n", san.join(","))).unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            &s(&p("server.csr")),
            "-CA",
            &s(&p("ca.crt")),
            "-CAkey",
            &s(&p("ca.key")),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&p("ext.cnf")),
            "-out",
            &s(&p("server.crt")),
        ]);
        Tls {
            ca: p("ca.crt"),
            cert: p("server.crt"),
            key: p("server.key"),
        }
    }
}

/// `docker-registry` (distribution 2.8) on 127.0.0.1 with TLS.
pub struct Registry {
    handle: duct::Handle,
    pub port: u16,
    pub storage: PathBuf,
    log: PathBuf,
    log_pos: std::cell::Cell<usize>,
}

impl Registry {
    pub fn start(dir: &Path, tls: &Tls) -> Registry {
        let port = free_port();
        let root = dir.join("registry");
        let storage = root.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let conf = root.join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
                storage.display(),
                tls.cert.display(),
                tls.key.display()
            ),
        )
        .unwrap();
        let log = root.join("access.log");
        let handle = Cmd::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .spawn_logged(&log)
            .unwrap();
        wait_port(port);
        Registry {
            handle,
            port,
            storage,
            log,
            log_pos: std::cell::Cell::new(0),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (GET requests, bytes served for GETs) logged since the last call.
    pub fn take_log(&self) -> (Vec<String>, u64) {
        // The access log is written by the server process: give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let new = &text[self.log_pos.get().min(text.len())..];
        self.log_pos.set(text.len());
        parse_access_log(new)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.handle.kill();
    }
}

/// Apache combined log lines: `HOST - - [date] "GET /v2/… HTTP/1.1" 200 BYTES "…" "…"`.
pub fn parse_access_log(text: &str) -> (Vec<String>, u64) {
    let mut reqs = Vec::new();
    let mut bytes = 0;
    for l in text.lines() {
        let Some((_, rest)) = l.split_once("\"GET ") else {
            continue;
        };
        let Some((path, tail)) = rest.split_once(' ') else {
            continue;
        };
        let Some(after) = tail.split_once("\" ").map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.len() >= 2 {
            bytes += f[1].parse::<u64>().unwrap_or(0);
            reqs.push(format!("{} {path}", f[0]));
        }
    }
    (reqs, bytes)
}

/// A TCP relay to a server on 127.0.0.1 that goes away for good once it has relayed
/// `limit` bytes towards the client (a registry that vanishes mid-pull).
pub struct Relay {
    pub port: u16,
    limit: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        Relay::start_on(0, target)
    }

    /// On a given port (0: any), e.g. the port of a relay that went away.
    pub fn start_on(port: u16, target: u16) -> Relay {
        let start = std::time::Instant::now();
        let l = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if start.elapsed().as_secs() < 10 => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("binding 127.0.0.1:{port}: {e}"),
            }
        };
        let port = l.local_addr().unwrap().port();
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (lim, snt, stp) = (limit.clone(), sent.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || loop {
            if stp.load(Ordering::SeqCst) {
                return;
            }
            let Ok((client, _)) = l.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            client.set_nonblocking(false).unwrap();
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(c2, s2, None));
            let (lim, snt, stp) = (lim.clone(), snt.clone(), stp.clone());
            std::thread::spawn(move || pump(server, client, Some((lim, snt, stp))));
        });
        Relay {
            port,
            limit,
            sent,
            stop,
        }
    }

    /// From now on, vanish after `n` more bytes.
    pub fn cut_after(&self, n: u64) {
        self.limit
            .store(self.sent.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    pub fn gone(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

type Budget = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>);

fn pump(mut from: TcpStream, mut to: TcpStream, budget: Option<Budget>) {
    let mut buf = [0u8; 16384];
    loop {
        if let Some((_, _, stop)) = &budget {
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((limit, sent, stop)) = &budget {
            let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > limit.load(Ordering::SeqCst) {
                stop.store(true, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A machine's containers configuration directory (like /etc/containers).
pub struct Containers {
    pub dir: PathBuf,
    pub sigs: PathBuf,
}

impl Containers {
    /// certs.d for each `host`, registries.d with a file lookaside for simple signatures,
    /// and `policy` as policy.json.
    pub fn new(dir: &Path, tls: &Tls, hosts: &[String], policy: &serde_json::Value) -> Containers {
        let sigs = dir.join("sigstore");
        std::fs::create_dir_all(&sigs).unwrap();
        let mut rd = String::from("docker:\n");
        for h in hosts {
            let c = dir.join("certs.d").join(h);
            std::fs::create_dir_all(&c).unwrap();
            std::fs::copy(&tls.ca, c.join("ca.crt")).unwrap();
            rd.push_str(&format!(
                "  {h}:\n    lookaside: file://{s}\n    lookaside-staging: file://{s}\n",
                s = sigs.display()
            ));
        }
        std::fs::create_dir_all(dir.join("registries.d")).unwrap();
        std::fs::write(dir.join("registries.d/kiln-test.yaml"), rd).unwrap();
        std::fs::write(
            dir.join("policy.json"),
            serde_json::to_vec_pretty(policy).unwrap(),
        )
        .unwrap();
        Containers {
            dir: dir.to_path_buf(),
            sigs,
        }
    }

    pub fn certs(&self, host: &str) -> PathBuf {
        self.dir.join("certs.d").join(host)
    }
}

/// A policy that requires a signature by `key` for `scopes` and rejects everything else.
pub fn signed_policy(scopes: &[String], key: &Path) -> serde_json::Value {
    let mut docker = serde_json::Map::new();
    for s in scopes {
        docker.insert(
            s.clone(),
            serde_json::json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": key}]),
        );
    }
    serde_json::json!({"default": [{"type": "reject"}], "transports": {"docker": docker}})
}

/// Pseudo-random bytes (incompressible, so layer sizes are real).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Adds `n` packages `pkgI` (I in 0..n) of `size(I)` bytes each to a tree, with their
/// dpkg database; `bump` packages get new content and a new version.
pub fn add_packages(t: &Path, n: usize, size: impl Fn(usize) -> usize, bump: &[usize], v: u32) {
    let db = t.join("usr/lib/sysimage/dpkg/info");
    std::fs::create_dir_all(&db).unwrap();
    let mut status = String::new();
    for i in 0..n {
        let changed = bump.contains(&i);
        let ver = if changed {
            format!("1.{v}")
        } else {
            "1.0".into()
        };
        let dir = t.join(format!("usr/share/pkg{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let seed = (i as u64) * 1000 + if changed { u64::from(v) } else { 0 };
        std::fs::write(dir.join("data"), noise(seed, size(i))).unwrap();
        std::fs::write(
            db.join(format!("pkg{i}.list")),
            format!("/usr\n/usr/share\n/usr/share/pkg{i}\n/usr/share/pkg{i}/data\n"),
        )
        .unwrap();
        status.push_str(&format!(
            "Package: pkg{i}\nStatus: install ok installed\nVersion: {ver}\nArchitecture: amd64\n\n"
        ));
    }
    std::fs::write(t.join("usr/lib/sysimage/dpkg/status"), status).unwrap();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let start = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed().as_secs() < 10,
            "server on 127.0.0.1:{port} did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
