//! Remotes of a sysroot's repo (`kiln remote add/list/delete`) and pulls over HTTP(S)
//! with progress, static deltas and signature checks (used by `kiln deploy --remote` and
//! `kiln upgrade`). Semantics: docs/updating.md, "Remotes".

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde::Serialize;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

#[derive(Debug, clap::Subcommand)]
pub enum RemoteCommand {
    /// Add a remote (an update server) to the sysroot's repo.
    Add(RemoteAddArgs),
    /// List the sysroot's remotes.
    List(RemoteListArgs),
    /// Remove a remote and its trusted keys.
    Delete(RemoteDeleteArgs),
}

#[derive(Debug, clap::Args)]
pub struct RemoteAddArgs {
    /// Remote name (what origins refer to as NAME:REF).
    pub name: String,
    /// Base URL of the published repo (http://, https:// or file://).
    pub url: String,
    /// Trust the GPG public keys in this file (armored or binary) for this remote;
    /// repeatable (key rotation: import the new key next to the old one).
    #[arg(long = "gpg-import", conflicts_with = "no_gpg_verify")]
    pub gpg_import: Vec<PathBuf>,
    /// Do not verify signatures (only for trusted networks and tests).
    #[arg(long)]
    pub no_gpg_verify: bool,
    /// The sysroot whose repo gets the remote (initialized when needed).
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
    /// Stateroot to create when the sysroot is new.
    #[arg(long = "os", default_value = "kiln")]
    pub os: String,
    /// Replace a remote of the same name.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoteListArgs {
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoteDeleteArgs {
    pub name: String,
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
}

/// One remote as `kiln remote list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteInfo {
    pub name: String,
    pub url: String,
    pub gpg_verify: bool,
    pub gpg_verify_summary: bool,
    /// Keys imported for this remote (`NAME.trustedkeys.gpg` in the repo) exist.
    pub has_keys: bool,
}

pub fn cmd(c: RemoteCommand) -> Result<()> {
    match c {
        RemoteCommand::Add(a) => {
            let n = add(
                &a.sysroot,
                &a.os,
                &a.name,
                &a.url,
                &a.gpg_import,
                !a.no_gpg_verify,
                a.force,
            )?;
            if a.no_gpg_verify {
                println!(
                    "Added remote {} ({}) WITHOUT signature verification.",
                    a.name, a.url
                );
            } else if n > 0 {
                println!(
                    "Added remote {} ({}); {n} GPG key(s) trusted for it; commits and the \
                     summary must be signed.",
                    a.name, a.url
                );
            } else {
                println!(
                    "Added remote {} ({}); signatures are verified against the keys in \
                     /usr/share/ostree/trusted.gpg.d and /etc/ostree/remotes.d.",
                    a.name, a.url
                );
            }
            Ok(())
        }
        RemoteCommand::List(a) => {
            let l = list(&a.sysroot)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&l).context("serializing remotes")?
                );
            } else if l.is_empty() {
                println!("No remotes.");
            } else {
                for r in l {
                    println!(
                        "{}\t{}\t{}",
                        r.name,
                        r.url,
                        if r.gpg_verify {
                            if r.has_keys {
                                "gpg-verify (keys imported)"
                            } else {
                                "gpg-verify"
                            }
                        } else {
                            "no-gpg-verify"
                        }
                    );
                }
            }
            Ok(())
        }
        RemoteCommand::Delete(a) => {
            delete(&a.sysroot, &a.name)?;
            println!("Deleted remote {}.", a.name);
            Ok(())
        }
    }
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    crate::validate::remote_name(name)
        .map_err(|m| crate::error::InputError::new("command line", m).into())
}

pub(crate) fn validate_url(url: &str) -> Result<()> {
    crate::validate::url(url, crate::validate::Schemes::HttpOrFile).map_err(|m| {
        crate::error::InputError::new("command line", format!("remote URL: {m}")).into()
    })
}

fn sysroot_repo(sysroot: &Path) -> Result<ostree::Repo> {
    crate::deploy::ensure_initialized(sysroot)?;
    crate::repo::open(&sysroot.join("ostree/repo"))
}

/// Adds remote `name` at `url` to the sysroot's repo, initializing the sysroot (stateroot
/// `os`) when it is new. `gpg_verify` turns on commit and summary verification; the keys in
/// `keys` become trusted for this remote only. Returns the number of keys imported. On any
/// failure the remote is not left behind.
pub fn add(
    sysroot: &Path,
    os: &str,
    name: &str,
    url: &str,
    keys: &[PathBuf],
    gpg_verify: bool,
    force: bool,
) -> Result<u32> {
    validate_name(name)?;
    validate_url(url)?;
    for k in keys {
        if !k.is_file() {
            return Err(crate::error::InputError::new(
                k.display().to_string(),
                "--gpg-import: no such key file",
            )
            .into());
        }
    }
    crate::deploy::require_root(sysroot, "adding a remote")?;
    if !crate::deploy::is_initialized(sysroot) {
        crate::deploy::init_sysroot(sysroot, os)?;
    }
    let repo = sysroot_repo(sysroot)?;
    let cancel = gio::Cancellable::NONE;
    if repo.remote_list().iter().any(|r| r.as_str() == name) {
        if !force {
            bail!(
                "the remote {name:?} already exists in {} (kiln remote delete {name}, or \
                 --force to replace it)",
                sysroot.display()
            );
        }
        delete_in(&repo, sysroot, name)?;
    }
    let o = glib::VariantDict::new(None);
    o.insert_value("gpg-verify", &gpg_verify.to_variant());
    o.insert_value("gpg-verify-summary", &gpg_verify.to_variant());
    repo.remote_add(name, Some(url), Some(&o.end()), cancel)
        .with_context(|| format!("adding remote {name} ({url})"))?;
    let mut imported = 0;
    for k in keys {
        let res = gio::File::for_path(k)
            .read(cancel)
            .map_err(anyhow::Error::from)
            .and_then(|stream| gpg_import_all(&repo, name, &stream))
            .and_then(|n| {
                if n == 0 {
                    Err(anyhow!("the file holds no public key"))
                } else {
                    Ok(n)
                }
            });
        match res {
            Ok(n) => imported += n,
            Err(e) => {
                let _ = delete_in(&repo, sysroot, name);
                return Err(e).with_context(|| {
                    format!("importing GPG keys from {} for remote {name}", k.display())
                });
            }
        }
    }
    Ok(imported)
}

/// Imports every key of `stream` as trusted for remote `name`. The binding's `key_ids`
/// slice cannot express libostree's "all keys" (NULL): an empty slice selects none.
fn gpg_import_all(repo: &ostree::Repo, name: &str, stream: &gio::FileInputStream) -> Result<u32> {
    use glib::translate::{from_glib_full, ToGlibPtr};
    let mut imported: u32 = 0;
    let mut error = std::ptr::null_mut();
    let stream: &gio::InputStream = stream.upcast_ref();
    let cname = std::ffi::CString::new(name).context("remote name contains NUL")?;
    // SAFETY: valid repo, stream and C string for the duration of the call; a NULL key
    // list and cancellable are allowed; `error` follows GError conventions.
    let ok = unsafe {
        ostree::ffi::ostree_repo_remote_gpg_import(
            repo.to_glib_none().0,
            cname.as_ptr(),
            stream.to_glib_none().0,
            std::ptr::null(),
            &mut imported,
            std::ptr::null_mut(),
            &mut error,
        )
    };
    if ok == glib::ffi::GFALSE {
        // SAFETY: libostree set `error` since it returned FALSE.
        let e: glib::Error = unsafe { from_glib_full(error) };
        return Err(e.into());
    }
    Ok(imported)
}

/// The remotes of the sysroot's repo.
pub fn list(sysroot: &Path) -> Result<Vec<RemoteInfo>> {
    let repo = sysroot_repo(sysroot)?;
    let mut out = Vec::new();
    let mut names: Vec<String> = repo.remote_list().iter().map(|s| s.to_string()).collect();
    names.sort();
    for n in names {
        out.push(RemoteInfo {
            url: repo
                .remote_get_url(&n)
                .with_context(|| format!("reading the URL of remote {n}"))?
                .to_string(),
            gpg_verify: repo.remote_get_gpg_verify(&n).unwrap_or(true),
            gpg_verify_summary: repo.remote_get_gpg_verify_summary(&n).unwrap_or(false),
            has_keys: sysroot
                .join("ostree/repo")
                .join(format!("{n}.trustedkeys.gpg"))
                .is_file(),
            name: n,
        });
    }
    Ok(out)
}

/// Removes a remote and its trusted keys.
pub fn delete(sysroot: &Path, name: &str) -> Result<()> {
    crate::deploy::require_root(sysroot, "deleting a remote")?;
    let repo = sysroot_repo(sysroot)?;
    if !repo.remote_list().iter().any(|r| r.as_str() == name) {
        bail!("no remote {name:?} in {}", sysroot.display());
    }
    delete_in(&repo, sysroot, name)
}

fn delete_in(repo: &ostree::Repo, sysroot: &Path, name: &str) -> Result<()> {
    repo.remote_delete(name, gio::Cancellable::NONE)
        .with_context(|| format!("deleting remote {name}"))?;
    let keys = sysroot
        .join("ostree/repo")
        .join(format!("{name}.trustedkeys.gpg"));
    if keys.exists() {
        std::fs::remove_file(&keys).with_context(|| format!("removing {}", keys.display()))?;
    }
    Ok(())
}

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
    let scratch = crate::repo::open_or_create(td.path(), ostree::RepoMode::BareUser).ok()?;
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
    let (res, stats) = crate::repo::on_own_main_context(|| {
        let progress = ostree::AsyncProgress::new();
        let start = Instant::now();
        let last = Rc::new(Cell::new(0u64));
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !quiet {
            let last = last.clone();
            progress.connect_changed(move |p| {
                let secs = start.elapsed().as_secs();
                if secs < last.get() + 2 {
                    return;
                }
                last.set(secs);
                let line = progress_line(p);
                if tty {
                    eprint!("\r\x1b[Kkiln: {line}");
                } else {
                    eprintln!("kiln: {line}");
                }
            });
        }
        let res =
            repo.pull_with_options(remote, &opts.end(), Some(&progress), gio::Cancellable::NONE);
        progress.finish();
        if !quiet && tty && last.get() > 0 {
            eprintln!();
        }
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
            human_bytes(stats.bytes_transferred),
            stats.objects_fetched,
            if stats.delta_used {
                format!(
                    " through a static delta ({} part(s), {})",
                    stats.delta_parts,
                    human_bytes(stats.delta_bytes)
                )
            } else {
                String::new()
            },
            stats.seconds
        );
    }
    let c = crate::repo::resolve(repo, &format!("{remote}:{ref_}"))?
        .ok_or_else(|| anyhow!("remote {remote:?} has no ref {ref_:?}"))?;
    Ok((c, stats))
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
            human_bytes(p.uint64("fetched-delta-part-size")),
            human_bytes(p.uint64("total-delta-part-size"))
        )
    } else {
        format!(
            "receiving objects: {fetched}/{requested}, {}",
            human_bytes(bytes)
        )
    }
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}
