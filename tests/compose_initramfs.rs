//! The initramfs record against real changes of what dracut reads, with the real pipeline
//! (mmdebstrap against the configured mirror, dracut under strace in the tree, libostree).
//! Needs root.
//!
//! One test, in order, with a small recipe (cloud kernel, dracut, systemd, ostree-boot)
//! in its own cache dir (`.deb`s and apt lists hardlinked from `build/cache`):
//! 1. a first compose builds the initramfs and keeps its record;
//! 2. an overlay replaces one kernel module the image carries (`virtio_blk.ko`, same
//!    bytes plus a tail): the kept image would be stale, so dracut runs again, `--json`
//!    names the module as the changed input, and the new image carries the new bytes;
//! 3. the overlay is gone again: the record of step 2 is stale now, dracut runs again,
//!    and the image is byte for byte the one of step 1 (`--reproducible`, zstd);
//! 4. the kernel package changes (the generic flavour `linux-image-amd64` instead of the
//!    cloud one, its `.deb`s downloaded once and linked back into `build/cache/debs`):
//!    dracut runs again and the image carries the new kernel's modules, not the old ones.

mod common;

use std::path::Path;

const EPOCH: &str = "1700000000";

fn recipe(kernel: &str, overlay: bool) -> String {
    format!(
        r#"name = "initramfs-test"
ref = "kiln/test/initramfs"
version = "{{date}}.{{serial}}"
suite = "bookworm"
components = ["main"]
packages = ["{kernel}", "dracut", "systemd", "systemd-sysv", "udev", "kmod", "ostree-boot"]
overlays = [{}]
"#,
        if overlay { "\"overlay\"" } else { "" }
    )
}

fn link_debs(from: &Path, to: &Path, dirs: &[&str]) {
    for d in dirs {
        if from.join(d).is_dir() {
            std::fs::create_dir_all(to.join(d)).unwrap();
            let st = std::process::Command::new("cp")
                .args(["-al", "-n"])
                .arg(from.join(d))
                .arg(to)
                .status()
                .unwrap();
            assert!(st.success(), "linking {d}");
        }
    }
}

fn compose(recipe: &Path, repo: &Path, cache: &Path, what: &str) -> serde_json::Value {
    common::compose_timed(recipe, repo, cache, EPOCH, what)
}

/// A file of a commit, read with the ostree CLI.
fn cat(repo: &Path, commit: &str, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["cat", commit, path])
        .output()
        .unwrap();
    assert!(out.status.success(), "ostree cat {path}");
    out.stdout
}

fn kernel_of(repo: &Path, commit: &str) -> String {
    let out = std::process::Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(["ls", commit, "/usr/lib/modules"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|p| p.strip_prefix("/usr/lib/modules/"))
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

fn image(repo: &Path, v: &serde_json::Value) -> (String, Vec<u8>) {
    let commit = v["commit"].as_str().unwrap();
    let k = kernel_of(repo, commit);
    let img = cat(repo, commit, &format!("/usr/lib/modules/{k}/initramfs.img"));
    assert_eq!(&img[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd image");
    (k, img)
}

#[test]
fn changed_kernel_modules_and_kernels_rebuild_the_initramfs() {
    let started = std::time::Instant::now();
    let work = common::fixture_workdir("initramfs-");
    let w = work.path();
    let shared = common::project_root().join("build/cache");
    let cache = w.join("cache");
    {
        let _l = common::lock(&shared.join("lock"));
        link_debs(&shared, &cache, &["debs", "apt-lists"]);
    }
    let r = w.join("recipe.toml");
    let repo = w.join("repo");

    // 1. First compose: built and kept.
    std::fs::write(&r, recipe("linux-image-cloud-amd64", false)).unwrap();
    let v1 = compose(&r, &repo, &cache, "first compose");
    assert_eq!(v1["reused"]["initramfs"], false, "{v1}");
    assert!(v1["reused"]["initramfs_changed"].is_null(), "{v1}");
    let (k1, img1) = image(&repo, &v1);
    let files1 = common::initramfs::files(&img1);
    let ko = format!("usr/lib/modules/{k1}/kernel/drivers/block/virtio_blk.ko");
    let old = files1
        .get(&ko)
        .unwrap_or_else(|| panic!("{ko} not in the image"));
    assert!(files1.contains_key(&format!("usr/lib/modules/{k1}/modules.dep")));

    // 2. One kernel module replaced by an overlay: never the kept image.
    let mut new = cat(&repo, v1["commit"].as_str().unwrap(), &format!("/{ko}"));
    assert_eq!(&new, old, "dracut copies modules verbatim");
    new.extend_from_slice(b"\0kiln-test-tail\0");
    let f = w.join("overlay").join(&ko);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, &new).unwrap();
    std::fs::write(&r, recipe("linux-image-cloud-amd64", true)).unwrap();
    let v2 = compose(&r, &repo, &cache, "kernel module replaced");
    assert_eq!(v2["reused"]["initramfs"], false, "{v2}");
    // The path as dracut named it (`/lib/modules/K//kernel/…` through the /lib link).
    let named = |v: &serde_json::Value| {
        let c = v["reused"]["initramfs_changed"]
            .as_str()
            .unwrap_or("")
            .to_string();
        c.contains(&k1) && c.ends_with("/kernel/drivers/block/virtio_blk.ko")
    };
    assert!(named(&v2), "{v2}");
    let (_, img2) = image(&repo, &v2);
    assert_eq!(common::initramfs::files(&img2).get(&ko), Some(&new));

    // 3. Back to the packaged module: the record of step 2 is stale, step 1's bytes.
    std::fs::write(&r, recipe("linux-image-cloud-amd64", false)).unwrap();
    let v3 = compose(&r, &repo, &cache, "kernel module restored");
    assert_eq!(v3["reused"]["initramfs"], false, "{v3}");
    assert!(named(&v3), "{v3}");
    let (_, img3) = image(&repo, &v3);
    assert!(img3 == img1, "same inputs, different initramfs bytes");

    // 4. Another kernel package.
    std::fs::write(&r, recipe("linux-image-amd64", false)).unwrap();
    let v4 = compose(&r, &repo, &cache, "kernel package changed");
    {
        let _l = common::lock(&shared.join("lock"));
        link_debs(&cache, &shared, &["debs"]);
    }
    assert_eq!(v4["reused"]["initramfs"], false, "{v4}");
    let (k4, img4) = image(&repo, &v4);
    assert_ne!(k4, k1);
    let names: Vec<String> = common::initramfs::names(&img4);
    let under = |k: &str| {
        names
            .iter()
            .filter(|n| n.starts_with(&format!("usr/lib/modules/{k}/")))
            .count()
    };
    assert!(
        names.contains(&format!("usr/lib/modules/{k4}/modules.dep")),
        "no modules.dep for {k4}"
    );
    assert!(under(&k4) > 50, "{} files for {k4}", under(&k4));
    assert_eq!(under(&k1), 0, "the old kernel's modules in the new image");
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}
