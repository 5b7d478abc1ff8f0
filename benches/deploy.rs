//! Deployment timings on a real temp sysroot (run as root): first deploy, an upgrade
//! deploy with /etc merge, rollback, in-place kargs, status. Goals are printed beside the
//! measurements; the goal that gates is rollback <= 0.2 s.

mod common;

use common::{median, secs, unlock_deployments};
use kiln::deploy::upgrade::{upgrade, UpgradeOptions, UpgradeOutcome};
use kiln::deploy::{self, ops, DeployRequest, Source};
use kiln::repo::{self, keys, CommitOptions, MetaValue};
use std::path::Path;
use std::time::Instant;

const REF: &str = "kiln/bench/x86_64/base";
const FILES: usize = 5000;

/// Kernel and initramfs sizes (MiB): a Debian cloud kernel is ~8 MiB, a dracut
/// initramfs with ostree and ignition 16-40 MiB.
const KERNEL_MIB: usize = 8;
const INITRAMFS_MIB: usize = 16;

fn tree(dir: &Path, v: u32, files: usize, kernel_mib: usize, initramfs_mib: usize) {
    let m = dir.join("usr/lib/modules/6.1.0-bench");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.join("usr/etc")).unwrap();
    std::fs::write(m.join("vmlinuz"), vec![7u8; kernel_mib << 20]).unwrap();
    std::fs::write(m.join("initramfs.img"), vec![9u8; initramfs_mib << 20]).unwrap();
    std::fs::write(
        dir.join("usr/lib/os-release"),
        format!("ID=kiln\nVERSION_ID={v}\n"),
    )
    .unwrap();
    for i in 0..files {
        let d = dir.join(format!("usr/share/bench/{}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        // One file in ten changes between versions.
        let body = if i % 10 == 0 {
            format!("{i} v{v}\n")
        } else {
            format!("{i}\n")
        };
        std::fs::write(d.join(format!("f{i}")), body).unwrap();
    }
    for i in 0..100 {
        std::fs::write(dir.join(format!("usr/etc/conf{i}")), format!("{i}\n")).unwrap();
    }
}

fn commit(repo_path: &Path, work: &Path, v: u32) -> String {
    commit_sized(repo_path, work, v, FILES, KERNEL_MIB, INITRAMFS_MIB)
}

fn commit_sized(
    repo_path: &Path,
    work: &Path,
    v: u32,
    files: usize,
    kernel_mib: usize,
    initramfs_mib: usize,
) -> String {
    let t = work.join(format!("tree{v}"));
    tree(&t, v, files, kernel_mib, initramfs_mib);
    let r = repo::open(repo_path).unwrap();
    let c = repo::commit_dir(
        &r,
        &t,
        &CommitOptions {
            ref_: REF.into(),
            timestamp: 1_700_000_000 + u64::from(v),
            metadata: vec![
                (keys::VERSION.into(), MetaValue::Str(format!("{v}"))),
                (keys::KARGS.into(), MetaValue::StrList(vec!["rw".into()])),
            ],
            bootable: true,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&t).unwrap();
    c.checksum
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("deploy bench: needs root (deployments are root-owned); skipped");
        return;
    }
    let td = tempfile::Builder::new()
        .prefix("kiln-bench-deploy")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo_path = td.path().join("repo");
    repo::open_or_create(&repo_path, repo::RepoMode::BareUser).unwrap();
    let sysroot = td.path().join("sysroot");
    commit(&repo_path, td.path(), 1);
    let req = DeployRequest {
        sysroot: sysroot.clone(),
        os: "kiln".into(),
        source: Source::LocalRepo(repo_path.clone()),
        rev: REF.into(),
        kargs: None,
    };

    let t = Instant::now();
    deploy::deploy(&req).unwrap();
    let first = secs(t);
    commit(&repo_path, td.path(), 2);
    let t = Instant::now();
    let up = upgrade(
        &sysroot,
        "kiln",
        &UpgradeOptions {
            repo: Some(repo_path.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let upgrade = secs(t);
    assert!(matches!(up, UpgradeOutcome::Deployed { .. }));

    let mut rb = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        ops::rollback(&sysroot).unwrap();
        rb.push(secs(t));
    }
    let rollback = median(rb);
    let t = Instant::now();
    ops::kargs(
        &sysroot,
        "kiln",
        &ops::KargsEdit {
            append: vec!["quiet".into()],
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let kargs = secs(t);
    let mut st = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        ops::status(&sysroot).unwrap();
        st.push(secs(t));
    }
    let status = median(st);
    let t = Instant::now();
    ops::cleanup(&sysroot, "kiln", true).unwrap();
    let cleanup = secs(t);

    // The same rollback with a 1 MiB kernel + 1 MiB initramfs: libostree re-reads and
    // re-hashes every deployment's kernel and initramfs whenever it writes
    // a new boot version, so rollback time grows with their size.
    let small = td.path().join("small");
    let small_repo = small.join("repo");
    repo::open_or_create(&small_repo, repo::RepoMode::BareUser).unwrap();
    let small_sysroot = small.join("sysroot");
    for v in 1..=2 {
        commit_sized(&small_repo, &small, v, 100, 1, 1);
        deploy::deploy(&DeployRequest {
            sysroot: small_sysroot.clone(),
            source: Source::LocalRepo(small_repo.clone()),
            ..req.clone()
        })
        .unwrap();
    }
    let mut rb = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        ops::rollback(&small_sysroot).unwrap();
        rb.push(secs(t));
    }
    let rollback_small = median(rb);

    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "deploy bench ({FILES} files, {KERNEL_MIB} MiB kernel + {INITRAMFS_MIB} MiB initramfs, \
         bare-user repo -> sysroot, 2 deployments):"
    );
    println!("  first deploy (init + pull + deploy):   {first:.3} s");
    println!("  upgrade deploy (pull + /etc merge):     {upgrade:.3} s");
    println!(
        "  rollback (median of 9):                 {rollback:.3} s   goal <= 0.200 s  {}",
        verdict(rollback <= 0.2)
    );
    println!(
        "  rollback, 1+1 MiB kernel (median of 9): {rollback_small:.3} s   goal <= 0.200 s  {}",
        verdict(rollback_small <= 0.2)
    );
    println!("  kargs --in-place:                       {kargs:.3} s");
    println!("  status (median of 9):                   {status:.3} s");
    println!("  cleanup -r + prune:                     {cleanup:.3} s");
    if std::env::var_os("KILN_BENCH_KEEP").is_some() {
        let kept = td.keep();
        println!("  kept {}", kept.display());
        return;
    }
    unlock_deployments(&sysroot);
    unlock_deployments(&small_sysroot);
}
