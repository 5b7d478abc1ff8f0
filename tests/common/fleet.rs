//! Fleet helpers shared by tests/fleet.rs and tests/vm_fleet.rs: a throwaway GPG key,
//! nginx serving a directory on 127.0.0.1, and a temp build repo + sysroot driven through
//! the real `kiln` binary.

use super::{kiln, kiln_ok, unlock_deployments, KVER, OS, REF};
use kiln::cmd::Cmd;
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A throwaway GPG key in its own GNUPGHOME; the agent is stopped on drop.
pub struct Gpg {
    pub home: PathBuf,
    pub fpr: String,
    pub public: PathBuf,
}

impl Gpg {
    pub fn new(dir: &Path, name: &str) -> Gpg {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let gpg = |args: &[&str]| {
            Cmd::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .read()
                .unwrap()
        };
        gpg(&[
            "--quick-gen-key",
            &format!("kiln test {name} <{name}@kiln.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-secret-keys"]);
        let fpr = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .unwrap();
        let public = dir.join(format!("{name}.asc"));
        let armored = gpg(&["--armor", "--export", &fpr]);
        std::fs::write(&public, armored).unwrap();
        Gpg { home, fpr, public }
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Cmd::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .run();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server on 127.0.0.1:{port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx from Debian serving `root` on 127.0.0.1:port with an access log of bytes sent.
pub struct Nginx {
    handle: duct::Handle,
    pub port: u16,
    pub access_log: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, root: &Path) -> Nginx {
        let port = free_port();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let access_log = prefix.join("access.log");
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "user root;\nmaster_process off;\ndaemon off;\nworker_processes 1;\n\
                 pid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  log_format bytes '$request_uri $status $bytes_sent';\n\
                   access_log {log} bytes;\n  client_body_temp_path {p}/tmp;\n\
                   proxy_temp_path {p}/tmp;\n  fastcgi_temp_path {p}/tmp;\n\
                   uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n\
                   default_type application/octet-stream;\n\
                   server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
                p = prefix.display(),
                log = access_log.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let handle = Cmd::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&prefix)
            .spawn_logged(&prefix.join("stdout.log"))
            .unwrap();
        wait_port(port);
        Nginx {
            handle,
            port,
            access_log,
        }
    }

    pub fn url(&self, sub: &str) -> String {
        format!("http://127.0.0.1:{}/{sub}", self.port)
    }

    /// (requests, bytes sent) logged since the last call; the log is then emptied.
    pub fn take_log(&self) -> (Vec<String>, u64) {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        std::fs::write(&self.access_log, "").unwrap();
        let mut bytes = 0;
        let mut reqs = Vec::new();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            bytes += f[2].parse::<u64>().unwrap();
            reqs.push(format!("{} {}", f[0], f[1]));
        }
        (reqs, bytes)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.handle.kill();
    }
}

/// A small bootable commit carrying an update policy, as compose writes it.
pub fn commit_with_policy(
    build: &Path,
    work: &Path,
    v: u32,
    policy: &kiln::updates::Updates,
) -> String {
    let t = work.join(format!("small-{v}"));
    let _ = std::fs::remove_dir_all(&t);
    let m = t.join("usr/lib/modules").join(KVER);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(t.join("usr/etc")).unwrap();
    std::fs::write(m.join("vmlinuz"), "kernel\n").unwrap();
    std::fs::write(m.join("initramfs.img"), "initramfs\n").unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        format!("ID=kiln\nVERSION_ID={v}\n"),
    )
    .unwrap();
    kiln::updates::write_to_tree(policy, &t).unwrap();
    let r = repo::open(build).unwrap();
    let c = repo::commit_dir(
        &r,
        &t,
        &CommitOptions {
            ref_: REF.into(),
            timestamp: 1_700_000_000 + u64::from(v) * 86400,
            metadata: vec![(keys::VERSION.into(), MetaValue::Str(format!("{v}.0")))],
            bootable: true,
            ..Default::default()
        },
    )
    .unwrap()
    .checksum;
    std::fs::remove_dir_all(&t).unwrap();
    c
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub build: PathBuf,
    pub sysroot: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("kiln-fleet-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let build = dir.path().join("build");
        repo::open_or_create(&build, repo::RepoMode::BareUser).unwrap();
        let sysroot = dir.path().join("sysroot");
        Env {
            dir,
            build,
            sysroot,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn publish(&self, to: &str, extra: &[&str]) -> Value {
        let to = self.path(to);
        let mut args = vec![
            "publish",
            "--repo",
            s(&self.build),
            "--to",
            s(&to),
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&kiln_ok(&args)).unwrap()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&kiln_ok(&[
            "status",
            "--sysroot",
            s(&self.sysroot),
            "--json",
        ]))
        .unwrap()
    }

    /// What must not change when an upgrade is refused: deployments, boot entries.
    pub fn snapshot(&self) -> (Value, PathBuf, Vec<String>) {
        let st = self.status()["status"]["deployments"].clone();
        let loader = std::fs::read_link(self.sysroot.join("boot/loader")).unwrap();
        let mut dirs: Vec<String> =
            std::fs::read_dir(self.sysroot.join("ostree/deploy").join(OS).join("deploy"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
        dirs.sort();
        (st, loader, dirs)
    }

    pub fn remote(&self, url: &str, key: Option<&Path>) {
        let mut args = vec![
            "remote",
            "add",
            "origin",
            url,
            "--sysroot",
            s(&self.sysroot),
            "--force",
        ];
        match key {
            Some(k) => args.extend_from_slice(&["--gpg-import", s(k)]),
            None => args.push("--no-gpg-verify"),
        }
        kiln_ok(&args);
    }

    pub fn upgrade(&self) -> (i32, String, String) {
        kiln(&["upgrade", "--sysroot", s(&self.sysroot), "--json"])
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        unlock_deployments(&self.sysroot);
    }
}
