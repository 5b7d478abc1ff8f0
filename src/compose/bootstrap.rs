//! Bootstrap: mmdebstrap builds the Debian root from the recipe's packages.
//!
//! - `--variant=minbase --mode=root` plus the recipe's packages; `exclude-packages` are
//!   passed as apt's `pkg-` ("not installed") and checked after the install.
//! - Caching follows mmdebstrap's documented recipe: `--skip=essential/unlink`, a setup
//!   hook that puts the cached `.deb`s into `/var/cache/apt/archives`, and a customize hook
//!   that brings every `.deb` apt downloaded back out. kiln hardlinks instead of copying
//!   (the work dir lives in the cache dir, so both are on one file system). apt's package
//!   lists are cached the same way, so a warm `apt-get update` only revalidates them.
//! - Daemons: in root mode mmdebstrap moves `/usr/sbin/policy-rc.d` aside and installs its
//!   own, which exits 101 (deny), and replaces `start-stop-daemon` with a stub for the whole
//!   install; both are restored afterwards. The tree is never booted here.
//! - `SOURCE_DATE_EPOCH` is passed through (mmdebstrap then clamps times and removes the
//!   logs and caches that make a root unreproducible).

use super::sources::AptSource;
use crate::cmd::Cmd;
use crate::recipe::Recipe;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where the bootstrap's caches live inside `--cache-dir`.
pub struct CacheDirs {
    pub debs: PathBuf,
    pub lists: PathBuf,
}

impl CacheDirs {
    pub fn new(cache_dir: &Path) -> Result<Self> {
        let c = CacheDirs {
            debs: cache_dir.join("debs"),
            lists: cache_dir.join("apt-lists"),
        };
        for d in [&c.debs, &c.lists] {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating cache directory {}", d.display()))?;
        }
        Ok(c)
    }
}

/// Copy-in (setup hook): hardlink, or copy across file systems.
const HOOK_IN: &str = r#"set -e
mkdir -p "$1/var/cache/apt/archives" "$1/var/lib/apt/lists"
for f in "$KILN_DEB_CACHE"/*.deb; do
  [ -e "$f" ] || continue
  ln "$f" "$1/var/cache/apt/archives/" 2>/dev/null || cp -p "$f" "$1/var/cache/apt/archives/"
done
for f in "$KILN_LISTS_CACHE"/*; do
  [ -f "$f" ] || continue
  cp -p "$f" "$1/var/lib/apt/lists/"
done
"#;

/// Copy-out (customize hook): every .deb not yet in the cache, and the fresh lists. Also
/// drops the build-only dpkg option file (force-unsafe-io) from the tree.
const HOOK_OUT: &str = r#"set -e
rm -f "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
for f in "$1"/var/cache/apt/archives/*.deb; do
  [ -e "$f" ] || continue
  n="$KILN_DEB_CACHE/${f##*/}"
  [ -e "$n" ] || ln "$f" "$n" 2>/dev/null || cp -p "$f" "$n"
done
rm -f "$KILN_LISTS_CACHE"/*
for f in "$1"/var/lib/apt/lists/*; do
  [ -f "$f" ] || continue
  case "${f##*/}" in lock) continue ;; esac
  cp -p "$f" "$KILN_LISTS_CACHE/"
done
"#;

/// Builds the root in `tree` (which must not exist yet). apt's lists stay in the tree
/// (`--skip=cleanup/apt/lists`) so the caller can read the InRelease files apt used; the
/// layout stage removes them with the rest of `/var`.
pub fn bootstrap(
    recipe: &Recipe,
    sources: &[AptSource],
    tree: &Path,
    cache: &CacheDirs,
    epoch: u64,
    work: &Path,
    log: &Path,
) -> Result<()> {
    // Named so: mmdebstrap copies it to the tree as `TREE_SOURCES`.
    let list = work.join("sources.list");
    let mut text = String::new();
    for s in sources {
        text.push_str(&s.line());
        text.push('\n');
    }
    std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;

    let mut include: Vec<String> = recipe.packages.clone();
    // apt reads `pkg-` as "must not be installed": apt fails when a wanted package needs
    // it, which names the conflict. The caller checks the result with dpkg-query as well.
    for x in &recipe.exclude_packages {
        include.push(format!("{x}-"));
    }
    // In a private mount namespace: the /proc, /sys and /dev mounts mmdebstrap makes in the
    // new root die with it even when it is killed, so no later removal of the root can
    // walk into the host's /proc or /dev.
    let mut c = Cmd::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        .args([
            "--variant=minbase",
            "--mode=root",
            "--format=directory",
            "--skip=essential/unlink",
            "--skip=cleanup/apt/lists",
            // No fsync per unpacked file: the tree is committed or thrown away.
            "--dpkgopt=force-unsafe-io",
        ])
        .arg(format!("--components={}", recipe.components.join(",")))
        .arg(format!("--setup-hook={HOOK_IN}"))
        .arg(format!("--customize-hook={HOOK_OUT}"))
        .env("KILN_DEB_CACHE", &cache.debs)
        .env("KILN_LISTS_CACHE", &cache.lists)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        // Debian's kernel hook would build an initramfs in /boot that the layout drops;
        // kiln builds its own after the overlays.
        .env("INITRD", "No")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("TMPDIR");
    if !include.is_empty() {
        c = c.arg(format!("--include={}", include.join(",")));
    }
    c = c.arg(&recipe.suite).arg(tree).arg(&list);
    c.run_logged(log)
        .context("bootstrapping the root with mmdebstrap")?;
    write_tree_sources(tree, sources, false)
}

/// The tree's apt sources ([`TREE_SOURCES`]) as the recipe means it: keyrings named by their
/// copies in the tree (`/etc/apt/keyrings/kiln-SHA.gpg`, written here) and `file:` URIs
/// as written, not the build host's keyring paths and `copy:` URIs apt used during the
/// build. When those are the same (the Debian archive alone, over http), the file stays
/// as mmdebstrap wrote it. Both ways of building a root end with this, so the file and
/// the keyrings depend only on the sources.
/// `always`: also when they are the same (a root made from one built with other
/// sources, whose file and keyrings must go).
pub fn write_tree_sources(tree: &Path, sources: &[AptSource], always: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !always && sources.iter().all(|s| s.line() == s.tree_line()) {
        return Ok(());
    }
    let dir = tree.join(super::sources::TREE_KEYRINGS);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("kiln-") {
                super::overlay::remove_any(&e.path())?;
            }
        }
    } else {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    let mut text = String::new();
    for s in sources {
        text.push_str(&s.tree_line());
        text.push('\n');
        if let (Some((host, _)), Some(rel)) = (&s.keyring, s.tree_keyring()) {
            let bytes =
                std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            super::layout::write_file(&tree.join(rel), &bytes, 0o644)?;
        }
    }
    super::layout::write_file(&tree.join(TREE_SOURCES), text.as_bytes(), 0o644)
}

/// Where mmdebstrap writes the sources file it is given (`0000` and the file's name).
pub const TREE_SOURCES: &str = "etc/apt/sources.list.d/0000sources.list";

/// The key of a bootstrap result: everything mmdebstrap's output depends on — the package
/// selection, the apt sources and their `InRelease` hashes, the epoch when fixed, the
/// mmdebstrap version and kiln's hooks. Equal keys give the same root, so a compose whose
/// recipe changed only in overlays, scripts, units, kernel arguments or metadata (or whose
/// kiln binary changed) starts from a hardlink checkout of the cached root
/// ([`super::treecache`]) instead of re-installing.
pub fn key(
    recipe: &Recipe,
    sources: &[AptSource],
    mirror_state: &[String],
    fixed_epoch: Option<u64>,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mmdebstrap = Cmd::new("mmdebstrap")
        .arg("--version")
        .read()
        .context("asking mmdebstrap for its version")?;
    let v = serde_json::json!({
        "format": "kiln-bootstrap-2",
        "hooks": [HOOK_IN, HOOK_OUT],
        "mmdebstrap": mmdebstrap,
        "suite": recipe.suite,
        "components": recipe.components,
        "packages": recipe.packages,
        "exclude": recipe.exclude_packages,
        "sources": sources.iter().map(|s| s.key_line()).collect::<Vec<_>>(),
        "mirror": mirror_state,
        "epoch": fixed_epoch,
    });
    Ok(hex::encode(Sha256::digest(v.to_string().as_bytes())))
}

/// The part of [`key`] that does not depend on the package selection or the epoch:
/// suite, components, apt sources and their `InRelease` hashes, mmdebstrap's version and
/// kiln's hooks. Roots with the same base differ only in which packages were installed
/// (and the epoch), so one can be turned into another by installing and removing
/// packages ([`super::delta`]).
pub fn base_key(recipe: &Recipe, sources: &[AptSource], mirror_state: &[String]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mmdebstrap = Cmd::new("mmdebstrap")
        .arg("--version")
        .read()
        .context("asking mmdebstrap for its version")?;
    let v = serde_json::json!({
        "format": "kiln-bootstrap-base-2",
        "hooks": [HOOK_IN, HOOK_OUT],
        "mmdebstrap": mmdebstrap,
        "suite": recipe.suite,
        "components": recipe.components,
        "sources": sources.iter().map(|s| s.key_line()).collect::<Vec<_>>(),
        "mirror": mirror_state,
    });
    Ok(hex::encode(Sha256::digest(v.to_string().as_bytes())))
}

/// The part of [`base_key`] that does not depend on the recipe's extra repositories:
/// suite, components, the Debian archive's source lines and their `InRelease` hashes,
/// mmdebstrap's version and kiln's hooks. Roots of one family differ in the repositories'
/// lines, keyrings or content too; one is turned into another by updating apt's lists and
/// upgrading, where that is equal to a fresh bootstrap ([`super::delta`]).
pub fn family_key(
    recipe: &Recipe,
    sources: &[AptSource],
    mirror_state: &[String],
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mmdebstrap = Cmd::new("mmdebstrap")
        .arg("--version")
        .read()
        .context("asking mmdebstrap for its version")?;
    let debian: Vec<&AptSource> = sources.iter().filter(|s| !s.is_extra()).collect();
    let state: Vec<&String> = mirror_state
        .iter()
        .filter(|m| {
            debian
                .iter()
                .any(|s| m.starts_with(&format!("{} {} ", s.uri, s.suite)))
        })
        .collect();
    let v = serde_json::json!({
        "format": "kiln-bootstrap-family-1",
        "hooks": [HOOK_IN, HOOK_OUT],
        "mmdebstrap": mmdebstrap,
        "suite": recipe.suite,
        "components": recipe.components,
        "sources": debian.iter().map(|s| s.key_line()).collect::<Vec<_>>(),
        "mirror": state,
    });
    Ok(hex::encode(Sha256::digest(v.to_string().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            name: "t".into(),
            ref_: "t/r".into(),
            version: "1".into(),
            suite: "bookworm".into(),
            mirror: None,
            components: vec!["main".into()],
            packages: vec!["systemd".into()],
            exclude_packages: vec![],
            remove_files: vec![],
            overlays: vec![],
            postprocess: vec![],
            units: Default::default(),
            updates: Default::default(),
            health: Default::default(),
            kernel_args: vec![],
            dracut_modules: vec![],
            metadata: Default::default(),
            source_date_epoch: None,
            repositories: vec![],
            sources: vec![],
        }
    }

    #[test]
    fn key_follows_what_mmdebstrap_sees_only() {
        if !crate::cmd::have("mmdebstrap") {
            panic!("mmdebstrap is a host dependency (make deps)");
        }
        let src = vec![AptSource {
            uri: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
            ..Default::default()
        }];
        let m = vec!["http://deb.debian.org/debian bookworm aa".to_string()];
        let r = recipe();
        let k = key(&r, &src, &m, None).unwrap();
        let mut r2 = r.clone();
        r2.kernel_args = vec!["quiet".into()];
        r2.overlays = vec!["/x".into()];
        r2.metadata.insert("a".into(), "b".into());
        assert_eq!(k, key(&r2, &src, &m, None).unwrap());
        r2.packages.push("podman".into());
        assert_ne!(k, key(&r2, &src, &m, None).unwrap());
        let m2 = vec!["http://deb.debian.org/debian bookworm ab".to_string()];
        assert_ne!(k, key(&r, &src, &m2, None).unwrap());
        assert_ne!(k, key(&r, &src, &m, Some(1)).unwrap());
        let b = base_key(&r, &src, &m).unwrap();
        let mut r3 = r.clone();
        r3.packages.push("htop".into());
        assert_eq!(b, base_key(&r3, &src, &m).unwrap());
        assert_ne!(b, base_key(&r, &src, &m2).unwrap());
    }
}
