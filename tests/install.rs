//! `kiln install` with real images of the composed base commit: to a sparse file, to a loop
//! device, from a URL served on 127.0.0.1, from a commit; and its refusals (mounted target,
//! too-small target, bad sha256, missing image). Results are checked on the disk itself:
//! partition table, `e2fsck`, the Ignition config's mode and content, the first-boot stamp,
//! the boot entries' kernel arguments. An installed disk's first boot under QEMU:
//! tests/vm_install.rs.

mod common;

use common::install::{images, install_json, sparse, tmp, KARG, MIB};
use kiln::blockdev::LoopDev;
use kiln::cmd::Cmd;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn manifest_sha(image: &Path) -> String {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(image.with_file_name("manifest.json")).unwrap(),
    )
    .unwrap();
    m["artifacts"][image.file_name().unwrap().to_str().unwrap()]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ignition_config(dir: &Path) -> (PathBuf, String) {
    let text = serde_json::json!({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{
            "path": "/etc/kiln-installed",
            "mode": 420,
            "contents": {"source": "data:,installed%0A"}
        }]}
    })
    .to_string();
    let p = dir.join("config.ign");
    std::fs::write(&p, &text).unwrap();
    (p, text)
}

/// Runs `kiln install` expecting a refusal; returns (exit code, stderr).
fn install_fails(args: &[&str]) -> (i32, String) {
    let mut a = vec!["install"];
    a.extend_from_slice(args);
    let (code, out, err) = common::kiln(&a);
    assert_ne!(code, 0, "kiln {a:?} succeeded:\n{out}\n{err}");
    assert!(
        out.trim().is_empty(),
        "a failed install printed a result: {out}"
    );
    (code, err)
}

/// A read-only mount, undone on drop.
struct RoMount(PathBuf);

impl RoMount {
    fn new(dev: &Path, dir: &Path) -> RoMount {
        std::fs::create_dir_all(dir).unwrap();
        Cmd::new("mount")
            .args(["-o", "ro", "-t", "ext4"])
            .arg(dev)
            .arg(dir)
            .run()
            .unwrap();
        RoMount(dir.to_path_buf())
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.0).run();
    }
}

/// What an installed disk holds.
struct Installed {
    ignition: Option<(u32, u32, String)>,
    stamp: bool,
    options: Vec<String>,
    menu: String,
}

/// Checks the partition table and both ext4 filesystems of an installed disk (file or
/// block device) and reads back what the installer put on /boot.
fn inspect(disk: &Path, dir: &Path) -> Installed {
    let j: serde_json::Value =
        serde_json::from_str(&Cmd::new("sfdisk").arg("--json").arg(disk).read().unwrap()).unwrap();
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "gpt", "{j}");
    let names: Vec<&str> = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["BIOS-BOOT", "EFI-SYSTEM", "boot", "root"], "{j}");
    let verify = Cmd::new("sgdisk").arg("--verify").arg(disk).read().unwrap();
    assert!(verify.contains("No problems found"), "{verify}");
    let part = |i: usize| {
        let p = &t["partitions"][i];
        (
            p["start"].as_u64().unwrap() * 512,
            p["size"].as_u64().unwrap() * 512,
        )
    };
    let (boot_off, boot_size) = part(2);
    let (root_off, root_size) = part(3);
    let boot = LoopDev::attach(disk, boot_off, boot_size).unwrap();
    let root = LoopDev::attach(disk, root_off, root_size).unwrap();
    for l in [&boot, &root] {
        let out = Cmd::new("e2fsck").arg("-fn").arg(&l.dev).run();
        assert!(out.is_ok(), "e2fsck {}: {:?}", l.dev.display(), out.err());
    }
    let m = dir.join("boot-mnt");
    let _mnt = RoMount::new(&boot.dev, &m);
    let cfg = m.join("ignition/config.ign");
    let ignition = cfg.exists().then(|| {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        (
            mode(&cfg),
            mode(&m.join("ignition")),
            std::fs::read_to_string(&cfg).unwrap(),
        )
    });
    let entries: Vec<PathBuf> = std::fs::read_dir(m.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = std::fs::read_to_string(&entries[0]).unwrap();
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options line in {entry}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    Installed {
        ignition,
        stamp: m.join("ignition.firstboot").is_file(),
        options,
        menu: std::fs::read_to_string(m.join("loader/grub.cfg")).unwrap(),
    }
}

fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

fn fill(path: &Path, off: u64, len: usize, byte: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![byte; len], off).unwrap();
}

/// A minimal HTTP/1.0 file server on 127.0.0.1 (GET and HEAD, 404 for missing files),
/// serving `root` for the life of the test process.
fn serve(root: &Path) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = handle(s, &root);
            });
        }
    });
    format!("http://{addr}")
}

fn handle(mut s: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").trim_start_matches('/');
    let file = root.join(path);
    match std::fs::File::open(&file) {
        Ok(mut f) if file.is_file() && !path.contains("..") => {
            let len = f.metadata()?.len();
            write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
            if method == "GET" {
                std::io::copy(&mut f, &mut s)?;
            }
        }
        _ => write!(s, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
    }
    s.flush()
}

#[test]
fn raw_file_to_sparse_file_with_ignition_and_kargs() {
    let (raw, _) = images();
    let t = tmp();
    let target = sparse(&t.path().join("disk.img"), 3 * 1024 * MIB);
    let (cfg, text) = ignition_config(t.path());
    let v = install_json(&[
        target.to_str().unwrap(),
        "--image",
        raw.to_str().unwrap(),
        "--ignition",
        cfg.to_str().unwrap(),
        "--karg",
        KARG,
        "--platform",
        "metal",
    ]);
    assert_eq!(v["format"], "raw", "{v}");
    assert_eq!(v["device_kind"], "file", "{v}");
    assert_eq!(v["sha256"], manifest_sha(raw), "{v}");
    assert!(
        v["verified_against"]
            .as_str()
            .unwrap()
            .ends_with("manifest.json"),
        "{v}"
    );
    assert_eq!(v["ignition"], "/boot/ignition/config.ign", "{v}");
    let i = inspect(&target, t.path());
    assert_eq!(i.ignition, Some((0o600, 0o700, text)));
    assert!(i.stamp, "first-boot stamp missing");
    for k in [KARG, "ignition.platform.id=metal", "$ignition_firstboot"] {
        assert!(
            i.options.iter().any(|o| o == k),
            "{k} not in {:?}",
            i.options
        );
        assert!(
            i.menu.contains(k),
            "{k} not in the GRUB menu loader/grub.cfg:\n{}",
            i.menu
        );
    }
    assert!(
        !i.options.iter().any(|o| o == "ignition.platform.id=qemu"),
        "{:?}",
        i.options
    );
    let kargs: Vec<&str> = v["kargs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let entry: Vec<&str> = i
        .options
        .iter()
        .map(String::as_str)
        .filter(|o| !o.starts_with("ostree="))
        .collect();
    assert_eq!(kargs, entry, "reported kargs differ from the boot entry");
}

#[test]
fn qcow2_to_loop_device_with_image_sha256() {
    let (_, qcow2) = images();
    let t = tmp();
    let backing = sparse(&t.path().join("backing.img"), 3 * 1024 * MIB);
    // Old content where the new partition table goes and at the very end.
    fill(&backing, 0, MIB as usize, 0xAB);
    fill(&backing, 3 * 1024 * MIB - MIB, MIB as usize, 0xAB);
    let lo = LoopDev::attach(&backing, 0, 3 * 1024 * MIB).unwrap();
    let v = install_json(&[
        lo.dev.to_str().unwrap(),
        "--image",
        qcow2.to_str().unwrap(),
        "--image-sha256",
        &manifest_sha(qcow2),
    ]);
    assert_eq!(v["format"], "qcow2", "{v}");
    assert_eq!(v["device_kind"], "block", "{v}");
    assert_eq!(v["verified_against"], "--image-sha256", "{v}");
    assert_eq!(v["image_size"], 2048 * MIB, "{v}");
    assert!(v["ignition"].is_null(), "{v}");
    let i = inspect(&lo.dev, t.path());
    assert_eq!(i.ignition, None);
    assert!(i.stamp);
    // The image was built for `qemu`; installs default to `metal`.
    assert!(
        i.options.iter().any(|o| o == "ignition.platform.id=metal"),
        "{:?}",
        i.options
    );
}

#[test]
fn url_install_is_verified_and_a_bad_sha256_is_never_accepted() {
    let (raw, qcow2) = images();
    let t = tmp();
    let good = t.path().join("good");
    let bad = t.path().join("bad");
    for d in [&good, &bad] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::hard_link(raw, d.join("base.raw")).unwrap();
        std::fs::hard_link(qcow2, d.join("base.qcow2")).unwrap();
    }
    std::fs::copy(
        raw.with_file_name("manifest.json"),
        good.join("manifest.json"),
    )
    .unwrap();
    let m = std::fs::read_to_string(raw.with_file_name("manifest.json")).unwrap();
    let sha = manifest_sha(raw);
    let wrong = format!(
        "{}{}",
        &sha[..63],
        if sha.ends_with('0') { "1" } else { "0" }
    );
    std::fs::write(bad.join("manifest.json"), m.replace(&sha, &wrong)).unwrap();
    let base = serve(t.path());

    // Verified against the manifest beside it.
    let target = sparse(&t.path().join("ok.img"), 3 * 1024 * MIB);
    let (cfg, text) = ignition_config(t.path());
    std::fs::copy(&cfg, good.join("config.ign")).unwrap();
    // A config over plain http needs its hash (without one it is refused: see
    // tests/ignition_secrets.rs).
    let ign_hash = format!(
        "sha256-{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
    );
    let v = install_json(&[
        target.to_str().unwrap(),
        "--image",
        &format!("{base}/good/base.raw"),
        "--ignition",
        &format!("{base}/good/config.ign"),
        "--ignition-hash",
        &ign_hash,
    ]);
    assert_eq!(v["sha256"], sha, "{v}");
    assert_eq!(
        v["verified_against"],
        format!("{base}/good/manifest.json"),
        "{v}"
    );
    let i = inspect(&target, t.path());
    assert_eq!(i.ignition.map(|x| x.2), Some(text));

    // A manifest whose sha256 does not match: streamed, never accepted.
    let target = sparse(&t.path().join("bad.img"), 3 * 1024 * MIB);
    fill(&target, 0, 2 * MIB as usize, 0xAB);
    let (code, err) = install_fails(&[
        target.to_str().unwrap(),
        "--image",
        &format!("{base}/bad/base.raw"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(&wrong) && err.contains(&sha), "{err}");
    assert!(err.contains("not accepted"), "{err}");
    let head = read_at(&target, 0, MIB as usize);
    assert!(
        head.iter().all(|&b| b == 0),
        "the first MiB holds data after a bad sha256"
    );
    let tail = read_at(&target, 3 * 1024 * MIB - MIB, MIB as usize);
    assert!(
        !tail.windows(8).any(|w| w == b"EFI PART"),
        "a GPT header is left"
    );
    assert!(
        Cmd::new("sfdisk").arg("--json").arg(&target).run().is_err(),
        "a partition table is readable after a bad sha256"
    );

    // qcow2 with a wrong --image-sha256: verified before anything is written.
    let target = sparse(&t.path().join("bad2.img"), 3 * 1024 * MIB);
    fill(&target, 0, MIB as usize, 0xAB);
    let (_, err) = install_fails(&[
        target.to_str().unwrap(),
        "--image",
        &format!("{base}/good/base.qcow2"),
        "--image-sha256",
        &"0".repeat(64),
    ]);
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert!(read_at(&target, 0, MIB as usize).iter().all(|&b| b == 0xAB));

    // No manifest and no --image-sha256: refused before downloading.
    std::fs::remove_file(bad.join("manifest.json")).unwrap();
    let (code, err) = install_fails(&[
        target.to_str().unwrap(),
        "--image",
        &format!("{base}/bad/base.raw"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no sha256"), "{err}");
    // A missing image URL.
    let (_, err) = install_fails(&[
        target.to_str().unwrap(),
        "--image",
        &format!("{base}/good/missing.raw"),
        "--image-sha256",
        &sha,
    ]);
    assert!(err.contains("missing.raw") && err.contains("404"), "{err}");
    assert!(read_at(&target, 0, MIB as usize).iter().all(|&b| b == 0xAB));
}

#[test]
fn refusals_leave_the_target_alone() {
    let (raw, _) = images();
    let t = tmp();
    let raw = raw.to_str().unwrap();

    // Missing image.
    let target = sparse(&t.path().join("t.img"), 3 * 1024 * MIB);
    fill(&target, 0, 4096, 0xAB);
    let (code, err) = install_fails(&[target.to_str().unwrap(), "--image", "/nonexistent/x.raw"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/nonexistent/x.raw") && err.contains("image not found"),
        "{err}"
    );

    // Bad --image-sha256 on a local file: nothing accepted.
    let (code, err) = install_fails(&[
        target.to_str().unwrap(),
        "--image",
        raw,
        "--image-sha256",
        &"0".repeat(64),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(read_at(&target, 0, MIB as usize).iter().all(|&b| b == 0));

    // Missing target.
    let (code, err) = install_fails(&["/nonexistent/disk", "--image", raw]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/disk"), "{err}");

    // Too small.
    let small = sparse(&t.path().join("small.img"), 1024 * MIB);
    fill(&small, 0, 4096, 0xAB);
    let (code, err) = install_fails(&[small.to_str().unwrap(), "--image", raw]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("smaller than the image"), "{err}");
    assert!(read_at(&small, 0, 4096).iter().all(|&b| b == 0xAB));

    // Bad Ignition config: refused before writing.
    let cfg = t.path().join("bad.ign");
    std::fs::write(&cfg, "{\"ignition\": {\"version\": \"3.3.0\"},").unwrap();
    let target2 = sparse(&t.path().join("t2.img"), 3 * 1024 * MIB);
    fill(&target2, 0, 4096, 0xAB);
    let (code, err) = install_fails(&[
        target2.to_str().unwrap(),
        "--image",
        raw,
        "--ignition",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.ign"), "{err}");
    assert!(read_at(&target2, 0, 4096).iter().all(|&b| b == 0xAB));

    // Dry run: checks pass, nothing written.
    let out = common::kiln_ok(&[
        "install",
        target2.to_str().unwrap(),
        "--image",
        raw,
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    assert!(read_at(&target2, 0, 4096).iter().all(|&b| b == 0xAB));

    // A mounted loop device, and the file behind it.
    let backing = sparse(&t.path().join("mounted.img"), 3 * 1024 * MIB);
    let lo = LoopDev::attach(&backing, 0, 3 * 1024 * MIB).unwrap();
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.dev)
        .run()
        .unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    Cmd::new("mount").arg(&lo.dev).arg(&mnt).run().unwrap();
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Cmd::new("umount").arg(&self.0).run();
        }
    }
    let _u = Umount(mnt.clone());
    let sb = read_at(&lo.dev, 1024, 1024);
    let (code, err) = install_fails(&[lo.dev.to_str().unwrap(), "--image", raw]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mounted on") && err.contains(mnt.to_str().unwrap()),
        "{err}"
    );
    let (code, err) = install_fails(&[backing.to_str().unwrap(), "--image", raw]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("which is mounted on"), "{err}");
    assert_eq!(
        read_at(&lo.dev, 1024, 1024),
        sb,
        "the mounted filesystem was touched"
    );
    drop(_u);
}

#[test]
fn commit_install_builds_through_the_image_builder() {
    let c = common::base_commit();
    let t = tmp();
    let target = sparse(&t.path().join("disk.img"), 3 * 1024 * MIB);
    let (cfg, text) = ignition_config(t.path());
    let v = install_json(&[
        target.to_str().unwrap(),
        "--repo",
        c.repo.to_str().unwrap(),
        "--ref",
        &c.ref_,
        "--ignition",
        cfg.to_str().unwrap(),
        "--karg",
        KARG,
    ]);
    assert_eq!(v["commit"], c.commit, "{v}");
    assert_eq!(v["verified_against"], "built", "{v}");
    // The disk is smaller than the default 4 GiB: the image is built to fit it.
    assert_eq!(v["image_size"], 3 * 1024 * MIB, "{v}");
    let i = inspect(&target, t.path());
    assert_eq!(i.ignition, Some((0o600, 0o700, text)));
    assert!(i.stamp);
    for k in [KARG, "ignition.platform.id=metal"] {
        assert!(
            i.options.iter().any(|o| o == k),
            "{k} not in {:?}",
            i.options
        );
    }
}
