// suite-minutes: 7 (TCG run time here: 5 with the booted base saved, 6.7 when it is built first)
//! A machine follows a container registry (docs/updating.md, "Machines that follow an
//! image"), under QEMU (TCG, run as root): the saved booted base system (v1) and Debian's
//! `docker-registry` on 127.0.0.1 with TLS from a test CA, reached by the guest only
//! through QEMU's restricted user network and a guestfwd. The guest is configured the
//! way the docs tell operators to (certs.d, policy.json with the release key,
//! registries.d naming where signatures are), refuses an unsigned image, rebases onto the
//! signed image, upgrades to v2 pulling only the layers it lacks, boots v2 and rolls
//! back. The VM-free tests are in tests/oci.rs.

mod common;

use common::fleet::{s, Gpg, Nginx};
use common::oci::{Containers, Registry, Tls};
use common::{vm_login, vm_status_json, wait_booted, VM_CMD};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the guest reaches the registry (guestfwd to the registry's 127.0.0.1 port); the
/// lookaside and the setup files are on port 80 of the same address.
const GUEST_HOST: &str = "10.0.2.100";
const GUEST_REGISTRY: &str = "10.0.2.100:5000";

/// The one package v2 adds (files, dpkg database entry), so v2 is a one-package change.
const PKG: &str = "kiln-vm-oci-probe";

/// A guest command that pulls or imports an image (TCG is slow at gunzip and sha256).
const PULL: Duration = Duration::from_secs(1200);

/// v2 of the base commit: v1 plus the package [`PKG`] (its file and its entry in the dpkg
/// database, as apt would have left them).
fn v2_with_package(f: &common::Composed, work: &Path) -> String {
    let add = work.join("v2-add");
    let db = add.join("usr/lib/sysimage/dpkg");
    std::fs::create_dir_all(db.join("info")).unwrap();
    std::fs::create_dir_all(add.join(format!("usr/share/{PKG}"))).unwrap();
    std::fs::write(add.join(format!("usr/share/{PKG}/probe")), "v2 probe\n").unwrap();
    std::fs::write(
        db.join(format!("info/{PKG}.list")),
        format!("/.\n/usr\n/usr/share\n/usr/share/{PKG}\n/usr/share/{PKG}/probe\n"),
    )
    .unwrap();
    let status = kiln::cmd::Cmd::new("ostree")
        .arg(format!("--repo={}", f.repo.display()))
        .args(["cat", &f.commit, "/usr/lib/sysimage/dpkg/status"])
        .read()
        .unwrap();
    assert!(!status.contains(PKG), "v1 already has {PKG}");
    std::fs::write(
        db.join("status"),
        format!(
            "{}\n\nPackage: {PKG}\nStatus: install ok installed\nPriority: optional\n\
             Section: misc\nInstalled-Size: 1\nMaintainer: kiln tests <tests@kiln.invalid>\n\
             Architecture: all\nVersion: 2.0\nDescription: kiln test package\n",
            status.trim_end()
        ),
    )
    .unwrap();
    common::base_variant(f, &add, "oci-v2")
}

/// The host side: registry, signing key, lookaside server, publisher configuration.
struct Host {
    reg: Registry,
    key: Gpg,
    /// The publisher's containers configuration; its `sigstore/` is the lookaside
    /// (`lookaside-staging` for skopeo) and nginx serves it to the guest.
    publisher: Containers,
    www: std::path::PathBuf,
}

impl Host {
    /// The arguments of `kiln publish --oci 127.0.0.1:PORT/os/base:TAG` of `commit`,
    /// signed when `sign`.
    fn publish_args(&self, repo: &Path, commit: &str, tag: &str, sign: bool) -> Vec<String> {
        let certs = self.publisher.certs(&self.reg.host());
        let rd = self.publisher.dir.join("registries.d");
        let mut args = vec![
            "publish".to_string(),
            "--repo".into(),
            s(repo).into(),
            "--ref".into(),
            commit.into(),
            "--oci".into(),
            format!("{}/os/base:{tag}", self.reg.host()),
            "--cert-dir".into(),
            s(&certs).into(),
            "--registries-d".into(),
            s(&rd).into(),
            "--json".into(),
        ];
        if sign {
            args.extend([
                "--gpg-sign".into(),
                self.key.fpr.clone(),
                "--gpg-homedir".into(),
                s(&self.key.home).into(),
            ]);
        }
        args
    }

    /// Promotes the image at `from` to `to` in the registry, signing it (the release
    /// step after testing an unsigned candidate): no layer is rebuilt.
    fn promote_signed(&self, from: &str, to: &str) {
        let h = self.reg.host();
        kiln::cmd::Cmd::new("skopeo")
            .arg("--registries.d")
            .arg(self.publisher.dir.join("registries.d"))
            .args(["--insecure-policy", "copy", "--sign-by", &self.key.fpr])
            .arg("--src-cert-dir")
            .arg(self.publisher.certs(&h))
            .arg("--dest-cert-dir")
            .arg(self.publisher.certs(&h))
            .env("GNUPGHOME", &self.key.home)
            .arg(format!("docker://{h}/os/base:{from}"))
            .arg(format!("docker://{h}/os/base:{to}"))
            .run()
            .unwrap();
    }
}

/// The files an operator puts on a machine that follows the registry: the CA, the
/// release key, a policy that requires its signature for the OS images, and where
/// signatures are (docs/updating.md). The guest knows the registry as
/// `10.0.2.100:5000`, the publisher as `127.0.0.1:PORT`: signatures name the latter, so
/// the policy maps the one name onto the other, as for a mirror.
fn guest_files(h: &Host, tls: &Tls) {
    let g = h.www.join("guest");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::copy(&tls.ca, g.join("ca.crt")).unwrap();
    std::fs::copy(&h.key.public, g.join("release.asc")).unwrap();
    let policy = json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {
            format!("{GUEST_REGISTRY}/os"): [{
                "type": "signedBy", "keyType": "GPGKeys",
                "keyPath": "/etc/pki/containers/release.asc",
                "signedIdentity": {"type": "remapIdentity", "prefix": GUEST_REGISTRY,
                    "signedPrefix": h.reg.host()}
            }]
        }}
    });
    std::fs::write(
        g.join("policy.json"),
        serde_json::to_vec_pretty(&policy).unwrap(),
    )
    .unwrap();
    std::fs::write(
        g.join("os.yaml"),
        format!("docker:\n  {GUEST_REGISTRY}:\n    lookaside: http://{GUEST_HOST}/sigstore\n"),
    )
    .unwrap();
}

/// Runs `kiln publish` with `args` ([`Host::publish_args`]); its JSON report.
fn publish(args: Vec<String>) -> Value {
    let t = Instant::now();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let v: Value = serde_json::from_str(&common::kiln_ok(&a)).unwrap();
    eprintln!(
        "published {} ({} layers, {} bytes) in {:.0?}",
        v["destination"],
        v["layers"].as_array().unwrap().len(),
        v["imageBytes"],
        t.elapsed()
    );
    v
}

/// The layer digests of a publish report.
fn layers(p: &Value) -> Vec<String> {
    p["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The blob digests among logged registry requests.
fn blobs_fetched(reqs: &[String]) -> Vec<String> {
    reqs.iter()
        .filter_map(|r| r.split("/blobs/").nth(1))
        .map(|d| d.to_string())
        .collect()
}

/// The deployments of `kiln status --json` as (checksum, refspec, booted, staged).
fn deployments(st: &Value) -> Vec<(String, String, bool, bool)> {
    st["status"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["checksum"].as_str().unwrap_or_default().to_string(),
                d["refspec"].as_str().unwrap_or_default().to_string(),
                d["booted"].as_bool() == Some(true),
                d["staged"].as_bool() == Some(true),
            )
        })
        .collect()
}

fn reboot(vm: &mut kiln::qemu::Vm, what: &str) -> String {
    vm.send("systemctl reboot\n").unwrap();
    let booted = wait_booted(vm, what);
    vm_login(vm);
    booted
}

/// e2e: the guest, configured as docs/updating.md says, refuses an unsigned image
/// (non-zero exit, no layer fetched, status unchanged), rebases onto the signed image of
/// v1, upgrades to v2 fetching only the layers v1's image lacks (the registry's access
/// log), boots v2 with the package of the change, rolls back and boots v1.
#[test]
fn vm_follows_a_registry_upgrades_and_rolls_back() {
    let t0 = Instant::now();
    let b = common::booted::booted_fixture();
    let f = common::base_commit();
    let td = common::fixture_workdir("vm-oci-");
    let tls = Tls::for_ips(&td.path().join("tls"), &["127.0.0.1", GUEST_HOST]);
    let reg = Registry::start(td.path(), &tls);
    let key = Gpg::new(td.path(), "release");
    let www = td.path().join("www");
    // The publisher's own policy only matters to its pushes (skopeo reads no policy for
    // its source); the lookaside it writes to is www/sigstore.
    let publisher = Containers::new(
        &www,
        &tls,
        &[reg.host()],
        &json!({"default": [{"type": "insecureAcceptAnything"}]}),
    );
    let h = Host {
        reg,
        key,
        publisher,
        www: www.clone(),
    };
    guest_files(&h, &tls);
    let nginx = Nginx::start(td.path(), &www);
    let v2 = v2_with_package(&f, td.path());

    let p1 = publish(h.publish_args(&f.repo, &b.v1, "stable", true));
    assert_eq!(p1["commit"], b.v1.as_str());
    let full = p1["imageBytes"].as_u64().unwrap();
    // v2 goes up as an unsigned candidate while the guest pulls v1.
    let candidate = {
        let args = h.publish_args(&f.repo, &v2, "candidate", false);
        std::thread::spawn(move || publish(args))
    };

    let mut o = common::booted::booted_options(&b, "oci-follow");
    o.guestfwd = vec![
        (GUEST_REGISTRY.into(), h.reg.port),
        (format!("{GUEST_HOST}:80"), nginx.port),
    ];
    let mut vm = common::booted::resume_booted_with(o);
    let ig = format!("ostree-image-signed:docker://{GUEST_REGISTRY}/os/base");
    // The operator's part (docs/updating.md): CA, key, policy, where signatures are.
    vm.run_ok(
        &format!(
            "get() {{ curl -fsS -m 60 -o \"$2\" http://{GUEST_HOST}/guest/$1; }} && \
             mkdir -p /etc/containers/certs.d/{GUEST_REGISTRY} /etc/containers/registries.d \
               /etc/pki/containers && \
             get ca.crt /etc/containers/certs.d/{GUEST_REGISTRY}/ca.crt && \
             get release.asc /etc/pki/containers/release.asc && \
             get policy.json /etc/containers/policy.json && \
             get os.yaml /etc/containers/registries.d/kiln-os.yaml && \
             command -v skopeo"
        ),
        VM_CMD,
    )
    .unwrap_or_else(|e| panic!("configuring the guest: {e}"));
    assert_eq!(common::booted_in_status(&vm_status_json(&mut vm)), b.v1);
    h.reg.take_log();

    // 1. Rebase onto the signed image of v1 (the commit it runs: every layer is fetched
    //    once, no new object is written).
    let t = Instant::now();
    vm.run_ok(&format!("kiln rebase {ig}:stable"), PULL)
        .unwrap_or_else(|e| panic!("rebase: {e}"));
    let (_, first) = h.reg.take_log();
    eprintln!(
        "rebase onto the image: {first} bytes pulled in {:.0?}",
        t.elapsed()
    );
    let before = vm_status_json(&mut vm);
    let staged: Vec<_> = deployments(&before).into_iter().filter(|d| d.3).collect();
    assert_eq!(staged.len(), 1, "{before:#}");
    assert_eq!(staged[0].0, b.v1);
    assert_eq!(staged[0].1, format!("{ig}:stable"));

    // 2. An unsigned image where the policy requires a signature: refused, no layer
    //    fetched, the deployments as they were.
    let p2 = candidate.join().unwrap();
    assert_eq!(p2["commit"], v2.as_str());
    let new_layers: Vec<String> = layers(&p2)
        .into_iter()
        .filter(|l| !layers(&p1).contains(l))
        .collect();
    eprintln!(
        "v2 has {} of {} layers that v1 lacks",
        new_layers.len(),
        layers(&p2).len()
    );
    h.reg.take_log();
    let (code, out) = vm
        .run(&format!("kiln rebase {ig}:candidate"), VM_CMD)
        .unwrap();
    assert_ne!(code, 0, "the unsigned image was deployed:\n{out}");
    assert!(out.contains("signature"), "{out}");
    let (reqs, _) = h.reg.take_log();
    assert!(
        !blobs_fetched(&reqs).iter().any(|d| new_layers.contains(d)),
        "layers of the refused image were fetched: {reqs:#?}"
    );
    assert_eq!(
        deployments(&vm_status_json(&mut vm)),
        deployments(&before),
        "the refused image changed the deployments"
    );

    // 3. v2 released (signed); `--check` sees it without layers, the upgrade fetches
    //    only the layers v1's image lacks.
    h.promote_signed("candidate", "stable");
    h.reg.take_log();
    let (code, out) = vm.run("kiln upgrade --check --json", VM_CMD).unwrap();
    assert_eq!(code, 77, "{out}");
    assert!(out.contains(&v2), "{out}");
    let (reqs, _) = h.reg.take_log();
    assert!(
        blobs_fetched(&reqs).iter().all(|d| !new_layers.contains(d)),
        "--check fetched layers: {reqs:#?}"
    );
    let t = Instant::now();
    vm.run_ok("kiln upgrade", PULL)
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let (reqs, served) = h.reg.take_log();
    eprintln!(
        "upgrade: registry served {served} bytes ({:.2} % of {full}) in {:.0?}",
        served as f64 * 100.0 / full as f64,
        t.elapsed()
    );
    let fetched = blobs_fetched(&reqs);
    for d in &fetched {
        assert!(
            !layers(&p1).contains(d),
            "the upgrade fetched v1's layer {d} again: {reqs:#?}"
        );
    }
    for l in &new_layers {
        assert!(
            fetched.contains(l),
            "layer {l} of v2 not fetched: {reqs:#?}"
        );
    }
    assert!(served * 10 <= full, "pulled {served} of {full} bytes");

    // 4. v2 boots, following the image, with the package of the change.
    assert_eq!(reboot(&mut vm, "boot into v2"), v2, "did not boot v2");
    let st = vm_status_json(&mut vm);
    assert_eq!(common::booted_in_status(&st), v2);
    let booted = deployments(&st).into_iter().find(|d| d.2).unwrap();
    assert_eq!(booted.1, format!("{ig}:stable"), "{st:#}");
    let probe = vm
        .run_ok(
            &format!(
                "dpkg-query --admindir=/usr/lib/sysimage/dpkg -W -f '${{Version}}\\n' {PKG} && \
                 cat /usr/share/{PKG}/probe"
            ),
            VM_CMD,
        )
        .unwrap();
    assert!(
        probe.contains("2.0") && probe.contains("v2 probe"),
        "{probe}"
    );

    // 5. Roll back: v1 boots again.
    vm.run_ok("kiln rollback", VM_CMD).unwrap();
    assert_eq!(
        reboot(&mut vm, "boot after rollback"),
        b.v1,
        "rollback did not boot v1"
    );
    assert_eq!(common::booted_in_status(&vm_status_json(&mut vm)), b.v1);
    vm.kill();
    eprintln!("vm_oci: done in {:.0?}", t0.elapsed());
}
