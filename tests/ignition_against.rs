//! `kiln ignition build --against REPO:REF` and `kiln image --ignition` check a config
//! against the composed `recipes/base.toml` commit (the shared fixture): each rule is
//! broken by one config and refused (exit 2) with the config's file:line and the image
//! path; the device rule warns; the examples meant for the base image pass.

mod common;

use std::path::{Path, PathBuf};

fn against() -> String {
    let f = common::base_commit();
    format!("{}:{}", f.repo.display(), f.ref_)
}

/// Writes `toml` as DIR/cfg.toml and runs `kiln ignition build --against` on it.
fn build(dir: &Path, toml: &str, extra: &[&str]) -> (i32, String, PathBuf) {
    let cfg = dir.join("cfg.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = dir.join("cfg.ign");
    let a = against();
    let mut args = vec![
        "ignition",
        "build",
        cfg.to_str().unwrap(),
        "--against",
        &a,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (code, _, err) = common::kiln(&args);
    (code, err, cfg)
}

/// The config is refused at `line` of cfg.toml with a message naming each of `want`.
fn refused(toml: &str, line: usize, want: &[&str]) {
    let td = tempfile::tempdir().unwrap();
    let (code, err, cfg) = build(td.path(), toml, &[]);
    assert_eq!(code, 2, "not refused:\n{err}");
    let at = format!("{}:{line}:", cfg.display());
    assert!(err.contains(&at), "no {at} in:\n{err}");
    for w in want {
        assert!(err.contains(w), "no {w:?} in:\n{err}");
    }
    assert!(
        !td.path().join("cfg.ign").exists(),
        "a refused config was written"
    );
}

#[test]
fn file_the_image_has_needs_overwrite() {
    refused(
        "[[storage.files]]\npath = \"/etc/motd\"\ncontents.inline = \"hi\\n\"\n",
        2,
        &["/etc/motd", "/usr/etc/motd", "overwrite"],
    );
    // With overwrite it passes; so does a file the image lacks.
    let td = tempfile::tempdir().unwrap();
    let (code, err, _) = build(
        td.path(),
        "[[storage.files]]\npath = \"/etc/motd\"\noverwrite = true\ncontents.inline = \"hi\\n\"\n\n\
         [[storage.files]]\npath = \"/etc/kiln-new.conf\"\ncontents.inline = \"x\\n\"\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // A link over a file of the image (resolved through the image's own links: /lib is
    // usr/lib in a merged-/usr tree).
    refused(
        "[[storage.links]]\npath = \"/etc/localtime\"\ntarget = \"/usr/share/zoneinfo/UTC\"\n",
        2,
        &["/usr/etc/localtime", "a symlink"],
    );
}

#[test]
fn paths_under_usr_are_refused() {
    refused(
        "[[storage.directories]]\npath = \"/var/lib/x\"\n\n[[storage.files]]\n\
         path = \"/usr/lib/kiln-extra.conf\"\ncontents.inline = \"x\\n\"\n",
        5,
        &["/usr/lib/kiln-extra.conf", "read-only"],
    );
    // /usr/local is /var/usrlocal: writable.
    let td = tempfile::tempdir().unwrap();
    let (code, err, _) = build(
        td.path(),
        "[[storage.files]]\npath = \"/usr/local/bin/tool\"\nmode = \"0755\"\ncontents.inline = \"#!/bin/sh\\n\"\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn groups_must_exist_in_the_image_or_the_config() {
    refused(
        "[[passwd.users]]\nname = \"dev\"\ngroups = [\"sudo\", \"wheel\"]\n",
        3,
        &["wheel", "/usr/etc/group"],
    );
    let td = tempfile::tempdir().unwrap();
    let (code, err, _) = build(
        td.path(),
        "[[passwd.groups]]\nname = \"wheel\"\n\n[[passwd.users]]\nname = \"dev\"\ngroups = [\"sudo\", \"wheel\"]\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn enabled_units_must_be_defined() {
    refused(
        "[[systemd.units]]\nname = \"ssh.service\"\nenabled = true\n\n\
         [[systemd.units]]\nname = \"kubelet.service\"\nenabled = true\n",
        7,
        &["kubelet.service", "neither the config"],
    );
    // Template instances are defined by their template.
    let td = tempfile::tempdir().unwrap();
    let (code, err, _) = build(
        td.path(),
        "[[systemd.units]]\nname = \"serial-getty@ttyS1.service\"\nenabled = true\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn exec_start_programs_must_be_in_the_image() {
    refused(
        "[[systemd.units]]\nname = \"exporter.service\"\nenabled = true\ncontents = \"\"\"\n\
         [Service]\nExecStart=/usr/local/bin/node_exporter --x\n\n[Install]\nWantedBy=multi-user.target\n\"\"\"\n",
        4,
        &["/usr/local/bin/node_exporter", "not in the image"],
    );
    // A program the config writes, or one the image has (through /bin -> usr/bin), is fine.
    let td = tempfile::tempdir().unwrap();
    let (code, err, _) = build(
        td.path(),
        "[[storage.files]]\npath = \"/usr/local/bin/node_exporter\"\nmode = \"0755\"\n\
         contents.inline = \"#!/bin/sh\\n\"\n\n[[systemd.units]]\nname = \"exporter.service\"\n\
         enabled = true\ncontents = \"\"\"\n[Service]\nExecStartPre=-/bin/true\n\
         ExecStart=/usr/local/bin/node_exporter\n[Install]\nWantedBy=multi-user.target\n\"\"\"\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn filesystem_devices_the_platform_lacks_warn() {
    let toml = "[[storage.filesystems]]\ndevice = \"/dev/sdb\"\nformat = \"ext4\"\n";
    let td = tempfile::tempdir().unwrap();
    let (code, err, cfg) = build(td.path(), toml, &["--platform", "qemu"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains(&format!("{}:2:", cfg.display())),
        "{err}"
    );
    assert!(err.contains("/dev/vd*"), "{err}");
    let (code, err, _) = build(td.path(), toml, &["--platform", "metal"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn examples_for_the_base_image_pass() {
    let td = tempfile::tempdir().unwrap();
    let a = against();
    let root = common::project_root();
    for ex in ["vm.toml", "bare-metal.toml"] {
        let out = td.path().join("x.ign");
        let cfg = root.join("examples/ignition").join(ex);
        let (code, _, err) = common::kiln(&[
            "ignition",
            "build",
            cfg.to_str().unwrap(),
            "--against",
            &a,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{ex}: {err}");
    }
    // The worker example is for an image with a kubelet and a node exporter.
    let out = td.path().join("w.ign");
    let ex = root.join("examples/ignition");
    let (code, _, err) = common::kiln(&[
        "ignition",
        "build",
        ex.join("k8s-worker.toml").to_str().unwrap(),
        "-d",
        ex.join("k8s-worker.d").to_str().unwrap(),
        "--against",
        &a,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("kubelet.service") && err.contains("node_exporter"),
        "{err}"
    );
}

#[test]
fn image_checks_its_ignition_config_by_default() {
    let f = common::base_commit();
    let td = tempfile::tempdir().unwrap();
    let ign = td.path().join("bad.ign");
    std::fs::write(
        &ign,
        "{\n  \"ignition\": {\"version\": \"3.3.0\"},\n  \"storage\": {\"files\": [\n    \
         {\"path\": \"/etc/motd\", \"contents\": {\"source\": \"data:,hi\"}}\n  ]}\n}\n",
    )
    .unwrap();
    let out = td.path().join("x.qcow2");
    let t = std::time::Instant::now();
    let (code, _, err) = common::kiln(&[
        "image",
        "--repo",
        f.repo.to_str().unwrap(),
        "--ref",
        &f.ref_,
        "--ignition",
        ign.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:4:", ign.display())), "{err}");
    assert!(
        err.contains("$.storage.files.0.path") && err.contains("/usr/etc/motd"),
        "{err}"
    );
    assert!(!out.exists());
    eprintln!("refused in {:?}", t.elapsed());
}

#[test]
fn iso_embed_checks_against_the_commit_first() {
    let td = tempfile::tempdir().unwrap();
    let ign = td.path().join("bad.ign");
    std::fs::write(
        &ign,
        "{\n  \"ignition\": {\"version\": \"3.3.0\"},\n  \"passwd\": {\"users\": [\n    \
         {\"name\": \"dev\", \"groups\": [\"wheel\"]}\n  ]}\n}\n",
    )
    .unwrap();
    // Refused before the ISO is opened (this one is not even an ISO).
    let iso = td.path().join("live.iso");
    std::fs::write(&iso, b"not read").unwrap();
    let a = against();
    let (code, _, err) = common::kiln(&[
        "iso",
        "ignition",
        "embed",
        "--ignition",
        ign.to_str().unwrap(),
        "--against",
        &a,
        iso.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:4:", ign.display())), "{err}");
    assert!(
        err.contains("wheel") && err.contains("/usr/etc/group"),
        "{err}"
    );
    assert_eq!(std::fs::read(&iso).unwrap(), b"not read");
}
