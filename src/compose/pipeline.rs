//! The compose pipeline: inputs → (skip?) → bootstrap → overlays → units → postprocess →
//! remove-files → kiln binary → initramfs → package list → layout → commit.

pub use super::cachelock::CacheLock;
use super::checks::check_no_build_paths;
pub use super::checks::installed_packages;
use super::inputs::Inputs;
use super::root::bootstrap_tree;
pub use super::root::{PackageDelta, Reused};
use super::{
    bootstrap, epoch as epochs, initramfs, layout, overlay, postprocess, sources,
    treecache::{Checkout, TreeCache},
};
use crate::progress::Progress;
use crate::recipe::Recipe;
use crate::repo::{self, keys, CommitOptions, MetaValue};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// Commit metadata key (`as`): `"URI SUITE sha256(InRelease)"` per apt source, sorted.
pub const MIRROR_STATE_KEY: &str = "kiln.mirror-state";

/// Commit metadata key (`s`): sha256 of the resolved recipe as recorded in `kiln.recipe`
/// (compact JSON), the recipe a rebuild must match.
pub const RECIPE_SHA256_KEY: &str = "kiln.recipe-sha256";

/// sha256 (hex) of the recipe JSON as stored in the commit.
pub fn recipe_sha256(rjson: &serde_json::Value) -> Result<String> {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(rjson).context("encoding the recipe")?;
    Ok(hex::encode(Sha256::digest(text.as_bytes())))
}

/// How to compose.
#[derive(Debug, Clone)]
pub struct ComposeOptions {
    pub repo: PathBuf,
    pub repo_mode: repo::RepoMode,
    pub cache_dir: PathBuf,
    /// The binary installed as `usr/bin/kiln` (default: the running executable).
    pub kiln_binary: Option<PathBuf>,
    /// Copy the final tree here before deleting it (benchmarks, debugging).
    pub keep_tree: Option<PathBuf>,
    /// Root of the host's apt configuration (`/`), for the default mirror.
    pub apt_root: PathBuf,
    pub quiet: bool,
}

/// What a compose did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComposeOutcome {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub commit: String,
    pub parent: Option<String>,
    pub version: String,
    pub skipped: bool,
    /// The bootstrap was copied from the cache instead of run.
    pub bootstrap_reused: bool,
    /// Per stage, whether its result came from the cache.
    pub reused: Reused,
    pub input_hash: String,
    /// Seconds per stage, in order.
    pub stages: serde_json::Value,
    pub objects_written: u64,
    pub content_bytes_written: u64,
    /// Where the chatty tools' output went.
    pub log: PathBuf,
}

/// The build epoch and whether it is fixed: `SOURCE_DATE_EPOCH` wins, then the recipe's
/// `source-date-epoch`; otherwise the current time, which [`compose`] replaces with the
/// newest changelog date of the installed packages ([`super::epoch`]).
pub fn build_epoch(recipe: &Recipe) -> Result<(u64, bool)> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        let e = v
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?;
        return Ok((e, true));
    }
    if let Some(e) = recipe.source_date_epoch {
        return Ok((e, true));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok((now, false))
}

/// The recipe as JSON for metadata and the input hash: paths relative to the main recipe
/// file's directory (no build-host paths), everything else as resolved.
pub fn recipe_json(recipe: &Recipe) -> Result<serde_json::Value> {
    let base = recipe
        .sources
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf);
    let rel = |p: &PathBuf| -> String {
        match &base {
            Some(b) => relative(p, b),
            None => p.display().to_string(),
        }
    };
    let mut v = serde_json::to_value(recipe).context("encoding the recipe as JSON")?;
    if let Some(o) = v.as_object_mut() {
        o.insert("overlays".into(), recipe.overlays.iter().map(rel).collect());
        o.insert(
            "postprocess".into(),
            recipe.postprocess.iter().map(rel).collect(),
        );
        o.insert("sources".into(), recipe.sources.iter().map(rel).collect());
        if let Some(repos) = o.get_mut("repositories").and_then(|r| r.as_array_mut()) {
            for (r, j) in recipe.repositories.iter().zip(repos) {
                if let (Some(k), Some(jo)) = (&r.signed_by, j.as_object_mut()) {
                    jo.insert("signed-by".into(), rel(k).into());
                }
            }
        }
    }
    Ok(v)
}

fn relative(p: &Path, base: &Path) -> String {
    let pc: Vec<_> = p.components().collect();
    let bc: Vec<_> = base.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// `YYYYMMDD` (UTC) of an epoch.
pub fn date_of(epoch: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (epoch / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// Expands `{date}` and `{serial}`: the serial is the smallest number giving a version no
/// commit of the ref's history already has.
pub fn expand_version(template: &str, epoch: u64, taken: &[String]) -> String {
    let dated = template.replace("{date}", &date_of(epoch));
    if !dated.contains("{serial}") {
        return dated;
    }
    (0u64..)
        .map(|n| dated.replace("{serial}", &n.to_string()))
        .find(|v| !taken.contains(v))
        .unwrap_or(dated)
}

/// A work directory that is removed on drop and on SIGINT/SIGTERM
/// ([`crate::cleanup::TempDir`]) — after making sure nothing is still mounted below it (a
/// killed mmdebstrap can leave its /proc, /sys or /dev mounts behind, and deleting through
/// those would touch the host).
pub struct WorkDir {
    dir: crate::cleanup::TempDir,
}

impl WorkDir {
    pub fn new(parent: &Path) -> Result<Self> {
        Ok(WorkDir {
            dir: crate::cleanup::TempDir::new_in(parent, "kiln-compose-")?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Composes `recipe` into `opts.repo`.
pub fn compose(recipe: &Recipe, opts: &ComposeOptions) -> Result<ComposeOutcome> {
    let mut p = Progress::new(opts.quiet);
    let mut inputs = gather_inputs(recipe, opts, &mut p)?;
    if let Some(unchanged) = unchanged(recipe, &inputs, &p) {
        return Ok(unchanged);
    }
    require_root()?;
    crate::cmd::require_tools(initramfs::HOST_TOOLS)?;
    // One compose at a time per cache dir (shared .deb cache, apt lists, logs).
    let _lock = CacheLock::acquire(&inputs.cache_dir.join("lock"))?;
    let log = inputs.log.clone();
    std::fs::write(&log, b"").with_context(|| format!("truncating {}", log.display()))?;
    let work = WorkDir::new(&inputs.cache_dir.join("work"))?;
    let tree = work.path().join("tree");
    let (tc, co, mut reuse) = bootstrap_tree(recipe, &mut inputs, work.path(), &tree, &mut p)?;
    let reused = reuse.bootstrap;
    reuse.files_linked = co.files();
    let r = build_tree(recipe, &inputs, &tree, work.path(), &co, &mut p, &mut reuse);
    let r = r.and_then(|(packages, kver)| {
        let cache = (&tc, &co);
        let bootable = kver.is_some();
        let (res, version) =
            commit_tree(recipe, &inputs, &tree, (packages, bootable), cache, &mut p)?;
        Ok((res, version, kver))
    });
    if r.is_err() && matches!(TreeCache::changed_in_place(&co, &tree), Ok(v) if v.is_empty()) {
        // The cache is intact: the next compose may use it (else the marker stays and
        // the next compose drops it).
        let _ = tc.release();
    }
    let (res, version, kver) = r?;
    reuse.files_not_rehashed = res.devino_hits;
    p.note(&format!(
        "committed {} {version} (kernel {}) as {}",
        recipe.ref_,
        kver.as_deref().unwrap_or("none"),
        res.checksum
    ));
    if let Some(dst) = &opts.keep_tree {
        keep_tree(&tree, dst, &log)?;
    }
    Ok(ComposeOutcome {
        ref_: recipe.ref_.clone(),
        commit: res.checksum,
        parent: res.parent,
        version,
        skipped: false,
        bootstrap_reused: reused,
        reused: reuse,
        input_hash: inputs.input_hash,
        stages: p.timings_json(),
        objects_written: res.content_objects_written + res.metadata_objects_written,
        content_bytes_written: res.content_bytes_written,
        log,
    })
}

/// The stages between bootstrap and commit on `tree`: overlays, postprocess, initramfs,
/// SBOM and layout. Returns the installed packages; notes the kernel in `reuse`.
fn build_tree(
    recipe: &Recipe,
    inputs: &Inputs,
    tree: &Path,
    work: &Path,
    co: &Checkout,
    p: &mut Progress,
    reuse: &mut Reused,
) -> Result<(Vec<String>, Option<String>)> {
    let log = inputs.log.clone();
    customize(recipe, inputs, tree, work, p)?;
    let kver = if has_kernel(tree) {
        let s = p.stage("initramfs");
        let built = initramfs::build(
            tree,
            &initramfs::Request {
                extra_modules: &recipe.dracut_modules,
                kernel_args: &recipe.kernel_args,
                epoch: inputs.epoch,
                cache_dir: Some(&inputs.cache_dir),
                work,
                log: &log,
            },
        )?;
        s.done();
        p.note(&built.note);
        reuse.initramfs = built.reused;
        reuse.initramfs_changed = built.changed;
        if !built.reused {
            reuse.why_not.insert("initramfs".into(), built.note.clone());
        }
        Some(built.kver)
    } else {
        p.note(
            "initramfs: no kernel package installed (no /boot/vmlinuz-*): no initramfs, \
             and the commit is not bootable",
        );
        reuse
            .why_not
            .insert("initramfs".into(), "no kernel in the tree".into());
        None
    };
    let s = p.stage("sbom");
    let subject = super::sbom::Subject {
        name: &recipe.name,
        ref_: &recipe.ref_,
        epoch: inputs.epoch,
        kiln_version: &inputs.kiln_version,
    };
    super::sbom::write_into(tree, &inputs.cache_dir.join("debs"), &subject)?;
    s.done();
    let packages = to_ostree_layout(tree, work, co, p)?;
    Ok((packages, kver))
}

/// Whether a kernel package is installed (`/boot/vmlinuz-*`). A recipe without one
/// composes a tree without kernel and initramfs (e.g. a container base), committed as
/// not bootable.
fn has_kernel(tree: &Path) -> bool {
    std::fs::read_dir(tree.join("boot"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false)
}

/// The "inputs" stage: cache dir, repo, apt sources and mirror state, the kiln binary, the
/// epoch when it is known, the input hash and the ref's history.
fn gather_inputs(recipe: &Recipe, opts: &ComposeOptions, p: &mut Progress) -> Result<Inputs> {
    let (mut epoch, fixed) = build_epoch(recipe)?;
    let kiln_bin = match &opts.kiln_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding the running kiln binary")?,
    };
    for w in recipe.warnings() {
        // Shown even when quiet: the build installs unverified packages.
        eprintln!("kiln: warning: {w}");
    }
    let s = p.stage("inputs");
    std::fs::create_dir_all(&opts.cache_dir)
        .with_context(|| format!("creating cache dir {}", opts.cache_dir.display()))?;
    let cache_dir = std::fs::canonicalize(&opts.cache_dir)
        .with_context(|| format!("resolving {}", opts.cache_dir.display()))?;
    let repo = repo::open_or_create(&opts.repo, opts.repo_mode)?;
    let srcs = sources::resolve_recipe(recipe, &opts.apt_root)?;
    let mirror = sources::mirror_state(&srcs)?;
    let rjson = recipe_json(recipe)?;
    // The bytes that go into the tree as usr/bin/kiln, hashed as they are installed.
    let kiln_tree_bin = tree_kiln_binary(&kiln_bin, &cache_dir, "strip")?;
    let kiln_sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&kiln_tree_bin))
    };
    // The epoch everything is built with, once known: fixed, or the changelog date
    // remembered for this package set and mirror state (else learned at bootstrap).
    let mut pinned = fixed.then_some(epoch);
    if pinned.is_none() {
        let ukey = bootstrap::key(recipe, &srcs, &mirror, None)?;
        pinned = epochs::remembered(&cache_dir, &ukey);
        if let Some(e) = pinned {
            epoch = e;
        }
    }
    let previous = repo::resolve(&repo, &recipe.ref_)?;
    let history = match &previous {
        Some(_) => repo::log(&repo, &recipe.ref_, usize::MAX)?,
        None => vec![],
    };
    let mut inputs = Inputs {
        cache_dir,
        repo,
        srcs,
        mirror,
        rjson,
        kiln_tree_bin,
        kiln_sha,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        epoch,
        pinned,
        input_hash: String::new(),
        previous,
        history,
        log: PathBuf::new(),
    };
    inputs.input_hash = inputs.hash(recipe, &inputs.mirror)?;
    s.done();
    let logs = inputs.cache_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    inputs.log = logs.join(format!("compose-{}.log", sanitize(&recipe.name)));
    Ok(inputs)
}

/// The outcome of a compose that has nothing to do: the ref's newest commit was built
/// from the same inputs.
fn unchanged(recipe: &Recipe, inputs: &Inputs, p: &Progress) -> Option<ComposeOutcome> {
    let prev = inputs.history.first()?;
    if prev.meta_str(keys::INPUT_HASH) != Some(inputs.input_hash.as_str()) {
        return None;
    }
    p.note(&format!(
        "nothing changed since {} ({}): recipe, overlays, scripts, kiln and mirror \
         state are the same; not composing",
        prev.checksum,
        prev.version.as_deref().unwrap_or("no version")
    ));
    Some(ComposeOutcome {
        ref_: recipe.ref_.clone(),
        commit: prev.checksum.clone(),
        parent: prev.parent.clone(),
        version: prev.version.clone().unwrap_or_default(),
        skipped: true,
        bootstrap_reused: false,
        reused: Reused {
            root: "unchanged",
            ..Default::default()
        },
        input_hash: inputs.input_hash.clone(),
        stages: p.timings_json(),
        objects_written: 0,
        content_bytes_written: 0,
        log: inputs.log.clone(),
    })
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "composing needs root (mmdebstrap --mode=root, chroot, mounts in a private \
             namespace); run kiln compose as root"
        );
    }
    Ok(())
}

/// The "overlays" and "postprocess" stages: the recipe's files, update policy, units,
/// scripts and removals, and kiln itself as usr/bin/kiln.
fn customize(
    recipe: &Recipe,
    inputs: &Inputs,
    tree: &Path,
    work: &Path,
    p: &mut Progress,
) -> Result<()> {
    let s = p.stage("overlays");
    overlay::apply(&recipe.overlays, tree)?;
    crate::updates::write_to_tree(&recipe.updates, tree)?;
    crate::updates::write_health_to_tree(&recipe.health, tree)?;
    s.done();

    let s = p.stage("postprocess");
    let log = &inputs.log;
    postprocess::apply_units(&recipe.units, tree, log)?;
    if !recipe.postprocess.is_empty() {
        // Scripts may write into any file: none of them may be the cache's.
        TreeCache::break_links(tree, work, log)?;
    }
    postprocess::run_scripts(&recipe.postprocess, tree, &recipe.name, inputs.epoch, log)?;
    postprocess::remove_files(&recipe.remove_files, tree)?;
    layout::write_file(&tree.join("usr/bin/kiln"), &inputs.kiln_tree_bin, 0o755)?;
    s.done();
    Ok(())
}

/// The "layout" stage: the package list read, then the tree converted to the OSTree
/// layout. Returns the installed packages.
fn to_ostree_layout(
    tree: &Path,
    work: &Path,
    co: &Checkout,
    p: &mut Progress,
) -> Result<Vec<String>> {
    let s = p.stage("layout");
    let packages = installed_packages(&tree.join("var/lib/dpkg"))?;
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    layout::convert(tree, host_name.as_deref())?;
    check_no_build_paths(tree, work, Some(co))?;
    s.done();
    Ok(packages)
}

/// The "commit" stage: the tree committed with its metadata. Returns the commit and the
/// version it got.
fn commit_tree(
    recipe: &Recipe,
    inputs: &Inputs,
    tree: &Path,
    (packages, bootable): (Vec<String>, bool),
    (tc, co): (&TreeCache, &Checkout),
    p: &mut Progress,
) -> Result<(repo::CommitResult, String)> {
    let s = p.stage("commit");
    let epoch = inputs.epoch;
    let taken: Vec<String> = inputs
        .history
        .iter()
        .filter_map(|c| c.version.clone())
        .collect();
    let version = expand_version(&recipe.version, epoch, &taken);
    let mut md = vec![
        (keys::VERSION.to_string(), MetaValue::Str(version.clone())),
        (
            keys::RECIPE.to_string(),
            MetaValue::Str(serde_json::to_string(&inputs.rjson).context("encoding the recipe")?),
        ),
        (
            RECIPE_SHA256_KEY.to_string(),
            MetaValue::Str(recipe_sha256(&inputs.rjson)?),
        ),
        (keys::PACKAGES.to_string(), MetaValue::StrList(packages)),
        (
            keys::INPUT_HASH.to_string(),
            MetaValue::Str(inputs.input_hash.clone()),
        ),
        (
            keys::KILN_VERSION.to_string(),
            MetaValue::Str(inputs.kiln_version.clone()),
        ),
        (
            keys::KARGS.to_string(),
            MetaValue::StrList(recipe.kernel_args.clone()),
        ),
        (keys::SOURCE_DATE_EPOCH.to_string(), MetaValue::U64(epoch)),
        (
            MIRROR_STATE_KEY.to_string(),
            MetaValue::StrList(inputs.mirror.clone()),
        ),
    ];
    for (k, v) in &recipe.metadata {
        md.push((
            format!("{}{k}", keys::USER_PREFIX),
            MetaValue::Str(v.clone()),
        ));
    }
    let opts = CommitOptions {
        ref_: recipe.ref_.clone(),
        parent: inputs.previous.clone(),
        subject: Some(format!("{} {version}", recipe.name)),
        timestamp: epoch,
        metadata: md,
        bootable,
    };
    let changed = TreeCache::changed_in_place(co, tree)?;
    let mut note = None;
    let res = if changed.is_empty() {
        let r = tc.commit(co, tree, &inputs.repo, &opts)?;
        tc.release()?;
        r
    } else {
        // The cache's objects hold those bytes now: commit by reading every file, and
        // drop the cache.
        note = Some(format!(
            "tree cache: {} cached file(s) were changed in place ({}); committing without \
             the cache and dropping it",
            changed.len(),
            changed[0].display()
        ));
        let r = repo::commit_dir_with(&inputs.repo, tree, &opts, inputs.previous.clone(), None)?;
        tc.discard()?;
        r
    };
    s.done();
    p.note(&note.unwrap_or_else(|| {
        format!(
            "commit: {} files unchanged since the checkout taken by checksum (not \
             re-hashed), {} new objects written",
            res.devino_hits, res.content_objects_written
        )
    }));
    Ok((res, version))
}

/// Copies the final tree to `dst` (`--keep-tree`).
/// A copy, not the tree itself: most of its files are hard links into the tree cache, and
/// whatever is done to the kept tree later must not reach the cache.
fn keep_tree(tree: &Path, dst: &Path, log: &Path) -> Result<()> {
    super::overlay::remove_any(dst)?;
    crate::cmd::Cmd::new("cp")
        .args(["-a", "--preserve=all"])
        .arg(tree)
        .arg(dst)
        .run_logged(log)
        .with_context(|| format!("copying the tree to {}", dst.display()))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The kiln binary as it goes into the tree (`usr/bin/kiln`): `bin` without its debug
/// information (`strip --strip-debug`, 53 MB → 7 MB). `strip` is required, never optional:
/// a tree that held the stripped binary on one host and the whole one on another would make
/// the same inputs give two commits. The input hash covers these bytes, so a different
/// `strip` that produced different bytes changes the hash instead of silently changing the
/// tree. `scratch` is a directory for the temporary copy.
pub fn tree_kiln_binary(bin: &Path, scratch: &Path, strip: &str) -> Result<Vec<u8>> {
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-bin-")
        .tempfile_in(scratch)
        .with_context(|| format!("creating a temporary file in {}", scratch.display()))?;
    crate::cmd::Cmd::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(bin)
        .run()
        .with_context(|| {
            format!(
                "stripping the kiln binary {} for the tree: `{strip}` from binutils is \
                 required (apt-get install binutils, or make deps)",
                bin.display()
            )
        })?;
    std::fs::read(tmp.path()).with_context(|| format!("reading {}", tmp.path().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_serials() {
        assert_eq!(date_of(0), "19700101");
        assert_eq!(date_of(1_700_000_000), "20231114");
        assert_eq!(date_of(951_782_400), "20000229");
        let taken = vec!["20231114.0".to_string(), "20231114.1".to_string()];
        assert_eq!(
            expand_version("{date}.{serial}", 1_700_000_000, &taken),
            "20231114.2"
        );
        assert_eq!(
            expand_version("{date}.{serial}", 1_700_000_000, &[]),
            "20231114.0"
        );
        assert_eq!(expand_version("1.0", 0, &taken), "1.0");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/a/b/overlays/x"), Path::new("/a/b/recipes")),
            "../overlays/x"
        );
        assert_eq!(relative(Path::new("/a/b/x.sh"), Path::new("/a/b")), "x.sh");
    }

    #[test]
    fn the_tree_gets_a_stripped_binary_the_same_every_time() {
        let d = tempfile::tempdir().unwrap();
        // This test binary carries debug information, like kiln's release build.
        let me = std::env::current_exe().unwrap();
        let a = tree_kiln_binary(&me, d.path(), "strip").unwrap();
        let b = tree_kiln_binary(&me, d.path(), "strip").unwrap();
        assert_eq!(a, b, "stripping is deterministic");
        let full = std::fs::metadata(&me).unwrap().len();
        assert!((a.len() as u64) < full, "{} of {full} bytes", a.len());
        assert!(a.starts_with(b"\x7fELF"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // Without strip the compose fails instead of putting a different binary in.
        let e = tree_kiln_binary(&me, d.path(), "kiln-test-no-such-strip").unwrap_err();
        assert!(format!("{e:#}").contains("binutils is required"), "{e:#}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn workdir_is_removed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p;
        {
            let w = WorkDir::new(d.path()).unwrap();
            p = w.path().to_path_buf();
            std::fs::write(p.join("f"), "x").unwrap();
        }
        assert!(!p.exists());
    }
}
