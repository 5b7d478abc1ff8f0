//! Fleet update timings (run as root, needs nginx): publish seconds, static delta size
//! against the full commit and its generation time, and `kiln upgrade` seconds (pull +
//! deploy) over HTTP from nginx on 127.0.0.1, with and without a delta.
//!
//! The OS is synthetic but shaped like the base image's update: ~40 MiB of unchanged,
//! incompressible files plus an 8 MiB kernel, and one package (20 files, 320 KiB) that
//! changes between v1 and v2.

mod common;

use common::{unlock_deployments, KILN};
use kiln::cmd::Cmd;
use kiln::publish::{self, PublishOptions};
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REF: &str = "kiln/bench/x86_64/base";

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn commit(build: &Path, work: &Path, v: u64) -> String {
    let t = work.join(format!("tree{v}"));
    let m = t.join("usr/lib/modules/6.1.0-bench");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(t.join("usr/etc")).unwrap();
    std::fs::write(m.join("vmlinuz"), noise(7, 8 << 20)).unwrap();
    std::fs::write(m.join("initramfs.img"), noise(9, 4 << 20)).unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        format!("ID=kiln\nVERSION_ID={v}\n"),
    )
    .unwrap();
    for i in 0..5000u64 {
        let d = t.join(format!("usr/share/bulk/{}", i % 64));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), noise(100 + i, 8192)).unwrap();
    }
    let p = t.join("usr/lib/package");
    std::fs::create_dir_all(&p).unwrap();
    for i in 0..20u64 {
        std::fs::write(p.join(format!("lib{i}.so")), noise(v * 1000 + i, 16384)).unwrap();
    }
    let r = repo::open(build).unwrap();
    let c = repo::commit_dir(
        &r,
        &t,
        &CommitOptions {
            ref_: REF.into(),
            timestamp: 1_700_000_000 + v * 86400,
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx(dir: &Path, root: &Path) -> (duct::Handle, u16) {
    let port = free_port();
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nmaster_process off;\ndaemon off;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{ log_format b '$request_uri $bytes_sent'; access_log {p}/access.log b;\n\
             client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp;\n\
             fastcgi_temp_path {p}/tmp; uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
             server {{ listen 127.0.0.1:{port}; root {r}; }} }}\n",
            p = prefix.display(),
            r = root.display()
        ),
    )
    .unwrap();
    let h = Cmd::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&prefix)
        .spawn_logged(&prefix.join("out.log"))
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (h, port)
}

fn kiln(args: &[&str]) -> String {
    let out = duct::cmd(KILN, args)
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sysroot at `dir/name` following `url` (no signatures: the timings are about bytes),
/// with the ref's current commit deployed.
fn follow(dir: &Path, name: &str, url: &str) {
    let sysroot: PathBuf = dir.join(name);
    let s = sysroot.to_str().unwrap();
    kiln(&[
        "remote",
        "add",
        "origin",
        url,
        "--no-gpg-verify",
        "--sysroot",
        s,
    ]);
    kiln(&["deploy", "--sysroot", s, "--remote", "origin", REF]);
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("kiln-fleet-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let build = d.join("build");
    repo::open_or_create(&build, repo::RepoMode::BareUser).unwrap();
    let work = d.join("work");
    let srv = d.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let opts = |to: &str, deltas: usize| PublishOptions {
        repo: build.clone(),
        to: srv.join(to),
        deltas_from_previous: deltas,
        quiet: true,
        ..Default::default()
    };

    let c1 = commit(&build, &work, 1);
    let t = Instant::now();
    publish::publish(&opts("delta", 1)).unwrap();
    let publish_full = t.elapsed().as_secs_f64();
    publish::publish(&opts("plain", 0)).unwrap();

    let (ng, port) = nginx(d, &srv);
    let url = |sub: &str| format!("http://127.0.0.1:{port}/{sub}");
    follow(d, "sys-delta", &url("delta"));
    follow(d, "sys-plain", &url("plain"));

    let c2 = commit(&build, &work, 2);
    let t = Instant::now();
    let rep = publish::publish(&opts("delta", 1)).unwrap();
    let publish_incr = t.elapsed().as_secs_f64();
    publish::publish(&opts("plain", 0)).unwrap();
    let delta = &rep.deltas_added[0];
    let full: u64 = {
        let r = repo::open(&srv.join("delta")).unwrap();
        r.traverse_commit(&c2, 0, ostree::gio::Cancellable::NONE)
            .unwrap()
            .into_iter()
            .map(|o| {
                let (c, k) = (o.checksum(), o.object_type());
                let ext = match k {
                    ostree::ObjectType::File => "filez",
                    ostree::ObjectType::DirTree => "dirtree",
                    ostree::ObjectType::DirMeta => "dirmeta",
                    _ => "commit",
                };
                std::fs::metadata(
                    srv.join("delta/objects")
                        .join(&c[..2])
                        .join(format!("{}.{ext}", &c[2..])),
                )
                .map(|m| m.len())
                .unwrap_or(0)
            })
            .sum()
    };

    let access = d.join("nginx/access.log");
    let served = || -> u64 {
        let t = std::fs::read_to_string(&access).unwrap_or_default();
        std::fs::write(&access, "").unwrap();
        t.lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    served();
    let timed = |name: &str| {
        let s = d.join(name);
        let t = Instant::now();
        let out = kiln(&["upgrade", "--sysroot", s.to_str().unwrap(), "--json"]);
        let secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outcome"]["commit"], c2.as_str());
        (secs, v["pull"].clone())
    };
    let (up_delta, pull_delta) = timed("sys-delta");
    let served_delta = served();
    let (up_plain, pull_plain) = timed("sys-plain");
    let served_plain = served();
    let _ = ng.kill();
    unlock_deployments(&d.join("sys-delta"));
    unlock_deployments(&d.join("sys-plain"));

    println!("fleet bench (synthetic OS: 5000 files x 8 KiB + 12 MiB kernel/initramfs; one 320 KiB package changes)");
    println!("  v1 commit:                {}", &c1[..12]);
    println!("  publish v1 (first, full): {publish_full:.2} s");
    println!("  publish v2 (incremental + 1 delta): {publish_incr:.2} s");
    println!(
        "  delta v1->v2: {} bytes vs full v2 commit {} bytes ({:.2}%), generated in {:.2} s",
        delta.bytes,
        full,
        delta.bytes as f64 * 100.0 / full as f64,
        delta.seconds
    );
    println!(
        "  upgrade v1->v2 with delta:    {up_delta:.2} s (pull {} s, nginx sent {served_delta} bytes, libostree counted {}, delta used: {})",
        pull_delta["seconds"], pull_delta["bytesTransferred"], pull_delta["deltaUsed"]
    );
    println!(
        "  upgrade v1->v2 without delta: {up_plain:.2} s (pull {} s, nginx sent {served_plain} bytes, libostree counted {}, delta used: {})",
        pull_plain["seconds"], pull_plain["bytesTransferred"], pull_plain["deltaUsed"]
    );
}
