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
//!
//! Files: [`cli`] (`kiln publish`), [`deltas`] (static deltas); this file runs the steps.

pub mod cli;
pub mod deltas;
pub mod oci;

pub use deltas::{delta_dir, parse_delta_name};

use anyhow::{anyhow, bail, Context, Result};
use deltas::generate_deltas;
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;

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
    let mut progress = crate::progress::Progress::new(opts.quiet);
    // Every check of the input comes before anything is created.
    let plan = plan(opts)?;
    let dest = open_published(&opts.to)?;
    let _lock = lock_publish_dir(&opts.to)?;
    let objects_before = count_objects(&opts.to);
    let copied = copy_objects(&dest, opts, &plan, &mut progress)?;
    let signed = sign_commits(&dest, opts, &plan, &copied, &mut progress)?;
    let retained = retention(&dest, opts, &plan, &copied)?;
    let deltas_added = make_deltas(&dest, opts, &plan, &retained, &mut progress)?;
    let deltas_pruned = write_refs_and_summary(&dest, opts, &plan, &retained, &mut progress)?;
    let (objects_pruned, bytes_pruned) = prune_dropped(&dest, opts, &retained, &mut progress)?;
    let objects_after = count_objects(&opts.to);
    Ok(PublishReport {
        repo: opts.to.display().to_string(),
        refs: ref_reports(&dest, &plan, copied)?,
        signed,
        deltas_added,
        deltas_pruned,
        commits_pruned: retained.dropped.into_iter().collect(),
        objects_added: (objects_after + objects_pruned).saturating_sub(objects_before),
        objects_pruned,
        bytes_pruned,
        summary_signed: !opts.gpg_sign.is_empty(),
        timings: progress.timings_json(),
    })
}

/// What a publish works from, all checked before anything is written.
struct Plan {
    /// Each ref to publish and its commit in the build repo.
    tips: BTreeMap<String, String>,
    /// The GnuPG home, when one was named.
    homedir: Option<String>,
    /// Commits to keep per ref (`usize::MAX`: all).
    keep: usize,
}

/// What step 1 found and copied.
struct Copied {
    /// Each ref's commit in the published repo before this run.
    before: BTreeMap<String, Option<String>>,
    /// Commits that joined each ref's published history, newest first.
    new_commits: BTreeMap<String, Vec<String>>,
}

/// What retention keeps and drops of the published history.
struct Retained {
    kept: BTreeSet<String>,
    dropped: BTreeSet<String>,
}

/// Checks the options and finds the refs and where they point in the build repo.
fn plan(opts: &PublishOptions) -> Result<Plan> {
    if opts.keep == Some(0) {
        bail!("--keep 0 would remove every commit; keep at least 1");
    }
    if opts.gpg_sign.is_empty() && opts.gpg_homedir.is_some() {
        bail!("--gpg-homedir given without --gpg-sign KEYID");
    }
    let src = crate::deploy::open_source_repo(&opts.repo)?;
    let refs: Vec<String> = if opts.refs.is_empty() {
        let all = src
            .list_refs(None, gio::Cancellable::NONE)
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
    Ok(Plan {
        tips,
        homedir,
        keep: opts.keep.unwrap_or(usize::MAX),
    })
}

/// Opens the published repo at `to`, creating it (mode archive) when missing.
fn open_published(to: &Path) -> Result<ostree::Repo> {
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let dest = crate::repo::open_or_create(to, ostree::RepoMode::Archive)?;
    if dest.mode() != ostree::RepoMode::Archive {
        bail!(
            "{} is a {:?} repo; a published repo must be mode archive (served file by file \
             over HTTP)",
            to.display(),
            dest.mode()
        );
    }
    Ok(dest)
}

/// Step 1: pulls each tip and the history the deltas start from into `dest`.
fn copy_objects(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    plan: &Plan,
    progress: &mut crate::progress::Progress,
) -> Result<Copied> {
    // History to copy: what the deltas start from, never more than retention keeps.
    let depth = opts.deltas_from_previous.min(plan.keep - 1).min(1024);
    let stage = progress.stage("copying new objects");
    let abs = opts
        .repo
        .canonicalize()
        .with_context(|| format!("finding {}", opts.repo.display()))?;
    let mut before = BTreeMap::new();
    let mut new_commits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, tip) in &plan.tips {
        let old = crate::repo::resolve(dest, r)?;
        // The published history before this run: the old tip and its ancestors.
        let published: BTreeSet<String> = match &old {
            Some(o) => chain(dest, o, usize::MAX)?.into_iter().collect(),
            None => BTreeSet::new(),
        };
        // Pulling is idempotent and completes a commit an interrupted publish left
        // partial; a ref already published at this commit needs nothing.
        if !published.contains(tip) {
            pull_local(dest, &abs, r, tip, depth)?;
        }
        let added: Vec<String> = chain(dest, tip, depth + 1)?
            .into_iter()
            .take_while(|c| !published.contains(c))
            .collect();
        before.insert(r.clone(), old);
        new_commits.insert(r.clone(), added);
    }
    stage.done();
    Ok(Copied {
        before,
        new_commits,
    })
}

/// Step 2: signs every new commit with every key; returns the commits signed.
fn sign_commits(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    plan: &Plan,
    copied: &Copied,
    progress: &mut crate::progress::Progress,
) -> Result<Vec<String>> {
    let mut signed = Vec::new();
    if opts.gpg_sign.is_empty() {
        return Ok(signed);
    }
    let homedir = plan.homedir.as_deref();
    let stage = progress.stage("signing commits");
    let all: BTreeSet<&String> = copied.new_commits.values().flatten().collect();
    for c in all {
        for key in &opts.gpg_sign {
            match dest.sign_commit(c, key, homedir, gio::Cancellable::NONE) {
                Ok(()) => {}
                // A re-run after an interrupted publish: keep the existing signature.
                Err(e) if e.to_string().contains("already signed") => {}
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!(
                            "signing commit {c} with GPG key {key}{}",
                            homedir
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
    Ok(signed)
}

/// Retention: what stays of each ref's history, and what goes.
fn retention(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    plan: &Plan,
    copied: &Copied,
) -> Result<Retained> {
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for tip in plan.tips.values() {
        let ch = chain(dest, tip, usize::MAX)?;
        for (i, c) in ch.into_iter().enumerate() {
            if i < plan.keep {
                kept.insert(c);
            } else {
                dropped.insert(c);
            }
        }
    }
    // Commits of the old tips that are no longer in any ref's kept history (a ref reset
    // to an unrelated commit) are dropped too when retention is asked for.
    if opts.keep.is_some() {
        for old in copied.before.values().flatten() {
            for c in chain(dest, old, usize::MAX)? {
                if !kept.contains(&c) {
                    dropped.insert(c);
                }
            }
        }
    }
    let dropped: BTreeSet<String> = dropped.difference(&kept).cloned().collect();
    Ok(Retained { kept, dropped })
}

/// Step 3: the static deltas asked for and missing, from kept commits only.
fn make_deltas(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    plan: &Plan,
    retained: &Retained,
    progress: &mut crate::progress::Progress,
) -> Result<Vec<DeltaReport>> {
    let existing: BTreeSet<String> = dest
        .list_static_delta_names(gio::Cancellable::NONE)
        .context("listing static deltas")?
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    let mut jobs: VecDeque<(Option<String>, String)> = VecDeque::new();
    for tip in plan.tips.values() {
        // Unchanged refs too: a delta asked for and missing is made.
        let froms = chain(dest, tip, opts.deltas_from_previous + 1)?;
        for f in froms.into_iter().skip(1) {
            if !retained.kept.contains(&f) {
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
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let stage = progress.stage(&format!("generating {} static delta(s)", jobs.len()));
    let d = generate_deltas(&opts.to, jobs, opts.jobs)?;
    stage.done();
    Ok(d)
}

/// Step 4: deltas of dropped commits go, refs move, and the summary is written last;
/// returns the names of the deltas removed.
fn write_refs_and_summary(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    plan: &Plan,
    retained: &Retained,
    progress: &mut crate::progress::Progress,
) -> Result<Vec<String>> {
    let cancel = gio::Cancellable::NONE;
    let dropped = &retained.dropped;
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
    for (r, tip) in &plan.tips {
        dest.set_ref_immediate(None, r, Some(tip), cancel)
            .with_context(|| format!("setting ref {r} to {tip}"))?;
    }
    write_summary(dest, &opts.gpg_sign, plan.homedir.as_deref())?;
    stage.done();
    Ok(deltas_pruned)
}

/// Step 5: prunes the objects of dropped commits; returns (objects, bytes) removed.
fn prune_dropped(
    dest: &ostree::Repo,
    opts: &PublishOptions,
    retained: &Retained,
    progress: &mut crate::progress::Progress,
) -> Result<(u64, u64)> {
    let Some(keep) = opts.keep.filter(|_| !retained.dropped.is_empty()) else {
        return Ok((0, 0));
    };
    let stage = progress.stage("pruning old commits");
    let (_total, pruned, freed) = dest
        .prune(
            ostree::RepoPruneFlags::REFS_ONLY,
            (keep - 1).min(i32::MAX as usize) as i32,
            gio::Cancellable::NONE,
        )
        .context("pruning objects of dropped commits")?;
    stage.done();
    Ok((pruned.max(0) as u64, freed))
}

/// One report per published ref.
fn ref_reports(dest: &ostree::Repo, plan: &Plan, mut copied: Copied) -> Result<Vec<RefReport>> {
    let mut out = Vec::new();
    for (r, tip) in &plan.tips {
        out.push(RefReport {
            ref_: r.clone(),
            from: copied.before.remove(r).flatten(),
            to: tip.clone(),
            version: crate::repo::read_commit(dest, tip)?.version,
            commits_added: copied.new_commits.remove(r).unwrap_or_default(),
        });
    }
    Ok(out)
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
}
