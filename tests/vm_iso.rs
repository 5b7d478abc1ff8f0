// suite-minutes: 20 (TCG run time here; tests/suite.sh balances the VM test files over two groups by it)
//! End to end: install media under QEMU TCG.
//!
//! - Live ISO (`kiln image --format iso`), booted from a CD drive (`-cdrom`) with SeaBIOS
//!   and with OVMF. An Ignition config is embedded into the already-built ISO with
//!   `kiln iso ignition embed` and a kernel argument added with `kiln iso kargs modify`;
//!   both boots reach the live marker with /usr read-only and /etc writable, and the
//!   config is applied (file written, user created, marker unit enabled and run).
//! - PXE (`kiln image --format pxe`): QEMU's built-in TFTP server (`restrict=on`) serves
//!   the files to the firmware's iPXE; the live system fetches its Ignition config from
//!   `ignition.config.url=`, a server this test runs on 127.0.0.1, reached only through
//!   a guestfwd.
//! - Unattended install: the ISO with `kiln.install.*` kernel arguments and a blank disk
//!   installs the image served by the test's server, powers off; the disk alone then
//!   runs Ignition on its first boot (that it does not on later boots is
//!   tests/vm_firstboot.rs's check: every image has the same first-boot stamp).
//!
//! `kiln iso`'s refusals of bad input need no VM: tests/iso.rs.
//!
//! Console logs of failed boots land in `build/test-artifacts/`. Timeouts scale with
//! `KILN_E2E_BOOT_TIMEOUT` (seconds, default 900).

mod common;

use common::{boot_timeout, VM_CMD as CMD};
use kiln::qemu::{Disk, Vm, VmOptions};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

const MARKER: &str = "KILN-ISO-IGNITION-MARKER";
const LIVE: &str = "KILN-LIVE-BOOTED";
/// Where the guest reaches the test's HTTP server (guestfwd to 127.0.0.1).
const GUEST_ADDR: &str = "10.0.2.100:8080";

fn work_dir() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let d = common::fixture_dir().join("iso");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn marker_unit() -> serde_json::Value {
    json!({
        "name": "kiln-iso-marker.service",
        "enabled": true,
        "contents": format!(
            "[Unit]\nDescription=kiln install media test marker\nAfter=multi-user.target\n\
             [Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo {MARKER} > /dev/console'\n\
             [Install]\nWantedBy=multi-user.target\n"
        )
    })
}

/// A file in /etc, a user and the marker unit.
fn config(file_text: &str) -> serde_json::Value {
    json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{"name": "core"}]},
        "storage": {"files": [
            {"path": "/etc/kiln-test/hello.txt", "mode": 420,
             "contents": {"source": format!("data:,{}", file_text.replace(' ', "%20"))}}
        ]},
        "systemd": {"units": [marker_unit()]}
    })
}

fn write_config(name: &str, v: &serde_json::Value) -> PathBuf {
    let p = work_dir().join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

/// Builds live media of the base commit once per commit (shared by the tests).
fn live_media(format: &str, extra: &[&str]) -> PathBuf {
    let f = common::base_commit();
    let _l = common::lock(&work_dir().join(format!("{format}.lock")));
    let out = work_dir().join(format!("base.{format}"));
    let stamp = work_dir().join(format!("base.{format}.commit"));
    let key = format!("{} {}", f.commit, extra.join(" "));
    if out.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return out;
    }
    let _ = std::fs::remove_file(&stamp);
    let mut args = vec![
        "image",
        "--repo",
        s(&f.repo),
        "--ref",
        &f.ref_,
        "--format",
        format,
        "--output",
        s(&out),
        "--json",
        "--karg",
        "kiln.autologin",
    ];
    for k in extra {
        args.extend(["--karg", k]);
    }
    let t = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&common::kiln_ok(&args)).unwrap();
    eprintln!(
        "{format}: built in {:.1} s, root image {} bytes",
        t.elapsed().as_secs_f64(),
        v["root_image_size"]
    );
    assert_eq!(v["commit"], f.commit.as_str());
    check_sbom(&out, format, &f.commit);
    std::fs::write(&stamp, key).unwrap();
    out
}

/// The commit's SBOM is beside the medium (ISO) or the root filesystem (PXE directory),
/// listed in the manifest there (tests/sbom.rs validates the same document).
fn check_sbom(out: &Path, format: &str, commit: &str) {
    let (dir, name) = if format == "iso" {
        (work_dir().to_path_buf(), format!("base.{format}.spdx.json"))
    } else {
        (out.to_path_buf(), "rootfs.img.spdx.json".to_string())
    };
    let bytes = std::fs::read(dir.join(&name)).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let m = kiln::image::manifest::load(&dir.join("manifest.json")).unwrap();
    let a = &m.artifacts[&name];
    assert_eq!(
        (a.format.as_str(), a.commit.as_str()),
        ("spdx-json", commit)
    );
    kiln::image::manifest::verify(&dir.join("manifest.json")).unwrap();
}

fn copy_of(src: &Path, name: &str) -> PathBuf {
    let p = work_dir().join(name);
    std::fs::copy(src, &p).unwrap();
    p
}

fn vm_options(name: &str) -> VmOptions {
    let mut o = VmOptions::new("", name);
    o.artifacts = common::vm_artifacts();
    o.memory_mb = 3072;
    o
}

/// The checks every live boot makes.
fn check_live_system(vm: &mut Vm, expect_karg: Option<&str>) {
    let t = boot_timeout();
    // Both units run after multi-user.target, in either order.
    let lines = vm.wait_for_all(&[LIVE, MARKER], t).unwrap();
    let commit = common::base_commit().commit;
    assert!(lines[0].contains(&commit), "live marker: {}", lines[0]);
    vm.login(t).unwrap();
    // /usr read-only, /etc and /var writable.
    let usr = vm.run_ok("findmnt -n -o OPTIONS /usr", CMD).unwrap();
    assert!(usr.split(',').any(|o| o == "ro"), "/usr options: {usr}");
    vm.run("touch /usr/kiln-test", CMD)
        .map(|(st, _)| assert_ne!(st, 0, "/usr is writable"))
        .unwrap();
    vm.run_ok(
        "echo x > /etc/kiln-live-rw && rm /etc/kiln-live-rw && touch /var/kiln-live-rw",
        CMD,
    )
    .unwrap();
    // The embedded Ignition config was applied.
    assert_eq!(
        vm.run_ok("cat /etc/kiln-test/hello.txt", CMD).unwrap(),
        "hello from the iso"
    );
    vm.run_ok("id core", CMD).unwrap();
    assert_eq!(
        vm.run_ok("systemctl is-enabled kiln-iso-marker.service", CMD)
            .unwrap(),
        "enabled"
    );
    // Nothing failed; the live system can install (kiln and the disk tools are there).
    let failed = vm
        .run_ok("systemctl list-units --failed --plain --no-legend", CMD)
        .unwrap();
    assert!(failed.trim().is_empty(), "failed units: {failed}");
    assert!(
        !vm.console().contains("Ordering cycle found"),
        "systemd skipped a unit to break an ordering cycle (see the console log)"
    );
    vm.run_ok("kiln --version && sgdisk --version && mkfs.ext4 -V", CMD)
        .unwrap();
    if let Some(k) = expect_karg {
        let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
        assert!(
            cmdline.split_whitespace().any(|w| w == k),
            "cmdline: {cmdline}"
        );
    }
}

#[test]
fn iso_boots_bios_and_uefi_with_embedded_ignition() {
    let base = live_media("iso", &[]);
    let iso = copy_of(&base, "embed.iso");
    let cfg = write_config("live.ign", &config("hello from the iso"));
    // Edit the already-built ISO in place.
    let t = Instant::now();
    common::kiln_ok(&["iso", "ignition", "embed", "--ignition", s(&cfg), s(&iso)]);
    eprintln!("embed: {:.2} s", t.elapsed().as_secs_f64());
    let shown = common::kiln_ok(&["iso", "ignition", "show", s(&iso)]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&shown).unwrap(),
        config("hello from the iso")
    );
    common::kiln_ok(&[
        "iso",
        "kargs",
        "modify",
        "--append",
        "kiln.test=iso",
        s(&iso),
    ]);
    let kargs = common::kiln_ok(&["iso", "kargs", "show", s(&iso)]);
    assert!(kargs.contains("kiln.live=iso") && kargs.contains("kiln.test=iso"));

    for (uefi, name) in [(false, "iso-bios"), (true, "iso-uefi")] {
        let mut o = vm_options(name);
        o.uefi = uefi;
        o.cdrom = Some(iso.clone());
        let mut vm = Vm::start(o).unwrap();
        check_live_system(&mut vm, Some("kiln.test=iso"));
        eprintln!("{name}: checked after {:.1} s", vm.elapsed().as_secs_f64());
    }

    // Removing the config leaves the ISO as built (the kargs aside).
    common::kiln_ok(&["iso", "ignition", "remove", s(&iso)]);
    let (code, _, err) = common::kiln(&["iso", "ignition", "show", s(&iso)]);
    assert_ne!(code, 0);
    assert!(err.contains("no embedded Ignition config"), "{err}");
}

// ---- a small HTTP server on 127.0.0.1 ----

/// Serves files from a directory (GET and HEAD) and records the paths asked for.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let root = root.clone();
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &root, &reqs);
                });
            }
        });
        Server { port, requests }
    }

    fn requested(&self, path: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|p| p == path)
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    root: &Path,
    reqs: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    reqs.lock().unwrap().push(path.clone());
    let rel = path.trim_start_matches('/');
    let file = root.join(rel);
    if rel.contains("..") || !file.is_file() {
        conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    }
    let len = std::fs::metadata(&file)?.len();
    conn.write_all(
        format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    if method == "GET" {
        let mut f = std::fs::File::open(&file)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
        }
    }
    Ok(())
}

#[test]
fn pxe_boots_over_tftp_and_fetches_ignition_config_url() {
    let srv_dir = work_dir().join("http-pxe");
    std::fs::create_dir_all(&srv_dir).unwrap();
    std::fs::write(
        srv_dir.join("config.ign"),
        serde_json::to_string(&config("hello from the iso")).unwrap(),
    )
    .unwrap();
    let server = Server::start(&srv_dir);
    let url = format!("ignition.config.url=http://{GUEST_ADDR}/config.ign");
    let pxe = live_media("pxe", &[&url]);
    for f in ["vmlinuz", "initramfs.img", "rootfs.img", "boot.ipxe"] {
        assert!(pxe.join(f).is_file(), "{f} missing in {}", pxe.display());
    }
    let ipxe = std::fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert!(ipxe.contains(&url), "{ipxe}");
    let mut o = vm_options("pxe");
    o.tftp = Some((pxe.clone(), "boot.ipxe".into()));
    o.guestfwd = vec![(GUEST_ADDR.into(), server.port)];
    let mut vm = Vm::start(o).unwrap();
    check_live_system(&mut vm, None);
    assert!(
        server.requested("/config.ign"),
        "the config was not fetched"
    );
    eprintln!("pxe: checked after {:.1} s", vm.elapsed().as_secs_f64());
}

#[test]
fn unattended_install_from_the_iso() {
    let f = common::base_commit();
    // The image the live system installs, served over HTTP with its manifest.
    let srv_dir = work_dir().join("http-install");
    std::fs::create_dir_all(&srv_dir).unwrap();
    let img = srv_dir.join("disk.raw");
    if !img.is_file()
        || std::fs::read_to_string(srv_dir.join("commit"))
            .ok()
            .as_deref()
            != Some(f.commit.as_str())
    {
        common::kiln_ok(&[
            "image",
            "--repo",
            s(&f.repo),
            "--ref",
            &f.ref_,
            "--format",
            "raw",
            "--size",
            "3G",
            "--platform",
            "metal",
            "--karg",
            "kiln.autologin",
            "--output",
            s(&img),
        ]);
        std::fs::write(srv_dir.join("commit"), &f.commit).unwrap();
    }
    let target_ign = serde_json::to_string(&config("installed by kiln")).unwrap();
    std::fs::write(srv_dir.join("target.ign"), &target_ign).unwrap();
    // Plain http: the unattended install needs the config's hash.
    let target_ign_hash = format!(
        "sha256-{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            target_ign.as_bytes()
        ))
    );
    let server = Server::start(&srv_dir);

    let iso = copy_of(&live_media("iso", &[]), "install.iso");
    common::kiln_ok(&[
        "iso",
        "kargs",
        "modify",
        "--append",
        "kiln.install.dest=/dev/disk/by-id/virtio-kiln-target",
        "--append",
        &format!("kiln.install.image_url=http://{GUEST_ADDR}/disk.raw"),
        "--append",
        &format!("kiln.install.ignition_url=http://{GUEST_ADDR}/target.ign"),
        "--append",
        &format!("kiln.install.ignition_hash={target_ign_hash}"),
        "--append",
        "kiln.install.then=poweroff",
        s(&iso),
    ]);
    let target = work_dir().join("install-target.raw");
    let _ = std::fs::remove_file(&target);
    std::fs::File::create(&target)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();

    let t = boot_timeout();
    let mut o = vm_options("install-live");
    o.cdrom = Some(iso.clone());
    o.snapshot = false;
    o.disks = vec![Disk {
        path: target.clone(),
        read_only: false,
        serial: Some("kiln-target".into()),
    }];
    o.guestfwd = vec![(GUEST_ADDR.into(), server.port)];
    let mut vm = Vm::start(o).unwrap();
    vm.wait_for("KILN-INSTALL-DONE", t * 2).unwrap();
    vm.wait_exit(t).unwrap();
    assert!(server.requested("/disk.raw") && server.requested("/target.ign"));
    eprintln!("installed in {:.1} s", vm.elapsed().as_secs_f64());
    drop(vm);

    // The disk alone: Ignition on its first boot.
    let mut o = vm_options("install-firstboot");
    o.image = target.clone();
    o.snapshot = false;
    let mut vm = Vm::start(o).unwrap();
    vm.wait_for_all(&["KILN-BOOTED", MARKER], t).unwrap();
    vm.login(t).unwrap();
    assert_eq!(
        vm.run_ok("cat /etc/kiln-test/hello.txt", CMD).unwrap(),
        "installed by kiln"
    );
    vm.run_ok("id core", CMD).unwrap();
    vm.run_ok("test ! -e /boot/ignition.firstboot", CMD)
        .unwrap();
    // That Ignition does not run again on later boots is vm_firstboot's check (the same
    // stamp on every image).
    drop(vm);
    let _ = std::fs::remove_file(&target);
}
