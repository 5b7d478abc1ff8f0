//! `kiln publish`: turns the commits of a build repo into an `archive` repo that any static
//! web server or object store can serve to a fleet (docs/updating.md, "Serving updates").
//!
//! The order of the steps is what keeps clients safe while a publish runs (a client only
//! follows the refs named in the summary):
//!
//! 1. objects: new commits are pulled from the build repo (`pull-local`; objects already in
//!    the published repo are not copied again);
//! 2. commit signatures (GPG detached metadata) of every new commit;
//! 3. static deltas from the previous N commits of each ref (and from empty), generated in
//!    parallel — after the signatures, because a delta's superblock embeds the target
//!    commit's detached metadata;
//! 4. deltas of commits that retention drops are deleted, refs move, and the summary is
//!    regenerated and signed — the summary is the one file a client reads to find the
//!    refs, and it is written last, when everything it names is in place;
//! 5. objects of commits that retention drops are pruned.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The build repo holding the commits (any mode).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// The published repo (mode archive; created when missing).
    #[arg(long)]
    pub to: PathBuf,
    /// Refs to publish, repeatable; default: every ref of the build repo.
    #[arg(long = "ref")]
    pub refs: Vec<String>,
    /// GPG key to sign new commits and the summary with, repeatable (key id or fingerprint).
    #[arg(long = "gpg-sign")]
    pub gpg_sign: Vec<String>,
    /// GnuPG home holding the secret key (default: gpg's own, ~/.gnupg).
    #[arg(long)]
    pub gpg_homedir: Option<PathBuf>,
    /// Generate static deltas to each new commit from this many previous commits of its ref.
    #[arg(long, default_value_t = 1)]
    pub deltas_from_previous: usize,
    /// Also generate a delta from nothing (one-file download for fresh installs).
    #[arg(long)]
    pub delta_from_empty: bool,
    /// Keep only the newest K commits of each ref; older commits, their objects and their
    /// deltas are removed.
    #[arg(long)]
    pub keep: Option<usize>,
    /// Parallel delta generators (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// One JSON object on stdout describing what was added and pruned.
    #[arg(long)]
    pub json: bool,
}

/// What to publish and how.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub repo: PathBuf,
    pub to: PathBuf,
    pub refs: Vec<String>,
    pub gpg_sign: Vec<String>,
    pub gpg_homedir: Option<PathBuf>,
    pub deltas_from_previous: usize,
    pub delta_from_empty: bool,
    pub keep: Option<usize>,
    pub jobs: Option<usize>,
    /// Suppress the human progress lines.
    pub quiet: bool,
}

/// What a publish did (`kiln publish --json`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishReport {
    pub repo: String,
    pub refs: Vec<RefReport>,
    /// Commits signed in this run.
    pub signed: Vec<String>,
    pub deltas_added: Vec<DeltaReport>,
    /// Delta names (`FROM-TO`, or `TO` for a delta from empty) removed.
    pub deltas_pruned: Vec<String>,
    pub commits_pruned: Vec<String>,
    /// Loose objects added to the published repo.
    pub objects_added: u64,
    pub objects_pruned: u64,
    pub bytes_pruned: u64,
    pub summary_signed: bool,
    /// Seconds per step.
    pub timings: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefReport {
    #[serde(rename = "ref")]
    pub ref_: String,
    /// The ref's commit in the published repo before this run.
    pub from: Option<String>,
    pub to: String,
    pub version: Option<String>,
    /// Commits that became part of the published history in this run, newest first.
    pub commits_added: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaReport {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn cmd_publish(a: PublishArgs) -> Result<()> {
    let report = publish(&PublishOptions {
        repo: a.repo,
        to: a.to,
        refs: a.refs,
        gpg_sign: a.gpg_sign,
        gpg_homedir: a.gpg_homedir,
        deltas_from_previous: a.deltas_from_previous,
        delta_from_empty: a.delta_from_empty,
        keep: a.keep,
        jobs: a.jobs,
        quiet: false,
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serializing the report")?
        );
        return Ok(());
    }
    for r in &report.refs {
        match &r.from {
            Some(f) if f == &r.to => println!("{}: unchanged at {}", r.ref_, short(&r.to)),
            Some(f) => println!(
                "{}: {} -> {} ({}, {} new commit(s))",
                r.ref_,
                short(f),
                short(&r.to),
                r.version.as_deref().unwrap_or("no version"),
                r.commits_added.len()
            ),
            None => println!(
                "{}: new at {} ({})",
                r.ref_,
                short(&r.to),
                r.version.as_deref().unwrap_or("no version")
            ),
        }
    }
    for d in &report.deltas_added {
        println!("delta {}: {} bytes in {:.2}s", d.name, d.bytes, d.seconds);
    }
    println!(
        "{} objects added; {} commit(s), {} delta(s), {} objects ({} bytes) pruned; summary {}.",
        report.objects_added,
        report.commits_pruned.len(),
        report.deltas_pruned.len(),
        report.objects_pruned,
        report.bytes_pruned,
        if report.summary_signed {
            "signed"
        } else {
            "unsigned"
        }
    );
    Ok(())
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// libostree's "modified base64" of a checksum, as used in delta paths: standard base64
/// without padding, `/` replaced by `_`.
fn mbase64(checksum: &str) -> Result<String> {
    let bytes = hex::decode(checksum).with_context(|| format!("bad checksum {checksum:?}"))?;
    let v = glib::base64_encode(&bytes).to_string();
    Ok(v.trim_end_matches('=').replace('/', "_"))
}

/// The directory of a static delta inside a repo (`deltas/AB/CDE...-XYZ...`).
pub fn delta_dir(repo: &Path, from: Option<&str>, to: &str) -> Result<PathBuf> {
    let to64 = mbase64(to)?;
    let rel = match from {
        Some(f) => {
            let f64_ = mbase64(f)?;
            format!("{}/{}-{}", &f64_[..2], &f64_[2..], to64)
        }
        None => format!("{}/{}", &to64[..2], &to64[2..]),
    };
    Ok(repo.join("deltas").join(rel))
}

/// Splits a delta name as libostree lists it (`FROM-TO` or `TO`).
pub fn parse_delta_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once('-') {
        Some((f, t)) => (Some(f), t),
        None => (None, name),
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(md) = e.metadata() {
                n += if md.is_dir() {
                    dir_size(&e.path())
                } else {
                    md.len()
                };
            }
        }
    }
    n
}

/// Takes an exclusive lock on the published repo for the life of the returned file, so
/// two publishes to one directory do not interleave.
fn lock_publish_dir(to: &Path) -> Result<std::fs::File> {
    let p = to.join(".kiln-publish.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: flock on a valid open fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "kiln: waiting for another publish to {} to finish",
            to.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", p.display()));
        }
    }
    Ok(f)
}

#[cfg(test)]
fn has_commit(repo: &ostree::Repo, c: &str) -> Result<bool> {
    repo.has_object(ostree::ObjectType::Commit, c, gio::Cancellable::NONE)
        .with_context(|| format!("looking up commit {c}"))
}

/// The chain of `tip` and its parents that exist in `repo`, newest first, at most `max`.
fn chain(repo: &ostree::Repo, tip: &str, max: usize) -> Result<Vec<String>> {
    Ok(crate::repo::log(repo, tip, max)?
        .into_iter()
        .map(|c| c.checksum)
        .collect())
}

fn count_objects(repo: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(repo.join("objects")) {
        for e in rd.flatten() {
            if let Ok(sub) = std::fs::read_dir(e.path()) {
                n += sub.flatten().count() as u64;
            }
        }
    }
    n
}

fn gpg_homedir(opts: &PublishOptions) -> Result<Option<String>> {
    opts.gpg_homedir
        .as_ref()
        .map(|h| {
            h.to_str()
                .map(String::from)
                .ok_or_else(|| anyhow!("the GnuPG home {} is not UTF-8", h.display()))
        })
        .transpose()
}

/// Publishes the refs of `opts.repo` into the archive repo `opts.to`; see the module
/// documentation for the order of the steps.
pub fn publish(opts: &PublishOptions) -> Result<PublishReport> {
    if opts.keep == Some(0) {
        bail!("--keep 0 would remove every commit; keep at least 1");
    }
    if opts.gpg_sign.is_empty() && opts.gpg_homedir.is_some() {
        bail!("--gpg-homedir given without --gpg-sign KEYID");
    }
    let cancel = gio::Cancellable::NONE;
    let mut progress = crate::progress::Progress::new(opts.quiet);
    let src = crate::deploy::open_source_repo(&opts.repo)?;
    // Which refs and where they point in the build repo; fail before creating anything.
    let refs: Vec<String> = if opts.refs.is_empty() {
        let all = src
            .list_refs(None, cancel)
            .with_context(|| format!("listing the refs of {}", opts.repo.display()))?;
        let mut v: Vec<String> = all.into_keys().filter(|r| !r.contains(':')).collect();
        v.sort();
        if v.is_empty() {
            bail!("the repo {} has no refs to publish", opts.repo.display());
        }
        v
    } else {
        opts.refs.clone()
    };
    let mut tips = BTreeMap::new();
    for r in &refs {
        let c = crate::repo::resolve(&src, r)?.ok_or_else(|| {
            anyhow!(
                "no ref {r:?} in the repo {} (see `ostree refs --repo {}`)",
                opts.repo.display(),
                opts.repo.display()
            )
        })?;
        tips.insert(r.clone(), c);
    }
    let homedir = gpg_homedir(opts)?;
    if let Some(h) = &homedir {
        if !Path::new(h).is_dir() {
            bail!("the GnuPG home {h} does not exist");
        }
    }

    if let Some(parent) = opts.to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let dest = crate::repo::open_or_create(&opts.to, ostree::RepoMode::Archive)?;
    if dest.mode() != ostree::RepoMode::Archive {
        bail!(
            "{} is a {:?} repo; a published repo must be mode archive (served file by file \
             over HTTP)",
            opts.to.display(),
            dest.mode()
        );
    }
    let _lock = lock_publish_dir(&opts.to)?;
    let objects_before = count_objects(&opts.to);
    let keep = opts.keep.unwrap_or(usize::MAX);
    // History to copy: what the deltas start from, never more than retention keeps.
    let depth = opts.deltas_from_previous.min(keep - 1).min(1024);

    // 1. Objects.
    let stage = progress.stage("copying new objects");
    let abs = opts
        .repo
        .canonicalize()
        .with_context(|| format!("finding {}", opts.repo.display()))?;
    let mut before = BTreeMap::new();
    let mut new_commits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, tip) in &tips {
        let old = crate::repo::resolve(&dest, r)?;
        // The published history before this run: the old tip and its ancestors.
        let published: BTreeSet<String> = match &old {
            Some(o) => chain(&dest, o, usize::MAX)?.into_iter().collect(),
            None => BTreeSet::new(),
        };
        // Pulling is idempotent and completes a commit an interrupted publish left
        // partial; a ref already published at this commit needs nothing.
        if !published.contains(tip) {
            pull_local(&dest, &abs, r, tip, depth)?;
        }
        let added: Vec<String> = chain(&dest, tip, depth + 1)?
            .into_iter()
            .take_while(|c| !published.contains(c))
            .collect();
        before.insert(r.clone(), old);
        new_commits.insert(r.clone(), added);
    }
    stage.done();

    // 2. Commit signatures.
    let mut signed = Vec::new();
    if !opts.gpg_sign.is_empty() {
        let stage = progress.stage("signing commits");
        let all: BTreeSet<&String> = new_commits.values().flatten().collect();
        for c in all {
            for key in &opts.gpg_sign {
                match dest.sign_commit(c, key, homedir.as_deref(), cancel) {
                    Ok(()) => {}
                    // A re-run after an interrupted publish: keep the existing signature.
                    Err(e) if e.to_string().contains("already signed") => {}
                    Err(e) => {
                        return Err(anyhow!(e)).with_context(|| {
                            format!(
                                "signing commit {c} with GPG key {key}{}",
                                homedir
                                    .as_deref()
                                    .map(|h| format!(" (GnuPG home {h})"))
                                    .unwrap_or_default()
                            )
                        })
                    }
                }
            }
            signed.push(c.clone());
        }
        stage.done();
    }

    // Retention: what stays of each ref's history.
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for tip in tips.values() {
        let ch = chain(&dest, tip, usize::MAX)?;
        for (i, c) in ch.into_iter().enumerate() {
            if i < keep {
                kept.insert(c);
            } else {
                dropped.insert(c);
            }
        }
    }
    // Commits of the old tips that are no longer in any ref's kept history (a ref reset
    // to an unrelated commit) are dropped too when retention is asked for.
    if opts.keep.is_some() {
        for old in before.values().flatten() {
            for c in chain(&dest, old, usize::MAX)? {
                if !kept.contains(&c) {
                    dropped.insert(c);
                }
            }
        }
    }
    let dropped: BTreeSet<String> = dropped.difference(&kept).cloned().collect();

    // 3. Deltas.
    let existing: BTreeSet<String> = dest
        .list_static_delta_names(cancel)
        .context("listing static deltas")?
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    let mut jobs: VecDeque<(Option<String>, String)> = VecDeque::new();
    for tip in tips.values() {
        // Unchanged refs too: a delta asked for and missing is made.
        let froms = chain(&dest, tip, opts.deltas_from_previous + 1)?;
        for f in froms.into_iter().skip(1) {
            if !kept.contains(&f) {
                continue;
            }
            if !existing.contains(&format!("{f}-{tip}")) {
                jobs.push_back((Some(f), tip.clone()));
            }
        }
        if opts.delta_from_empty && !existing.contains(tip) {
            jobs.push_back((None, tip.clone()));
        }
    }
    let deltas_added = if jobs.is_empty() {
        Vec::new()
    } else {
        let stage = progress.stage(&format!("generating {} static delta(s)", jobs.len()));
        let d = generate_deltas(&opts.to, jobs, opts.jobs)?;
        stage.done();
        d
    };

    // 4. Refs and summary, after dropping the deltas of dropped commits.
    let stage = progress.stage("writing refs and summary");
    let mut deltas_pruned = Vec::new();
    let all_deltas = dest
        .list_static_delta_names(cancel)
        .context("listing static deltas")?;
    for name in all_deltas {
        let (from, to) = parse_delta_name(&name);
        let gone = dropped.contains(to) || from.map(|f| dropped.contains(f)).unwrap_or(false);
        if gone {
            let dir = delta_dir(&opts.to, from, to)?;
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing delta {}", dir.display()))?;
            deltas_pruned.push(name.to_string());
        }
    }
    for (r, tip) in &tips {
        dest.set_ref_immediate(None, r, Some(tip), cancel)
            .with_context(|| format!("setting ref {r} to {tip}"))?;
    }
    write_summary(&dest, &opts.gpg_sign, homedir.as_deref())?;
    stage.done();

    // 5. Objects of dropped commits.
    let (mut objects_pruned, mut bytes_pruned) = (0u64, 0u64);
    if opts.keep.is_some() && !dropped.is_empty() {
        let stage = progress.stage("pruning old commits");
        let (_total, pruned, freed) = dest
            .prune(
                ostree::RepoPruneFlags::REFS_ONLY,
                (keep - 1).min(i32::MAX as usize) as i32,
                cancel,
            )
            .context("pruning objects of dropped commits")?;
        objects_pruned = pruned.max(0) as u64;
        bytes_pruned = freed;
        stage.done();
    }

    let mut ref_reports = Vec::new();
    for (r, tip) in &tips {
        ref_reports.push(RefReport {
            ref_: r.clone(),
            from: before[r].clone(),
            to: tip.clone(),
            version: crate::repo::read_commit(&dest, tip)?.version,
            commits_added: new_commits[r].clone(),
        });
    }
    let objects_after = count_objects(&opts.to);
    Ok(PublishReport {
        repo: opts.to.display().to_string(),
        refs: ref_reports,
        signed,
        deltas_added,
        deltas_pruned,
        commits_pruned: dropped.into_iter().collect(),
        objects_added: (objects_after + objects_pruned).saturating_sub(objects_before),
        objects_pruned,
        bytes_pruned,
        summary_signed: !opts.gpg_sign.is_empty(),
        timings: progress.timings_json(),
    })
}

/// Copies `tip` and up to `depth` ancestors from the build repo (any mode) at `src`.
fn pull_local(dest: &ostree::Repo, src: &Path, r: &str, tip: &str, depth: usize) -> Result<()> {
    let pull = glib::VariantDict::new(None);
    pull.insert_value("refs", &vec![tip.to_string()].to_variant());
    pull.insert_value("depth", &(depth.min(i32::MAX as usize) as i32).to_variant());
    pull.insert_value("gpg-verify", &false.to_variant());
    pull.insert_value("gpg-verify-summary", &false.to_variant());
    crate::repo::on_own_main_context(|| {
        dest.pull_with_options(
            &format!("file://{}", src.display()),
            &pull.end(),
            None,
            gio::Cancellable::NONE,
        )
    })?
    .with_context(|| format!("copying {r} ({tip}) from {}", src.display()))
}

/// Regenerates the summary (refs, deltas) and signs it with every key.
fn write_summary(dest: &ostree::Repo, keys: &[String], homedir: Option<&str>) -> Result<()> {
    let cancel = gio::Cancellable::NONE;
    dest.regenerate_summary(None, cancel)
        .context("regenerating the summary")?;
    if !keys.is_empty() {
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        dest.add_gpg_signature_summary(&k, homedir, cancel)
            .with_context(|| format!("signing the summary with {}", keys.join(", ")))?;
    }
    Ok(())
}

/// Generates static deltas `(from, to)` in `repo`, up to `jobs` at once (default: one per
/// CPU), each thread with its own libostree repo object.
fn generate_deltas(
    repo: &Path,
    work: VecDeque<(Option<String>, String)>,
    jobs: Option<usize>,
) -> Result<Vec<DeltaReport>> {
    let n = jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, work.len().max(1));
    let queue = Mutex::new(work);
    let results: Mutex<Vec<Result<DeltaReport>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let r = match crate::repo::open(repo) {
                    Ok(r) => r,
                    Err(e) => {
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Err(e));
                        return;
                    }
                };
                loop {
                    let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some((from, to)) = job else { break };
                    let res = generate_one(&r, repo, from.as_deref(), &to);
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(res);
                }
            });
        }
    });
    let mut out = Vec::new();
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        out.push(r?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn generate_one(
    r: &ostree::Repo,
    path: &Path,
    from: Option<&str>,
    to: &str,
) -> Result<DeltaReport> {
    let start = Instant::now();
    // An explicit a{sv}: libostree 2022.7 crashes when params is NULL.
    let params = glib::VariantDict::new(None);
    params.insert_value("verbose", &false.to_variant());
    params.insert_value("bsdiff-enabled", &true.to_variant());
    r.static_delta_generate(
        ostree::StaticDeltaGenerateOpt::Major,
        from,
        to,
        None,
        Some(&params.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| match from {
        Some(f) => format!("generating the static delta {f} -> {to}"),
        None => format!("generating the static delta from empty to {to}"),
    })?;
    let dir = delta_dir(path, from, to)?;
    Ok(DeltaReport {
        name: match from {
            Some(f) => format!("{f}-{to}"),
            None => to.to_string(),
        },
        from: from.map(String::from),
        to: to.to_string(),
        bytes: dir_size(&dir),
        seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{CommitOptions, MetaValue};

    fn tree(dir: &Path, v: u32) {
        std::fs::create_dir_all(dir.join("usr/share/bulk")).unwrap();
        std::fs::create_dir_all(dir.join("usr/etc")).unwrap();
        for i in 0..50 {
            std::fs::write(
                dir.join(format!("usr/share/bulk/f{i}")),
                format!("{i}").repeat(2000),
            )
            .unwrap();
        }
        std::fs::write(dir.join("usr/bin-pkg"), format!("package v{v}").repeat(100)).unwrap();
    }

    fn commit(repo: &ostree::Repo, t: &Path, v: u32) -> String {
        tree(t, v);
        crate::repo::commit_dir(
            repo,
            t,
            &CommitOptions {
                ref_: "test/ref".into(),
                timestamp: 1_700_000_000 + u64::from(v),
                metadata: vec![("version".into(), MetaValue::Str(format!("{v}")))],
                ..Default::default()
            },
        )
        .unwrap()
        .checksum
    }

    #[test]
    fn incremental_publish_deltas_and_retention() {
        let td = tempfile::tempdir().unwrap();
        let build =
            crate::repo::open_or_create(&td.path().join("build"), ostree::RepoMode::BareUser)
                .unwrap();
        let to = td.path().join("pub");
        let t = td.path().join("tree");
        let opts = PublishOptions {
            repo: td.path().join("build"),
            to: to.clone(),
            deltas_from_previous: 2,
            keep: Some(2),
            quiet: true,
            ..Default::default()
        };
        let c1 = commit(&build, &t, 1);
        let r1 = publish(&opts).unwrap();
        assert_eq!(r1.refs[0].to, c1);
        assert_eq!(r1.refs[0].commits_added, vec![c1.clone()]);
        assert!(r1.deltas_added.is_empty());
        assert!(r1.objects_added > 50);

        let c2 = commit(&build, &t, 2);
        let r2 = publish(&opts).unwrap();
        assert_eq!(r2.refs[0].from.as_deref(), Some(c1.as_str()));
        assert_eq!(r2.refs[0].commits_added, vec![c2.clone()]);
        // Only the changed file, its dirtree, the root dirtree... were copied.
        assert!(r2.objects_added < 10, "{}", r2.objects_added);
        assert_eq!(r2.deltas_added.len(), 1);
        assert_eq!(r2.deltas_added[0].name, format!("{c1}-{c2}"));
        assert!(delta_dir(&to, Some(&c1), &c2)
            .unwrap()
            .join("superblock")
            .is_file());

        let c3 = commit(&build, &t, 3);
        let r3 = publish(&opts).unwrap();
        // keep 2: c1 goes, with the delta from it.
        assert_eq!(r3.commits_pruned, vec![c1.clone()]);
        assert_eq!(r3.deltas_pruned, vec![format!("{c1}-{c2}")]);
        let names: Vec<String> = r3.deltas_added.iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, vec![format!("{c2}-{c3}")]);
        let dest = crate::repo::open(&to).unwrap();
        assert!(!has_commit(&dest, &c1).unwrap());
        assert!(has_commit(&dest, &c2).unwrap());
        assert!(to.join("summary").is_file());
        // Nothing new: nothing added.
        let r4 = publish(&opts).unwrap();
        assert!(r4.refs[0].commits_added.is_empty());
        assert!(r4.deltas_added.is_empty());
        assert_eq!(r4.objects_added, 0);
    }

    #[test]
    fn several_deltas_in_parallel_and_from_empty() {
        let td = tempfile::tempdir().unwrap();
        let build =
            crate::repo::open_or_create(&td.path().join("build"), ostree::RepoMode::BareUser)
                .unwrap();
        let t = td.path().join("tree");
        let c1 = commit(&build, &t, 1);
        let c2 = commit(&build, &t, 2);
        let c3 = commit(&build, &t, 3);
        let to = td.path().join("pub");
        let r = publish(&PublishOptions {
            repo: td.path().join("build"),
            to: to.clone(),
            deltas_from_previous: 2,
            delta_from_empty: true,
            jobs: Some(3),
            quiet: true,
            ..Default::default()
        })
        .unwrap();
        // The first publish copies the tip and the 2 ancestors the deltas start from.
        assert_eq!(
            r.refs[0].commits_added,
            vec![c3.clone(), c2.clone(), c1.clone()]
        );
        let mut names: Vec<String> = r.deltas_added.iter().map(|d| d.name.clone()).collect();
        names.sort();
        let mut want = vec![format!("{c1}-{c3}"), format!("{c2}-{c3}"), c3.clone()];
        want.sort();
        assert_eq!(names, want);
        for d in &r.deltas_added {
            assert!(d.bytes > 0);
            assert!(delta_dir(&to, d.from.as_deref(), &d.to)
                .unwrap()
                .join("superblock")
                .is_file());
        }
    }

    #[test]
    fn bad_input_fails_before_writing() {
        let td = tempfile::tempdir().unwrap();
        let build =
            crate::repo::open_or_create(&td.path().join("build"), ostree::RepoMode::BareUser)
                .unwrap();
        commit(&build, &td.path().join("tree"), 1);
        let to = td.path().join("pub");
        let base = PublishOptions {
            repo: td.path().join("build"),
            to: to.clone(),
            quiet: true,
            ..Default::default()
        };
        let e = publish(&PublishOptions {
            refs: vec!["no/such/ref".into()],
            ..base.clone()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("no ref \"no/such/ref\""), "{e:#}");
        let e = publish(&PublishOptions {
            keep: Some(0),
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--keep 0"), "{e}");
        let e = publish(&PublishOptions {
            gpg_sign: vec!["nokey".into()],
            gpg_homedir: Some(td.path().join("nohome")),
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!to.exists(), "a failed publish created the target");
        // A target that is not an archive repo is refused.
        crate::repo::open_or_create(&to, ostree::RepoMode::BareUser).unwrap();
        let e = publish(&base).unwrap_err();
        assert!(e.to_string().contains("must be mode archive"), "{e}");
    }

    #[test]
    fn mbase64_matches_libostree_delta_names() {
        let c = "a".repeat(64);
        let b = mbase64(&c).unwrap();
        assert_eq!(b.len(), 43);
        assert!(!b.contains('/') && !b.contains('='));
    }
}
