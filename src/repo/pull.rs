//! Pulls from a remote over HTTP(S) with progress, static deltas and signature checks
//! (`kiln deploy --remote`, `kiln upgrade`). Remotes themselves: [`crate::remote`].

use anyhow::{anyhow, bail, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// What a network pull transferred.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PullStats {
    pub bytes_transferred: u64,
    pub objects_fetched: u64,
    pub metadata_objects_fetched: u64,
    /// A static delta was used.
    pub delta_used: bool,
    pub delta_parts: u64,
    pub delta_bytes: u64,
    pub seconds: f64,
}

/// The commit a remote's summary names for `ref_`, read WITHOUT verifying the summary's
/// signature: only to name the commit in a refusal message. It goes through a throwaway
/// repo so nothing unverified reaches the sysroot's repo.
pub fn summary_commit(repo: &ostree::Repo, remote: &str, ref_: &str) -> Option<String> {
    let url = repo.remote_get_url(remote).ok()?;
    let td = tempfile::Builder::new()
        .prefix("kiln-summary")
        .tempdir()
        .ok()?;
    let scratch = super::open_or_create(td.path(), ostree::RepoMode::BareUser).ok()?;
    let o = glib::VariantDict::new(None);
    o.insert_value("gpg-verify", &false.to_variant());
    o.insert_value("gpg-verify-summary", &false.to_variant());
    scratch
        .remote_add(
            "peek",
            Some(url.as_str()),
            Some(&o.end()),
            gio::Cancellable::NONE,
        )
        .ok()?;
    let summary = fetch_summary_bytes(&scratch, "peek")?;
    if summary.is_empty() {
        return None;
    }
    let v = glib::Variant::from_bytes_with_type(
        &summary,
        glib::VariantTy::new("(a(s(taya{sv}))a{sv})").ok()?,
    );
    let refs = v.child_value(0);
    for i in 0..refs.n_children() {
        let e = refs.child_value(i);
        if e.child_value(0).str() == Some(ref_) {
            return Some(hex::encode(e.child_value(1).child_value(1).data()));
        }
    }
    None
}

/// The raw summary of a remote. (The binding's `remote_fetch_summary` panics when the
/// server has no `summary.sig`: its signature return value is then NULL.)
fn fetch_summary_bytes(repo: &ostree::Repo, remote: &str) -> Option<glib::Bytes> {
    use glib::translate::{from_glib_full, ToGlibPtr};
    let name = std::ffi::CString::new(remote).ok()?;
    let mut summary: *mut glib::ffi::GBytes = std::ptr::null_mut();
    let mut sig: *mut glib::ffi::GBytes = std::ptr::null_mut();
    let mut error: *mut glib::ffi::GError = std::ptr::null_mut();
    // SAFETY: valid repo and C string; out pointers are owned by us afterwards (full
    // transfer) and freed below or wrapped.
    let ok = unsafe {
        ostree::ffi::ostree_repo_remote_fetch_summary(
            repo.to_glib_none().0,
            name.as_ptr(),
            &mut summary,
            &mut sig,
            std::ptr::null_mut(),
            &mut error,
        )
    };
    // SAFETY: each pointer is either NULL or a reference we own.
    unsafe {
        if !sig.is_null() {
            glib::ffi::g_bytes_unref(sig);
        }
        if !error.is_null() {
            glib::ffi::g_error_free(error);
        }
        if ok == glib::ffi::GFALSE || summary.is_null() {
            if !summary.is_null() {
                glib::ffi::g_bytes_unref(summary);
            }
            return None;
        }
        Some(from_glib_full(summary))
    }
}

/// Turns libostree's pull errors into a sentence that says why the content was refused.
fn reason(e: &glib::Error) -> String {
    let m = e.to_string();
    let l = m.to_lowercase();
    if l.contains("no summary.sig") || l.contains("no summary signature") {
        format!("the server's summary is not signed, and this remote requires signatures ({m})")
    } else if l.contains("no signatures found") {
        format!("it is not signed, and this remote requires signatures ({m})")
    } else if l.contains("public key not found")
        || l.contains("none are in trusted keyring")
        || l.contains("no valid signatures")
        || l.contains("not in trusted")
    {
        format!("it is not signed by a key trusted for this remote ({m})")
    } else if l.contains("bad signature") || l.contains("signature") && l.contains("invalid") {
        format!("its signature does not match its content ({m})")
    } else if l.contains("corrupt") || l.contains("checksum") || l.contains("expected") {
        format!("what the server sent does not match its checksum: tampered or corrupted ({m})")
    } else if l.contains("404") || l.contains("not found") {
        format!("the server does not have all of it ({m})")
    } else {
        m
    }
}

/// How much to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullKind {
    /// The commit with its whole tree (a static delta when the server has one from a
    /// commit already here).
    Full,
    /// Only the commit object (for `upgrade --check`).
    CommitOnly,
}

/// Pulls `ref_` from `remote` into `repo`, verifying signatures as the remote is
/// configured, printing progress (bytes, objects, delta parts) on stderr unless `quiet`.
/// Returns the pulled commit and what was transferred. An interrupted pull leaves the
/// objects it completed in the repo's staging area, and the next pull reuses them.
pub fn pull(
    repo: &ostree::Repo,
    remote: &str,
    ref_: &str,
    kind: PullKind,
    quiet: bool,
) -> Result<(String, PullStats)> {
    if !repo.remote_list().iter().any(|r| r.as_str() == remote) {
        bail!("no remote {remote:?} is configured in the sysroot's repo");
    }
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &vec![ref_.to_string()].to_variant());
    opts.insert_value("depth", &0i32.to_variant());
    if kind == PullKind::CommitOnly {
        opts.insert_value(
            "flags",
            &(ostree::RepoPullFlags::COMMIT_ONLY.bits() as i32).to_variant(),
        );
    }
    // The progress object binds to the thread-default main context, so it is made on
    // the pull's own context.
    let (res, stats) = super::on_own_main_context(|| {
        let progress = ostree::AsyncProgress::new();
        let start = Instant::now();
        let live = crate::progress::Live::new(quiet);
        {
            let live = live.clone();
            progress.connect_changed(move |p| live.update(|| progress_line(p)));
        }
        let res =
            repo.pull_with_options(remote, &opts.end(), Some(&progress), gio::Cancellable::NONE);
        progress.finish();
        live.finish();
        let stats = PullStats {
            bytes_transferred: progress.uint64("bytes-transferred"),
            objects_fetched: u64::from(progress.uint("fetched")),
            metadata_objects_fetched: u64::from(progress.uint("metadata-fetched")),
            delta_used: progress.uint("total-delta-parts") > 0,
            delta_parts: u64::from(progress.uint("fetched-delta-parts")),
            delta_bytes: progress.uint64("fetched-delta-part-size"),
            seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        };
        (res, stats)
    })?;
    if let Err(e) = res {
        let expected = summary_commit(repo, remote, ref_);
        let what = match &expected {
            Some(c) => format!("commit {c} ({ref_} on remote {remote})"),
            None => format!("the newest commit of {ref_} on remote {remote}"),
        };
        let verb = if is_refusal(&e) {
            "refusing"
        } else {
            "could not pull"
        };
        bail!(
            "{verb} {what}: {}; the deployments are unchanged (objects already received are \
             kept and reused by the next attempt)",
            reason(&e)
        );
    }
    if !quiet {
        eprintln!(
            "kiln: received {} in {} object(s){} in {:.1}s",
            crate::progress::human_bytes(stats.bytes_transferred),
            stats.objects_fetched,
            if stats.delta_used {
                format!(
                    " through a static delta ({} part(s), {})",
                    stats.delta_parts,
                    crate::progress::human_bytes(stats.delta_bytes)
                )
            } else {
                String::new()
            },
            stats.seconds
        );
    }
    let c = super::resolve(repo, &format!("{remote}:{ref_}"))?
        .ok_or_else(|| anyhow!("remote {remote:?} has no ref {ref_:?}"))?;
    Ok((c, stats))
}

/// What pulling `ref_` from `remote` would download, found by a dry run of libostree's
/// pull: the summary and the static delta's superblock are read, nothing is stored. The
/// delta is one from a commit `repo` has completely (or from scratch). Returns the
/// delta parts' (compressed, uncompressed) bytes, or `None` when the server has no delta
/// to the newest commit.
pub fn delta_download_size(
    repo: &ostree::Repo,
    remote: &str,
    ref_: &str,
) -> Result<Option<(u64, u64)>> {
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &vec![ref_.to_string()].to_variant());
    opts.insert_value("depth", &0i32.to_variant());
    opts.insert_value("dry-run", &true.to_variant());
    opts.insert_value("require-static-deltas", &true.to_variant());
    super::on_own_main_context(|| {
        let progress = ostree::AsyncProgress::new();
        let res =
            repo.pull_with_options(remote, &opts.end(), Some(&progress), gio::Cancellable::NONE);
        progress.finish();
        res.ok().map(|_| {
            (
                progress.uint64("total-delta-part-size"),
                progress.uint64("total-delta-part-usize"),
            )
        })
    })
}

fn is_refusal(e: &glib::Error) -> bool {
    let l = e.to_string().to_lowercase();
    l.contains("signature")
        || l.contains("gpg")
        || l.contains("corrupt")
        || l.contains("checksum")
        || l.contains("keyring")
}

fn progress_line(p: &ostree::AsyncProgress) -> String {
    if let Some(s) = p.status().filter(|s| !s.is_empty()) {
        return s.to_string();
    }
    let bytes = p.uint64("bytes-transferred");
    let fetched = p.uint("fetched");
    let requested = p.uint("requested");
    let total_parts = p.uint("total-delta-parts");
    if total_parts > 0 {
        format!(
            "receiving delta: {}/{} parts, {} of {}",
            p.uint("fetched-delta-parts"),
            total_parts,
            crate::progress::human_bytes(p.uint64("fetched-delta-part-size")),
            crate::progress::human_bytes(p.uint64("total-delta-part-size"))
        )
    } else {
        format!(
            "receiving objects: {fetched}/{requested}, {}",
            crate::progress::human_bytes(bytes)
        )
    }
}
