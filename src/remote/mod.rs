//! Remotes of a sysroot's repo (`kiln remote add/list/delete`; [`cli`] is the command).
//! Pulls from them live in [`crate::repo::pull`]. Semantics: docs/updating.md, "Remotes".

pub mod cli;

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

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
