//! Reproducibility check (`kiln verify-reproducible`, [`cli`]): builds a recipe twice from scratch (separate cache dirs,
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

pub mod cli;

use crate::cmd::Cmd;
use crate::image::{self, disk, Format};
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

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
