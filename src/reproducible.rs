//! `kiln verify-reproducible`: builds a recipe twice from scratch (separate cache dirs,
//! work dirs and repos), compares the commits and the images byte for byte, and on a
//! difference says where: the changed files of the two commits with a `diffoscope` report
//! on each, or the partitions (and, inside ext4, the files) where two images differ.
//!
//! What is compared and why (docs/reproducible.md):
//! - the commit checksum, which covers the tree, the metadata, the timestamp and the parent.
//!   Both builds go to fresh repos, so both have no parent;
//! - the content checksum (the tree alone), reported separately so that a metadata-only
//!   difference is told apart from a tree difference;
//! - the sha256 of every image format asked for.

use crate::cmd::Cmd;
use crate::image::{self, disk, Format};
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Image formats to build from each commit and compare (comma-separated; `none` for
    /// commits only).
    #[arg(long, default_value = "raw,qcow2", value_delimiter = ',')]
    pub format: Vec<String>,
    /// Disk size of the images.
    #[arg(long, default_value = "4G")]
    pub size: String,
    /// Where both builds happen (`a/` and `b/`, each with its own cache dir and repo).
    /// Default: a new directory under /var/tmp, removed at the end unless --keep. A given
    /// directory is kept, and cache dirs already in it are used as they are.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (repos, images, diffoscope reports).
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One of the two builds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Build {
    pub commit: String,
    pub content_checksum: String,
    pub version: String,
    pub epoch: u64,
    /// sha256 per image format.
    pub images: std::collections::BTreeMap<String, String>,
    pub compose_seconds: f64,
    pub image_seconds: f64,
}

/// The verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub reproducible: bool,
    pub a: Build,
    pub b: Build,
    /// Human-readable differences (files, metadata keys, partitions).
    pub differences: Vec<String>,
    /// diffoscope's text report, when something differed.
    pub report: Option<PathBuf>,
    pub work_dir: PathBuf,
}

/// Options for [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub recipe: PathBuf,
    pub formats: Vec<Format>,
    pub size: u64,
    pub work_dir: PathBuf,
    pub quiet: bool,
}

fn parse_formats(v: &[String]) -> Result<Vec<Format>> {
    let mut out = Vec::new();
    for f in v {
        match f.trim() {
            "raw" => out.push(Format::Raw),
            "qcow2" => out.push(Format::Qcow2),
            "none" | "" => {}
            other => {
                return Err(crate::error::InputError::new(
                    "command line",
                    format!("unknown image format {other:?} (raw, qcow2 or none)"),
                )
                .key("--format")
                .into())
            }
        }
    }
    out.dedup();
    Ok(out)
}

/// `kiln verify-reproducible`: exit 0 when both builds are identical, 1 otherwise.
pub fn cmd_verify(a: VerifyArgs) -> Result<()> {
    let formats = parse_formats(&a.format)?;
    let size = disk::parse_size(&a.size).map_err(|e| {
        crate::error::InputError::new("command line", format!("{e:#}")).key("--size")
    })?;
    // Fail on a bad recipe before any work.
    crate::recipe::load(&a.recipe)?;
    let (work_dir, temp) = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = crate::cleanup::TempDir::new_in(Path::new("/var/tmp"), "kiln-verify-")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let v = verify(&VerifyOptions {
        recipe: a.recipe.clone(),
        formats,
        size,
        work_dir: work_dir.clone(),
        quiet: a.json,
    });
    let keep = a.keep || a.work_dir.is_some();
    if let Some(t) = temp {
        if keep {
            let _ = t.keep();
        } else {
            drop(t);
        }
    }
    let v = v?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("encoding JSON")?
        );
    } else {
        print_verdict(&v, keep);
    }
    if !v.reproducible {
        std::process::exit(1);
    }
    Ok(())
}

fn print_verdict(v: &Verdict, kept: bool) {
    println!("commit   a {}  b {}", v.a.commit, v.b.commit);
    println!(
        "content  a {}  b {}",
        v.a.content_checksum, v.b.content_checksum
    );
    for (f, sa) in &v.a.images {
        let sb = v.b.images.get(f).map(String::as_str).unwrap_or("-");
        println!("{f:<8} a {sa}  b {sb}");
    }
    if v.reproducible {
        println!("reproducible: both builds are bit-identical");
    } else {
        println!("NOT reproducible:");
        for d in &v.differences {
            println!("  {d}");
        }
        if let Some(r) = &v.report {
            println!("diffoscope report: {}", r.display());
        }
    }
    if kept {
        println!("work dir kept: {}", v.work_dir.display());
    }
}

/// Removes a work dir with repos and image sysroots (clears immutable flags first).
fn remove_work(dir: &Path) {
    if let Err(e) = crate::cleanup::remove_tree(dir) {
        eprintln!("kiln: warning: {e:#}");
    }
}

/// Builds twice and compares. Never exits the process.
pub fn verify(o: &VerifyOptions) -> Result<Verdict> {
    let recipe = crate::recipe::load(&o.recipe)?;
    let mut builds = Vec::new();
    for side in ["a", "b"] {
        builds.push(
            build_once(&recipe, o, side).with_context(|| format!("build {side:?} of the two"))?,
        );
    }
    let (a, b) = (builds[0].clone(), builds[1].clone());
    let mut differences = Vec::new();
    let mut report = None;
    if a.commit != b.commit {
        let (d, r) = explain_commits(o, &a, &b)?;
        differences.extend(d);
        report = r;
    }
    for f in &o.formats {
        let n = f.name();
        if a.images.get(n) != b.images.get(n) {
            differences.push(format!(
                "{n} image: sha256 {} vs {}",
                a.images[n], b.images[n]
            ));
            if a.commit == b.commit {
                differences.extend(explain_images(o, *f)?);
            }
        }
    }
    Ok(Verdict {
        reproducible: differences.is_empty(),
        a,
        b,
        differences,
        report,
        work_dir: o.work_dir.clone(),
    })
}

fn side_dir(o: &VerifyOptions, side: &str) -> PathBuf {
    o.work_dir.join(side)
}

fn build_once(recipe: &crate::recipe::Recipe, o: &VerifyOptions, side: &str) -> Result<Build> {
    let dir = side_dir(o, side);
    let repo = dir.join("repo");
    // A fresh repo each time: no parent commit, no history for `{serial}`.
    if repo.exists() {
        std::fs::remove_dir_all(&repo).with_context(|| format!("removing {}", repo.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = std::time::Instant::now();
    let out = crate::compose::compose(
        recipe,
        &crate::compose::ComposeOptions {
            repo: repo.clone(),
            repo_mode: crate::repo::RepoMode::BareUser,
            cache_dir: dir.join("cache"),
            kiln_binary: None,
            keep_tree: None,
            apt_root: PathBuf::from("/"),
            quiet: o.quiet,
        },
    )?;
    let compose_seconds = t.elapsed().as_secs_f64();
    let r = crate::repo::open(&repo)?;
    let info = crate::repo::read_commit(&r, &out.commit)?;
    let content_checksum = content_checksum(&repo, &out.commit)?;
    drop(r);
    let t = std::time::Instant::now();
    let mut images = std::collections::BTreeMap::new();
    for f in &o.formats {
        let mut io = image::ImageOptions::new(
            &repo,
            out.commit.clone(),
            dir.join(format!("disk.{}", f.name())),
        );
        io.format = *f;
        io.size = o.size;
        let mut p = Progress::new(o.quiet);
        let res = image::build(&io, &mut p)
            .with_context(|| format!("building the {} image", f.name()))?;
        images.insert(f.name().to_string(), res.sha256);
    }
    Ok(Build {
        commit: out.commit,
        content_checksum,
        version: out.version,
        epoch: info.timestamp,
        images,
        compose_seconds,
        image_seconds: t.elapsed().as_secs_f64(),
    })
}

/// libostree's content checksum of a commit: its root tree and root directory metadata.
pub fn content_checksum(repo: &Path, commit: &str) -> Result<String> {
    let r = crate::repo::open(repo)?;
    let (v, _) = r
        .load_commit(commit)
        .with_context(|| format!("loading commit {commit}"))?;
    ostree::commit_get_content_checksum(&v)
        .map(|s| s.to_string())
        .ok_or_else(|| anyhow!("commit {commit} has no content checksum"))
}

/// The metadata of a commit as sorted `key value` lines, for a diff.
fn metadata_text(repo: &Path, commit: &str) -> Result<String> {
    let r = crate::repo::open(repo)?;
    let info = crate::repo::read_commit(&r, commit)?;
    let mut s = format!(
        "timestamp {}\nparent {}\nsubject {}\n",
        info.timestamp,
        info.parent.as_deref().unwrap_or("none"),
        info.subject
    );
    let mut keys: Vec<(&String, &serde_json::Value)> = info.metadata.iter().collect();
    keys.sort_by(|x, y| x.0.cmp(y.0));
    for (k, v) in keys {
        s.push_str(&format!("{k} {v}\n"));
    }
    Ok(s)
}

/// Where two commits differ: metadata keys, changed files (`ostree diff` after pulling b's
/// commit into a's repo) and a diffoscope report over the changed files.
fn explain_commits(
    o: &VerifyOptions,
    a: &Build,
    b: &Build,
) -> Result<(Vec<String>, Option<PathBuf>)> {
    let ra = side_dir(o, "a").join("repo");
    let rb = side_dir(o, "b").join("repo");
    let mut diffs = Vec::new();
    let ma = metadata_text(&ra, &a.commit)?;
    let mb = metadata_text(&rb, &b.commit)?;
    let cmp = o.work_dir.join("compare");
    if cmp.exists() {
        remove_work(&cmp);
    }
    std::fs::create_dir_all(cmp.join("a")).context("creating the compare dir")?;
    std::fs::create_dir_all(cmp.join("b")).context("creating the compare dir")?;
    std::fs::write(cmp.join("a/commit-metadata.txt"), &ma).context("writing metadata")?;
    std::fs::write(cmp.join("b/commit-metadata.txt"), &mb).context("writing metadata")?;
    let la: std::collections::BTreeSet<&str> = ma.lines().collect();
    let lb: std::collections::BTreeSet<&str> = mb.lines().collect();
    for l in la.symmetric_difference(&lb) {
        let key = l.split(' ').next().unwrap_or(l);
        let d = format!("commit metadata: {key}");
        if !diffs.contains(&d) {
            diffs.push(d);
        }
    }
    let mut files = Vec::new();
    if a.content_checksum != b.content_checksum {
        Cmd::new("ostree")
            .arg(format!("--repo={}", ra.display()))
            .arg("pull-local")
            .arg(&rb)
            .arg(&b.commit)
            .run()
            .context("pulling build b's commit into build a's repo to compare")?;
        let out = Cmd::new("ostree")
            .arg(format!("--repo={}", ra.display()))
            .arg("diff")
            .arg(&a.commit)
            .arg(&b.commit)
            .read()
            .context("listing the files that differ between the two commits")?;
        for line in out.lines() {
            let mut it = line.split_whitespace();
            let (Some(kind), Some(path)) = (it.next(), it.next()) else {
                continue;
            };
            diffs.push(format!("file {path} ({})", describe(kind)));
            files.push((kind.to_string(), path.to_string()));
        }
    }
    // The changed files of both commits, side by side, for diffoscope.
    for (_, path) in files.iter().filter(|(k, _)| k == "M").take(50) {
        for (side, repo, commit) in [("a", &ra, &a.commit), ("b", &ra, &b.commit)] {
            let dst = cmp
                .join(side)
                .join("tree")
                .join(path.trim_start_matches('/'));
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            }
            let data = Cmd::new("ostree")
                .arg(format!("--repo={}", repo.display()))
                .arg("cat")
                .arg(commit)
                .arg(path)
                .run();
            let bytes = match data {
                Ok(out) => out.stdout,
                Err(_) => b"(not a regular file)\n".to_vec(),
            };
            std::fs::write(&dst, bytes).with_context(|| format!("writing {}", dst.display()))?;
        }
    }
    let report = run_diffoscope(
        &cmp.join("a"),
        &cmp.join("b"),
        &o.work_dir.join("diffoscope.txt"),
    )?;
    Ok((diffs, report))
}

fn describe(kind: &str) -> &'static str {
    match kind {
        "M" => "content or mode changed",
        "A" => "only in the second build",
        "D" => "only in the first build",
        _ => "changed",
    }
}

/// Runs diffoscope on two directories; its text report goes to `out`. `None` when
/// diffoscope is not installed (the differences found by kiln are still reported).
pub fn run_diffoscope(a: &Path, b: &Path, out: &Path) -> Result<Option<PathBuf>> {
    if !crate::cmd::have("diffoscope") {
        eprintln!(
            "kiln: diffoscope is not installed (package diffoscope-minimal): no detailed report"
        );
        return Ok(None);
    }
    // diffoscope exits 1 when the inputs differ, which is expected here. With `--text
    // FILE` it prints nothing on stdout.
    let status = Cmd::new("diffoscope")
        .args([
            "--no-progress",
            "--exclude-directory-metadata=yes",
            "--text",
        ])
        .arg(out)
        .arg(a)
        .arg(b)
        .run_inherit()?;
    match status.code() {
        Some(0) | Some(1) => Ok(Some(out.to_path_buf())),
        _ => bail!("diffoscope failed ({status}); see its messages above"),
    }
}

/// Where two images of one commit differ: which partitions, the first differing offset
/// in each, and for ext4 partitions the file owning that block.
fn explain_images(o: &VerifyOptions, f: Format) -> Result<Vec<String>> {
    let ia = side_dir(o, "a").join(format!("disk.{}", f.name()));
    let ib = side_dir(o, "b").join(format!("disk.{}", f.name()));
    let (ra, rb) = match f {
        Format::Raw => (ia, ib),
        Format::Vmdk | Format::Vhd | Format::Gce | Format::Ova => {
            bail!(
                "comparing {} images is not supported (compare raw or qcow2)",
                f.name()
            )
        }
        Format::Qcow2 => {
            // Compare the disks the two containers hold.
            let mut v = Vec::new();
            for (src, dst) in [(&ia, "a"), (&ib, "b")] {
                let out = o.work_dir.join("compare").join(format!("{dst}.raw"));
                std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))
                    .context("creating the compare dir")?;
                Cmd::new("qemu-img")
                    .args(["convert", "-f", "qcow2", "-O", "raw"])
                    .arg(src)
                    .arg(&out)
                    .run()
                    .with_context(|| format!("converting {} to raw", src.display()))?;
                v.push(out);
            }
            if files_equal(&v[0], &v[1])? {
                return Ok(vec![
                    "qcow2: the disks inside are identical; the qcow2 container differs \
                     (cluster order or header)"
                        .into(),
                ]);
            }
            (v[0].clone(), v[1].clone())
        }
        Format::Iso | Format::Pxe => {
            return Ok(vec![format!(
                "{}: live media are not compared partition by partition",
                f.name()
            )])
        }
    };
    let layout = disk::Layout::for_size(o.size)?;
    let mut out = Vec::new();
    let parts = [
        (
            "GPT and BIOS boot area",
            disk::Extent {
                offset: 0,
                size: layout.esp.offset,
            },
            false,
        ),
        ("ESP", layout.esp, false),
        ("boot (ext4)", layout.boot, true),
        ("root (ext4)", layout.root, true),
        (
            "GPT backup",
            disk::Extent {
                offset: layout.root.offset + layout.root.size,
                size: layout.disk_size - (layout.root.offset + layout.root.size),
            },
            false,
        ),
    ];
    for (name, ext, is_ext4) in parts {
        if let Some(off) = first_difference(&ra, &rb, ext.offset, ext.size)? {
            let mut d = format!(
                "{} image: {name} differs, first at byte {off} of it",
                f.name()
            );
            if is_ext4 {
                if let Some(file) = ext4_owner(&ra, &ext, off) {
                    d.push_str(&format!(" ({file})"));
                }
            }
            out.push(d);
        }
    }
    Ok(out)
}

fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    Ok(crate::image::manifest::sha256_file(a)? == crate::image::manifest::sha256_file(b)?)
}

/// The first offset (relative to `offset`) in `[offset, offset+len)` where `a` and `b`
/// differ.
fn first_difference(a: &Path, b: &Path, offset: u64, len: u64) -> Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let mut fa = std::fs::File::open(a).with_context(|| format!("opening {}", a.display()))?;
    let mut fb = std::fs::File::open(b).with_context(|| format!("opening {}", b.display()))?;
    fa.seek(SeekFrom::Start(offset))?;
    fb.seek(SeekFrom::Start(offset))?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(ba.len());
        let na = read_full(&mut fa, &mut ba[..n])?;
        let nb = read_full(&mut fb, &mut bb[..n])?;
        if na != nb || ba[..na] != bb[..nb] {
            let i = ba[..na.min(nb)]
                .iter()
                .zip(&bb[..na.min(nb)])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Ok(Some(pos + i as u64));
        }
        if na == 0 {
            break;
        }
        pos += n as u64;
    }
    Ok(None)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..]).context("reading an image")?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// The path of the file (or "filesystem metadata") owning the block at byte `off` of the
/// ext4 filesystem in `ext` of `disk`.
fn ext4_owner(disk: &Path, ext: &disk::Extent, off: u64) -> Option<String> {
    let dir = tempfile::tempdir_in(disk.parent()?).ok()?;
    let fs = dir.path().join("fs.ext4");
    Cmd::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", fs.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", ext.offset / disk::MIB))
        .arg(format!("count={}", ext.size / disk::MIB))
        .run()
        .ok()?;
    let block = off / 4096;
    let icheck = Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("icheck {block}"))
        .arg(&fs)
        .read()
        .ok()?;
    let inode = icheck
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)?;
    if inode.parse::<u64>().is_err() {
        return Some(format!("block {block}: filesystem metadata"));
    }
    let ncheck = Cmd::new("debugfs")
        .arg("-R")
        .arg(format!("ncheck {inode}"))
        .arg(&fs)
        .read()
        .ok()?;
    let name = ncheck
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)?;
    Some(format!("block {block}: {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let f = parse_formats(&["raw".into(), "qcow2".into()]).unwrap();
        assert_eq!(f, vec![Format::Raw, Format::Qcow2]);
        assert!(parse_formats(&["none".into()]).unwrap().is_empty());
        assert!(parse_formats(&["iso".into()]).is_err());
    }

    #[test]
    fn first_difference_finds_offset() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut x = vec![0u8; 3 << 20];
        std::fs::write(&a, &x).unwrap();
        x[(2 << 20) + 17] = 1;
        std::fs::write(&b, &x).unwrap();
        assert_eq!(
            first_difference(&a, &b, 0, 3 << 20).unwrap(),
            Some((2 << 20) + 17)
        );
        assert_eq!(first_difference(&a, &b, 1 << 20, 1 << 20).unwrap(), None);
        assert_eq!(
            first_difference(&a, &b, 1 << 20, 2 << 20).unwrap(),
            Some((1 << 20) + 17)
        );
    }
}

/// Sets the access and modification times of everything under `root` (symlinks
/// themselves, not their targets) to `epoch`, so that `mkfs.ext4 -d`, which copies them,
/// writes the same inodes whatever the wall clock said when the tree was made. Immutable
/// directories (libostree's deployment roots) get their flag cleared for the change and
/// set again.
pub fn clamp_times(root: &Path, epoch: u64) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ts = libc::timespec {
        tv_sec: epoch as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let set = |p: &Path| -> std::io::Result<()> {
        let c = CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid NUL-terminated path and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // Children first, then their directory.
    let mut stack = vec![(root.to_path_buf(), false)];
    while let Some((p, visited)) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if md.is_dir() && !visited {
            stack.push((p.clone(), true));
            for e in std::fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
                let e = e.with_context(|| format!("listing {}", p.display()))?;
                stack.push((e.path(), false));
            }
            continue;
        }
        match set(&p) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && md.is_dir() => {
                Cmd::new("chattr").arg("-i").arg(&p).run()?;
                let r = set(&p);
                Cmd::new("chattr").arg("+i").arg(&p).run()?;
                r.with_context(|| format!("setting the times of {}", p.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("setting the times of {}", p.display()))
            }
        }
    }
    Ok(())
}

/// Rebuilds the tree `src` at `dst` (which must not exist) with every directory's entries
/// created in sorted order: regular files as hard links to the same inodes (no data is
/// copied, hard-link groups stay groups), directories and symlinks anew with the same
/// owner and mode. `mkfs.ext4 -d` of bookworm's e2fsprogs (1.47.0) copies entries in
/// `readdir` order, which on the host file system depends on the order files were created
/// (libostree's pulls and checkouts write in parallel); the rebuilt tree's order depends
/// only on the names. `src` and `dst` must be on one file system.
pub fn sorted_link_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    std::fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(src)
        .with_context(|| format!("listing {}", src.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", src.display()))?;
    names.sort();
    for n in names {
        let (s, d) = (src.join(&n), dst.join(&n));
        let m =
            std::fs::symlink_metadata(&s).with_context(|| format!("reading {}", s.display()))?;
        let ft = m.file_type();
        if ft.is_dir() {
            sorted_link_tree(&s, &d)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&s).with_context(|| format!("reading {}", s.display()))?;
            std::os::unix::fs::symlink(&target, &d)
                .with_context(|| format!("creating {}", d.display()))?;
            std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))
                .with_context(|| format!("chown {}", d.display()))?;
        } else {
            std::fs::hard_link(&s, &d)
                .with_context(|| format!("linking {} to {}", s.display(), d.display()))?;
        }
    }
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
        .with_context(|| format!("chown {}", dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dst.display()))?;
    Ok(())
}

/// Sets the change and access times of every inode in use of the ext4 image `fs` to
/// `epoch`: `mkfs.ext4 -d` (e2fsprogs 1.47.0) copies each source file's ctime, which no
/// system call can set, so it is the time the image's tree was made. Inodes in use are read from the
/// inode bitmaps (`dumpe2fs`), then changed with one `debugfs -w` script.
pub fn clamp_ext4_ctimes(fs: &Path, epoch: u64, log: &Path) -> Result<()> {
    let dump = Cmd::new("dumpe2fs")
        .arg(fs)
        .read()
        .with_context(|| format!("reading the inode bitmaps of {}", fs.display()))?;
    let used = used_inodes(&dump)?;
    let script = fs.with_extension("ctime.debugfs");
    let mut text = String::new();
    for i in used {
        // atime too: reading a hard-linked file's first name moved the atime mkfs copied
        // for its later names.
        text.push_str(&format!(
            "sif <{i}> ctime {epoch}\nsif <{i}> atime {epoch}\n"
        ));
    }
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    // With E2FSPROGS_FAKE_TIME, libext2fs keeps the superblock's write time as mkfs left
    // it instead of stamping the wall clock.
    let r = Cmd::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(fs)
        .run_logged(log)
        .with_context(|| format!("setting inode change times in {}", fs.display()));
    let _ = std::fs::remove_file(&script);
    r
}

/// Inode numbers in use according to `dumpe2fs` output (`Inodes per group`, then per
/// group `Free inodes: a-b, c`), without the reserved inodes 1 and 3–10.
fn used_inodes(dump: &str) -> Result<Vec<u64>> {
    let per_group: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Inodes per group:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("dumpe2fs printed no `Inodes per group`"))?;
    let mut used = Vec::new();
    let mut group: Option<u64> = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("Group ") {
            group = rest.split(':').next().and_then(|g| g.trim().parse().ok());
            continue;
        }
        let Some(free) = line.trim().strip_prefix("Free inodes:") else {
            continue;
        };
        let Some(g) = group else { continue };
        let (first, last) = (g * per_group + 1, (g + 1) * per_group);
        let mut free_set = Vec::new();
        for part in free.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u64 = a
                .trim()
                .parse()
                .with_context(|| format!("dumpe2fs: {line:?}"))?;
            let b: u64 = b
                .trim()
                .parse()
                .with_context(|| format!("dumpe2fs: {line:?}"))?;
            free_set.push((a, b));
        }
        let mut i = first;
        while i <= last {
            if let Some(&(_, b)) = free_set.iter().find(|(a, b)| *a <= i && i <= *b) {
                i = b + 1;
                continue;
            }
            if i == 2 || i >= 11 {
                used.push(i);
            }
            i += 1;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod ext4_tests {
    use super::*;

    #[test]
    fn used_inodes_from_bitmaps() {
        let dump = "Inodes per group:         16\n\
                    Group 0: (Blocks 0-32767) csum 0xae96\n  Free inodes: 14-16\n\
                    Group 1: (Blocks 32768-65535) [INODE_UNINIT]\n  Free inodes: 17-20, 22-32\n";
        assert_eq!(used_inodes(dump).unwrap(), vec![2, 11, 12, 13, 21]);
    }
}
