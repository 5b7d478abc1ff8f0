//! Compose for real (mmdebstrap against the host's mirror, dracut, libostree) and check
//! the commit through libostree.

mod common;

use kiln::repo::keys;
use ostree::gio;
use ostree::prelude::*;
use std::path::Path;

fn root_of(repo: &ostree::Repo, commit: &str) -> gio::File {
    repo.read_commit(commit, gio::Cancellable::NONE).unwrap().0
}

fn file_type(root: &gio::File, p: &str) -> gio::FileType {
    root.resolve_relative_path(p).query_file_type(
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    )
}

fn exists(root: &gio::File, p: &str) -> bool {
    file_type(root, p) != gio::FileType::Unknown
}

fn children(root: &gio::File, p: &str) -> Vec<String> {
    let e = root
        .resolve_relative_path(p)
        .enumerate_children(
            "standard::name",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        )
        .unwrap_or_else(|e| panic!("listing {p}: {e}"));
    let mut v = Vec::new();
    while let Some(i) = e.next_file(gio::Cancellable::NONE).unwrap() {
        v.push(i.name().to_string_lossy().into_owned());
    }
    v.sort();
    v
}

fn contents(root: &gio::File, p: &str) -> Vec<u8> {
    use std::io::Read;
    let f = root
        .resolve_relative_path(p)
        .downcast::<ostree::RepoFile>()
        .expect("a RepoFile");
    f.ensure_resolved()
        .unwrap_or_else(|e| panic!("resolving {p}: {e}"));
    let checksum = f.checksum().to_string();
    let (stream, _info, _xattrs) = f
        .repo()
        .load_file(&checksum, gio::Cancellable::NONE)
        .unwrap_or_else(|e| panic!("reading {p}: {e}"));
    let mut out = Vec::new();
    stream
        .expect("a regular file")
        .into_read()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn symlink_target(root: &gio::File, p: &str) -> String {
    let i = root
        .resolve_relative_path(p)
        .query_info(
            "standard::symlink-target",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        )
        .unwrap();
    i.symlink_target()
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn base_commit_has_the_ostree_layout_and_metadata() {
    let f = common::base_commit();
    let repo = kiln::repo::open(&f.repo).unwrap();
    let root = root_of(&repo, &f.commit);

    // /etc lives in /usr/etc.
    assert_eq!(file_type(&root, "usr/etc"), gio::FileType::Directory);
    assert!(!exists(&root, "etc"));
    assert!(exists(&root, "usr/lib/os-release"));
    assert!(String::from_utf8(contents(&root, "usr/etc/fstab"))
        .unwrap()
        .contains("LABEL=boot /boot ext4"));

    // Kernel and initramfs where libostree looks.
    let kvers = children(&root, "usr/lib/modules");
    assert_eq!(kvers.len(), 1, "{kvers:?}");
    let k = &kvers[0];
    assert!(exists(&root, &format!("usr/lib/modules/{k}/vmlinuz")));
    let initrd = contents(&root, &format!("usr/lib/modules/{k}/initramfs.img"));
    let names = common::initramfs::names(&initrd);
    assert!(
        names.iter().any(|n| n.ends_with("ostree-prepare-root")),
        "no ostree-prepare-root among {} initramfs entries",
        names.len()
    );

    // Empty mount points and /var.
    for d in ["var", "boot", "dev", "proc", "sys", "run", "tmp", "sysroot"] {
        assert_eq!(children(&root, d), Vec::<String>::new(), "/{d} not empty");
    }
    assert_eq!(symlink_target(&root, "ostree"), "sysroot/ostree");
    assert_eq!(symlink_target(&root, "home"), "var/home");
    assert_eq!(symlink_target(&root, "root"), "var/roothome");
    assert_eq!(symlink_target(&root, "usr/local"), "../var/usrlocal");
    assert_eq!(symlink_target(&root, "media"), "run/media");
    let tmpfiles = String::from_utf8(contents(&root, "usr/lib/tmpfiles.d/kiln-var.conf")).unwrap();
    assert!(
        tmpfiles.contains("L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg"),
        "{tmpfiles}"
    );
    assert!(tmpfiles.contains("d /var/roothome 0700"), "{tmpfiles}");
    assert!(exists(&root, "usr/lib/sysimage/dpkg/status"));

    // Hygiene.
    assert_eq!(contents(&root, "usr/etc/machine-id"), b"");
    let ssh = if exists(&root, "usr/etc/ssh") {
        children(&root, "usr/etc/ssh")
    } else {
        vec![]
    };
    assert!(!ssh.iter().any(|n| n.starts_with("ssh_host_")), "{ssh:?}");
    assert!(file_type(&root, "usr/etc/resolv.conf") != gio::FileType::Regular);
    assert!(exists(&root, "usr/bin/kiln"));
    // No SELinux config: libostree would try to rebuild a policy when it finalizes a
    // staged deployment, fail, and boot the old deployment again.
    assert!(!exists(&root, "usr/etc/selinux/config"));

    // Metadata.
    let c = kiln::repo::read_commit(&repo, &f.commit).unwrap();
    assert_eq!(
        c.metadata.get("ostree.bootable"),
        Some(&serde_json::Value::Bool(true))
    );
    assert_eq!(c.meta_str("ostree.linux"), Some(k.as_str()));
    let pkgs = c.meta_list(keys::PACKAGES);
    let mut sorted = pkgs.clone();
    sorted.sort();
    assert_eq!(pkgs, sorted);
    for p in ["systemd", "dracut", "ostree-boot"] {
        assert!(
            pkgs.iter().any(|x| x.starts_with(&format!("{p}="))),
            "{p} not in {pkgs:?}"
        );
    }
    assert_eq!(c.meta_str(keys::INPUT_HASH).map(str::len), Some(64));
    assert_eq!(
        c.meta_str(keys::KILN_VERSION),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let recipe: serde_json::Value =
        serde_json::from_str(c.meta_str(keys::RECIPE).unwrap()).unwrap();
    assert_eq!(recipe["ref"].as_str(), Some(f.ref_.as_str()));
    let epoch = c
        .metadata
        .get(keys::SOURCE_DATE_EPOCH)
        .and_then(|v| v.as_u64())
        .unwrap();
    assert_eq!(c.timestamp, epoch);
    let mirror = c.meta_list(kiln::compose::MIRROR_STATE_KEY);
    assert!(
        !mirror.is_empty() && mirror.iter().all(|m| m.split(' ').count() == 3),
        "{mirror:?}"
    );
    let version = c.version.clone().unwrap();
    assert!(!version.contains('{'), "{version}");
    // No build paths anywhere in the metadata.
    let md = serde_json::to_string(&c.metadata).unwrap();
    assert!(
        !md.contains("/build/cache") && !md.contains("kiln-compose-"),
        "{md}"
    );
}

#[test]
fn unchanged_recipe_is_skipped() {
    let f = common::base_commit();
    let _l = common::lock(&common::fixture_dir().join("lock"));
    let t = std::time::Instant::now();
    let v = common::compose(&f.recipe, &f.repo, &f.cache_dir, &[]);
    assert_eq!(v["skipped"], serde_json::Value::Bool(true), "{v}");
    assert_eq!(v["commit"].as_str(), Some(f.commit.as_str()));
    eprintln!("no-change compose: {:.2}s", t.elapsed().as_secs_f64());
}

fn copy_tree(src: &Path, dst: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn the_tree_holds_the_stripped_kiln_the_input_hash_covers() {
    // The tree's usr/bin/kiln is exactly `strip --strip-debug` of the composing binary,
    // on every host (strip is required, not used when present), and those bytes are what
    // the input hash covers.
    let f = common::base_commit();
    let repo = kiln::repo::open(&f.repo).unwrap();
    let root = root_of(&repo, &f.commit);
    let installed = contents(&root, "usr/bin/kiln");
    let scratch = tempfile::tempdir().unwrap();
    let want =
        kiln::compose::pipeline::tree_kiln_binary(&common::kiln_bin(), scratch.path(), "strip")
            .unwrap();
    assert!(
        installed == want,
        "usr/bin/kiln is not the stripped kiln binary"
    );
    let full = std::fs::metadata(common::kiln_bin()).unwrap().len();
    assert!((installed.len() as u64) < full);
}

#[test]
fn compose_without_strip_fails_before_bootstrapping() {
    // A PATH with every host tool but strip.
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "strip" || bin.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
        }
    }
    let repo = tmp.path().join("repo");
    let cache = tmp.path().join("cache");
    let out = std::process::Command::new(common::kiln_bin())
        .arg("compose")
        .arg(common::base_recipe())
        .arg("--repo")
        .arg(&repo)
        .arg("--cache-dir")
        .arg(&cache)
        .env("PATH", &bin)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("binutils is required"), "{stderr}");
    assert!(!stderr.contains("bootstrap"), "{stderr}");
    assert!(
        !cache.join("work").exists() || std::fs::read_dir(cache.join("work")).unwrap().count() == 0
    );
}

#[test]
fn a_changed_overlay_byte_makes_a_child_commit() {
    let f = common::base_commit();
    let root = common::project_root();
    let td = tempfile::Builder::new()
        .prefix("kiln-overlay-test-")
        .tempdir_in(common::fixture_dir())
        .unwrap();
    // The recipe and everything it refers to, moved elsewhere.
    let rel = f
        .recipe
        .strip_prefix(&root)
        .expect("recipe inside the project")
        .to_path_buf();
    for d in ["recipes", "overlays"] {
        if root.join(d).exists() {
            copy_tree(&root.join(d), &td.path().join(d));
        }
    }
    if !td.path().join(&rel).exists() {
        copy_tree(
            f.recipe.parent().unwrap(),
            &td.path().join(rel.parent().unwrap()),
        );
    }
    let recipe = td.path().join(&rel);
    // A copy of the fixture repo, so the previous commit is there.
    let repo = td.path().join("repo");
    {
        let _l = common::lock(&common::fixture_dir().join("lock"));
        copy_tree(&f.repo, &repo);
    }
    // Moving the recipe does not count as a change.
    let v = common::compose(&recipe, &repo, &f.cache_dir, &[]);
    assert_eq!(
        v["skipped"],
        serde_json::Value::Bool(true),
        "relocated recipe recomposed: {v}"
    );

    // Touch one overlay file.
    let loaded = serde_json::from_str::<serde_json::Value>(
        kiln::repo::read_commit(&kiln::repo::open(&repo).unwrap(), &f.commit)
            .unwrap()
            .meta_str(keys::RECIPE)
            .unwrap(),
    )
    .unwrap();
    let overlay = loaded["overlays"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|o| o.as_str())
        .expect("the recipe has an overlay");
    let ov = recipe.parent().unwrap().join(overlay);
    let file = first_file(&ov).expect("a file in the overlay");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.push(b'\n');
    std::fs::write(&file, &bytes).unwrap();
    let in_tree = file
        .strip_prefix(&ov)
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let v = common::compose(&recipe, &repo, &f.cache_dir, &[]);
    assert_eq!(v["skipped"], serde_json::Value::Bool(false), "{v}");
    let new = v["commit"].as_str().unwrap();
    assert_ne!(new, f.commit);
    let r = kiln::repo::open(&repo).unwrap();
    let c = kiln::repo::read_commit(&r, new).unwrap();
    assert_eq!(c.parent.as_deref(), Some(f.commit.as_str()));
    let path = in_tree
        .strip_prefix("etc/")
        .map(|p| format!("usr/etc/{p}"))
        .unwrap_or(in_tree.clone());
    assert_eq!(contents(&root_of(&r, new), &path), bytes, "{path}");
    assert_eq!(
        kiln::repo::resolve(&r, &f.ref_).unwrap().as_deref(),
        Some(new)
    );
    eprintln!("overlay change compose: {v}");

    // A fragment adds a postprocess script (run in the tree, without network) and a
    // remove-files glob.
    let frag_dir = recipe.with_file_name(format!(
        "{}.d",
        recipe.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&frag_dir).unwrap();
    let script = r#"#!/bin/sh
set -e
mkdir -p /usr/share/kiln-test
ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')
[ "$ifaces" = "lo " ] || { echo "network visible: $ifaces" >&2; exit 1; }
echo "name=$KILN_RECIPE_NAME epoch=$SOURCE_DATE_EPOCH" > /usr/share/kiln-test/marker
touch /usr/share/kiln-test/remove-me
"#;
    std::fs::write(recipe.with_file_name("pp-test.sh"), script).unwrap();
    std::fs::write(
        frag_dir.join("50-test.toml"),
        "postprocess = [\"../pp-test.sh\"]\nremove-files = [\"usr/share/kiln-test/remove-*\"]\n",
    )
    .unwrap();
    let v3 = common::compose(&recipe, &repo, &f.cache_dir, &[]);
    assert_eq!(v3["skipped"], serde_json::Value::Bool(false), "{v3}");
    let third = v3["commit"].as_str().unwrap();
    let c3 = kiln::repo::read_commit(&r, third).unwrap();
    assert_eq!(c3.parent.as_deref(), Some(new));
    let epoch = c3
        .metadata
        .get(keys::SOURCE_DATE_EPOCH)
        .and_then(|e| e.as_u64())
        .unwrap();
    assert_eq!(c3.timestamp, epoch);
    let root3 = root_of(&r, third);
    assert_eq!(
        String::from_utf8(contents(&root3, "usr/share/kiln-test/marker")).unwrap(),
        format!("name=base epoch={epoch}\n")
    );
    assert!(!exists(&root3, "usr/share/kiln-test/remove-me"));
}

fn first_file(dir: &Path) -> Option<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    v.sort();
    for p in &v {
        let m = std::fs::symlink_metadata(p).ok()?;
        if m.is_file() && !p.starts_with(dir.join("var")) {
            return Some(p.clone());
        }
    }
    v.into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .map(|m| m.is_dir())
                .unwrap_or(false)
        })
        .find_map(|d| first_file(&d))
}
