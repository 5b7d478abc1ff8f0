//! Registry as the OS transport: bytes a machine pulls from Debian's `docker-registry`
//! (its access log) going v1 → v2 when one package changed, next to the static delta
//! `kiln publish` makes for the same change. A synthetic OS of 60 packages (≈ 60 MiB of
//! incompressible files, each package in the tree's dpkg database) with a fake kernel.

mod common;

use common::oci::{add_packages, Containers, Registry, Tls};
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use std::path::Path;
use std::time::Instant;

const REF: &str = "kiln/bench/x86_64/oci";
const PKGS: usize = 60;

fn size(i: usize) -> usize {
    (64 + (i * 37) % 1900) * 1024
}

fn commit(build: &Path, work: &Path, v: u32, bump: &[usize]) -> String {
    let t = work.join(format!("tree{v}"));
    let m = t.join("usr/lib/modules/6.1.0-bench");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(t.join("usr/etc")).unwrap();
    std::fs::write(m.join("vmlinuz"), common::oci::noise(7, 8 << 20)).unwrap();
    std::fs::write(m.join("initramfs.img"), common::oci::noise(9, 4 << 20)).unwrap();
    std::fs::write(
        t.join("usr/lib/os-release"),
        format!("ID=kiln\nVERSION_ID={v}\n"),
    )
    .unwrap();
    add_packages(&t, PKGS, size, bump, v);
    let r = repo::open(build).unwrap();
    let c = repo::commit_dir(
        &r,
        &t,
        &CommitOptions {
            ref_: REF.into(),
            timestamp: 1_700_000_000 + u64::from(v) * 86400,
            metadata: vec![
                (keys::VERSION.into(), MetaValue::Str(format!("{v}.0"))),
                (
                    keys::KARGS.into(),
                    MetaValue::StrList(vec!["root=LABEL=root".into(), "rw".into()]),
                ),
            ],
            bootable: true,
            ..Default::default()
        },
    )
    .unwrap()
    .checksum;
    std::fs::remove_dir_all(&t).unwrap();
    c
}

fn main() {
    if common::listing() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-oci")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let build = d.join("build");
    repo::open_or_create(&build, repo::RepoMode::BareUser).unwrap();
    let tls = Tls::new(&d.join("tls"));
    let reg = Registry::start(d, &tls);
    let host = reg.host();
    let machine = Containers::new(
        &d.join("machine"),
        &tls,
        std::slice::from_ref(&host),
        &serde_json::json!({"default": [{"type": "insecureAcceptAnything"}]}),
    );
    let certs = machine.certs(&host);
    let dest = format!("{host}/bench/os:stable");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let publish_oci = || {
        common::kiln_json(&[
            "publish",
            "--repo",
            &s(&build),
            "--oci",
            &dest,
            "--cert-dir",
            &s(&certs),
            "--json",
        ])
    };
    let sysroot = d.join("sysroot");
    let image = format!("ostree-unverified-registry:{dest}");

    commit(&build, d, 1, &[]);
    let (p1, t_pub1) = publish_oci();
    let (_, t_deploy) = common::kiln_timed(&[
        "deploy",
        "--sysroot",
        &s(&sysroot),
        "--containers-dir",
        &s(&machine.dir),
        &image,
    ]);
    // The static-delta side: an archive repo at v1.
    let archive = d.join("archive");
    common::kiln_json(&[
        "publish",
        "--repo",
        &s(&build),
        "--to",
        &s(&archive),
        "--json",
    ]);

    commit(&build, d, 2, &[17]);
    let (p2, t_pub2) = publish_oci();
    let full = p2["imageBytes"].as_u64().unwrap();
    reg.take_log();
    let t = Instant::now();
    common::kiln_timed(&[
        "upgrade",
        "--sysroot",
        &s(&sysroot),
        "--containers-dir",
        &s(&machine.dir),
    ]);
    let t_up = common::secs(t);
    let (reqs, pulled) = reg.take_log();
    let (a2, _) = common::kiln_json(&[
        "publish",
        "--repo",
        &s(&build),
        "--to",
        &s(&archive),
        "--json",
    ]);
    let delta: u64 = a2["deltasAdded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["bytes"].as_u64().unwrap())
        .sum();
    println!("oci (synthetic OS, {PKGS} packages, one package changed):");
    println!(
        "  image: {} layers, {} bytes compressed; publish v1 {t_pub1:.2} s, v2 {t_pub2:.2} s; first deploy {t_deploy:.2} s",
        p1["layers"].as_array().unwrap().len(),
        p1["imageBytes"]
    );
    println!(
        "  registry v1->v2: pulled {pulled} bytes in {} GETs = {:.2}% of the full image ({full} bytes); upgrade {t_up:.2} s",
        reqs.len(),
        pulled as f64 * 100.0 / full as f64
    );
    println!(
        "  static delta v1->v2 for the same change: {delta} bytes ({:.2}% of the full image)",
        delta as f64 * 100.0 / full as f64
    );
    common::unlock_deployments(&sysroot);
}
