//! Container registries as the OS transport, against Debian's `docker-registry` on
//! 127.0.0.1 with TLS from a test CA: `kiln publish --oci` (package-split layers, GPG
//! simple signing), machines deploying and upgrading from the image (only missing layers
//! pulled, `--check` without layers), and the refusals that must leave a sysroot as it
//! was (unsigned image, unknown key, tampered layer, registry gone mid-pull — resumed by
//! the next run).

mod common;

use common::fleet::s;
use common::oci::{add_packages, signed_policy, Containers, Registry, Relay, Tls};
use common::{kiln, kiln_ok, walk, Fixture};
use serde_json::Value;
use std::collections::BTreeMap;

/// pkgI is 200 KiB + I × 100 KiB; v2 changes pkg3 (and v3 pkg3 and pkg19).
const PKGS: usize = 20;

fn size(i: usize) -> usize {
    200 * 1024 + i * 100 * 1024
}

fn commit(f: &Fixture, v: u32, bump: &[usize]) -> String {
    f.commit_with(v, |t| add_packages(t, PKGS, size, bump, v))
}

struct Setup {
    f: Fixture,
    reg: Registry,
    tls: Tls,
    key: common::fleet::Gpg,
    machine: Containers,
}

fn setup() -> Setup {
    let f = Fixture::new();
    let tls = Tls::new(&f.dir.path().join("tls"));
    let reg = Registry::start(f.dir.path(), &tls);
    let key = common::fleet::Gpg::new(f.dir.path(), "release");
    let machine = Containers::new(
        &f.dir.path().join("machine"),
        &tls,
        &[reg.host()],
        &signed_policy(&[format!("{}/os", reg.host())], &key.public),
    );
    Setup {
        f,
        reg,
        tls,
        key,
        machine,
    }
}

impl Setup {
    /// `kiln publish --oci HOST/os/base:TAG` of the fixture ref, signed by `key` if any.
    fn publish(&self, host: &str, tag: &str, key: Option<&common::fleet::Gpg>) -> Value {
        let dest = format!("{host}/os/base:{tag}");
        let certs = self.machine.certs(host);
        let rd = self.machine.dir.join("registries.d");
        let mut args = vec![
            "publish",
            "--repo",
            s(&self.f.repo),
            "--oci",
            &dest,
            "--cert-dir",
            s(&certs),
            "--registries-d",
            s(&rd),
            "--json",
        ];
        if let Some(k) = key {
            args.extend(["--gpg-sign", &k.fpr, "--gpg-homedir", s(&k.home)]);
        }
        serde_json::from_str(&kiln_ok(&args)).unwrap()
    }

    fn image(&self, host: &str, tag: &str) -> String {
        format!("ostree-image-signed:docker://{host}/os/base:{tag}")
    }

    fn status(&self) -> Value {
        serde_json::from_str(&kiln_ok(&[
            "status",
            "--sysroot",
            s(&self.f.sysroot),
            "--json",
        ]))
        .unwrap()
    }

    fn upgrade(&self, extra: &[&str]) -> (i32, String, String) {
        let mut a = vec![
            "upgrade",
            "--sysroot",
            s(&self.f.sysroot),
            "--containers-dir",
            s(&self.machine.dir),
            "--json",
        ];
        a.extend(extra);
        kiln(&a)
    }

    fn cache(&self) -> std::path::PathBuf {
        self.f.sysroot.join("ostree/deploy/kiln/var/cache/kiln/oci")
    }

    fn cached_blobs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache().join("blobs/sha256"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The sysroot without the download cache.
    fn snapshot(&self) -> BTreeMap<String, (char, u32, Vec<u8>)> {
        let mut m = walk(&self.f.sysroot);
        m.retain(|k, _| !k.starts_with("ostree/deploy/kiln/var/cache/kiln"));
        m
    }
}

fn layer_digests(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn next_boot(st: &Value) -> Value {
    let s = &st["status"];
    if s["staged"].is_null() {
        s["default"].clone()
    } else {
        s["staged"].clone()
    }
}

#[test]
fn publish_deploy_and_upgrade_move_only_changed_layers() {
    let t = setup();
    let host = t.reg.host();
    let v1 = commit(&t.f, 1, &[]);
    let p1 = t.publish(&host, "stable", Some(&t.key));
    assert_eq!(p1["commit"], v1.as_str());
    assert_eq!(p1["signed"], true);
    let layers = p1["layers"].as_array().unwrap();
    assert!(layers.len() >= 10, "package-split layers: {p1}");
    assert!(
        layers.iter().any(|l| l["name"] == "pkg3"),
        "pkg3 has its own layer: {p1}"
    );
    // The image reads as an OCI image with kiln's labels (skopeo inspect).
    let certs = t.machine.certs(&host);
    let insp = kiln::cmd::Cmd::new("skopeo")
        .args(["inspect", "--no-tags", "--cert-dir", s(&certs)])
        .arg(format!("docker://{host}/os/base:stable"))
        .read()
        .unwrap();
    let insp: Value = serde_json::from_str(&insp).unwrap();
    assert_eq!(insp["Labels"]["ostree.commit"], v1.as_str());
    assert_eq!(insp["Labels"]["org.opencontainers.image.version"], "1.0");
    assert!(insp["Labels"]["kiln.packages"]
        .as_str()
        .unwrap()
        .contains("tool=1.1"));

    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&t.f.sysroot),
        "--containers-dir",
        s(&t.machine.dir),
        &t.image(&host, "stable"),
    ]);
    let st = t.status();
    let d = next_boot(&st);
    assert_eq!(d["checksum"], v1.as_str());
    assert_eq!(d["refspec"], t.image(&host, "stable").as_str());
    // The deployment's own /etc now carries the policy (a machine's configuration).
    t.reg.take_log();

    let v2 = commit(&t.f, 2, &[3]);
    let p2 = t.publish(&host, "stable", Some(&t.key));
    let full: u64 = p2["imageBytes"].as_u64().unwrap();
    t.reg.take_log();

    // --check: exit 77, the new commit and version, no layer downloaded.
    let (code, out, err) = t.upgrade(&["--check"]);
    assert_eq!(code, 77, "{out}\n{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["to"], v2.as_str());
    assert_eq!(c["toVersion"], "2.0");
    let db = c["downloadBytes"].as_u64().unwrap();
    assert!(db > 0 && db < full / 10, "layers to download: {c}");
    assert_eq!(c["packages"]["changed"][0]["name"], "tool", "{c}");
    let (reqs, _) = t.reg.take_log();
    for l in layer_digests(&p2) {
        assert!(
            !reqs.iter().any(|r| r.contains(&l)),
            "--check fetched layer {l}: {reqs:?}"
        );
    }

    let started = std::time::Instant::now();
    let (code, out, err) = t.upgrade(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (reqs, served) = t.reg.take_log();
    eprintln!(
        "v1 -> v2: registry served {served} bytes in {} GETs, full image {full} bytes ({:.2}%), {:?}",
        reqs.len(),
        served as f64 * 100.0 / full as f64,
        started.elapsed()
    );
    assert!(
        served * 10 <= full,
        "pulled {served} of {full} bytes: {reqs:#?}"
    );
    let st = t.status();
    assert_eq!(next_boot(&st)["checksum"], v2.as_str());
    assert_eq!(
        st["status"]["deployments"].as_array().unwrap().len(),
        2,
        "v1 stays as rollback"
    );
    // Every cached layer of v2 has the list of objects the next import checks instead of
    // reading the layer again; lists of pruned layers went with their blobs.
    let lists: Vec<String> = std::fs::read_dir(t.cache().join("kiln-layer-objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let blobs = t.cached_blobs();
    assert!(lists.len() > 1, "{lists:?}");
    assert!(
        lists.iter().all(|l| blobs.contains(l)),
        "{lists:?} {blobs:?}"
    );
    // Up to date now, without pulling.
    let (code, out, _) = t.upgrade(&[]);
    assert_eq!(code, 0);
    assert!(out.contains("upToDate"), "{out}");
    kiln_ok(&["rollback", "--sysroot", s(&t.f.sysroot)]);
    assert_eq!(next_boot(&t.status())["checksum"], v1.as_str());
}

/// Deploys v1 (signed) from `host`, then publishes v2 with `publish_v2` and expects the
/// upgrade to be refused with `want` in its error, the sysroot unchanged.
fn refused(t: &Setup, host: &str, tag: &str, want: &str, keep_blobs: bool) {
    let before = t.snapshot();
    let blobs = t.cached_blobs();
    let (code, out, err) = t.upgrade(&[]);
    assert_ne!(code, 0, "upgrade was not refused:\n{out}\n{err}");
    assert!(err.contains(want), "expected {want:?} in:\n{err}");
    let after = t.snapshot();
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .collect();
    assert!(
        changed.is_empty(),
        "{tag}: the sysroot changed: {changed:?}"
    );
    if keep_blobs {
        assert_eq!(t.cached_blobs(), blobs, "{tag}: layers were downloaded");
    }
    let _ = host;
}

#[test]
fn refusals_leave_the_sysroot_as_it_was() {
    let t = setup();
    let host = t.reg.host();
    commit(&t.f, 1, &[]);
    t.publish(&host, "stable", Some(&t.key));
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&t.f.sysroot),
        "--containers-dir",
        s(&t.machine.dir),
        &t.image(&host, "stable"),
    ]);
    let v1 = next_boot(&t.status())["checksum"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. Unsigned v2 where the policy requires a signature.
    let v2 = commit(&t.f, 2, &[3]);
    t.publish(&host, "stable", None);
    refused(&t, &host, "unsigned", "signature", true);

    // 2. Signed by a key the machine does not trust.
    let other = common::fleet::Gpg::new(t.f.dir.path(), "stranger");
    t.publish(&host, "stable", Some(&other));
    refused(&t, &host, "unknown key", "ignature", true);

    // 3. Properly signed, but a layer altered in the registry's storage.
    let p2 = t.publish(&host, "stable", Some(&t.key));
    let pkg3 = p2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "pkg3")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = t.reg.blob_file(&pkg3);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    refused(&t, &host, "tampered layer", "digest", false);
    assert!(
        !t.cached_blobs().contains(&pkg3[7..].to_string()),
        "the tampered layer was kept"
    );
    std::fs::write(&blob, &good).unwrap();
    assert_eq!(next_boot(&t.status())["checksum"], v1.as_str());

    // The genuine v2 goes through.
    let (code, out, err) = t.upgrade(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(next_boot(&t.status())["checksum"], v2.as_str());
}

#[test]
fn a_registry_gone_mid_pull_is_resumed_by_the_next_run() {
    let t = setup();
    let relay = Relay::start(t.reg.port);
    let via = format!("127.0.0.1:{}", relay.port);
    // The machine reaches the registry through the relay (its own certs.d and scope).
    let machine = Containers::new(
        &t.f.dir.path().join("machine-relay"),
        &t.tls,
        &[via.clone(), t.reg.host()],
        // Signatures name the registry's own address: a mirror remaps the identity.
        &serde_json::json!({"default": [{"type": "reject"}], "transports": {"docker": {
            format!("{via}/os"): [{"type": "signedBy", "keyType": "GPGKeys",
                "keyPath": t.key.public,
                "signedIdentity": {"type": "remapIdentity", "prefix": via,
                    "signedPrefix": t.reg.host()}}],
        }}}),
    );
    let t = Setup { machine, ..t };
    commit(&t.f, 1, &[]);
    t.publish(&t.reg.host(), "stable", Some(&t.key));
    kiln_ok(&[
        "deploy",
        "--sysroot",
        s(&t.f.sysroot),
        "--containers-dir",
        s(&t.machine.dir),
        &t.image(&via, "stable"),
    ]);
    // v2 changes a small package and the two biggest.
    let v2 = commit(&t.f, 2, &[1, 18, 19]);
    let p2 = t.publish(&t.reg.host(), "stable", Some(&t.key));
    let changed: u64 = p2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| ["pkg1", "pkg18", "pkg19"].contains(&l["name"].as_str().unwrap()))
        .map(|l| l["bytes"].as_u64().unwrap())
        .sum();
    t.reg.take_log();
    let before = t.snapshot();
    relay.cut_after(changed / 2);
    let (code, out, err) = t.upgrade(&[]);
    assert_ne!(code, 0, "the pull should have failed:\n{out}\n{err}");
    assert!(relay.gone());
    assert_eq!(t.snapshot(), before, "a failed pull changed the sysroot");
    let (_, first) = t.reg.take_log();
    let port = relay.port;
    drop(relay);
    std::thread::sleep(std::time::Duration::from_millis(200));

    // The registry is back on the same address: the next run completes, fetching less
    // than the changed layers again.
    let _relay = Relay::start_on(port, t.reg.port);
    let (code, out, err) = t.upgrade(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, second) = t.reg.take_log();
    eprintln!("changed layers {changed} bytes; first run served {first}, second {second}");
    assert!(
        second < changed,
        "nothing was resumed: second run pulled {second} of {changed}"
    );
    assert_eq!(next_boot(&t.status())["checksum"], v2.as_str());
}
