//! Ignition configs: a friendly TOML source transpiled to Ignition spec 3.3.0 JSON, and a
//! validator for Ignition 3.0–3.3 JSON with JSON paths and line:col.
//!
//! Library API: [`build_config`] (TOML -> JSON text) and [`validate_json`] (JSON text ->
//! [`Report`]). The `kiln ignition` command lives in [`cli`].

pub mod against;
pub mod cli;
pub mod json;
pub mod source;
pub mod transpile;
pub mod validate;

pub use validate::{validate_json, Diagnostic, Report, Severity};

use crate::error::InputError;
use anyhow::{Context, Result};
use std::path::Path;

/// A built config: the JSON text and the validator's warnings about it.
#[derive(Debug)]
pub struct Built {
    pub json: String,
    pub warnings: Vec<String>,
}

/// Builds Ignition 3.3.0 JSON from a TOML config, its `local` files under `files_dir`
/// (default: the config's directory) and optional `NN-*.toml` fragments. Source errors are
/// [`InputError`]s naming the file, key path and line:col.
pub fn build_config(
    path: &Path,
    files_dir: Option<&Path>,
    fragments: Option<&Path>,
) -> Result<String> {
    build(path, files_dir, fragments).map(|b| b.json)
}

/// Like [`build_config`], also returning the warnings.
pub fn build(path: &Path, files_dir: Option<&Path>, fragments: Option<&Path>) -> Result<Built> {
    build_against(path, files_dir, fragments, None)
}

/// What a config is checked against ([`against`]): a commit's tree and, when known, the
/// Ignition platform id the image is for.
pub struct Against<'a> {
    pub image: &'a crate::repo::tree::CommitTree,
    pub platform: Option<&'a str>,
}

/// Like [`build`]; with `against`, the built config is also checked against that image,
/// each problem located in the TOML source.
pub fn build_against(
    path: &Path,
    files_dir: Option<&Path>,
    fragments: Option<&Path>,
    against: Option<&Against>,
) -> Result<Built> {
    let loaded = source::load(path, fragments)?;
    let default_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let ctx = transpile::Ctx {
        files_dir: files_dir.unwrap_or(&default_dir),
    };
    let cfg =
        transpile::transpile(&ctx, &loaded.source).map_err(|e| loaded.error(&e.key, e.message))?;
    let json = transpile::to_json(&cfg);
    let report = validate_json(&json);
    let mut errors = report
        .errors()
        .map(|d| loaded.error(&json_path_to_key(&d.path), d.message.clone()));
    if let Some(mut first) = errors.next() {
        // Every further error, located in the TOML too, on its own line.
        for more in errors {
            first.message.push_str(&format!("\n  and: {more}"));
        }
        return Err(first.into());
    }
    let mut warnings: Vec<String> = report
        .warnings()
        .map(|d| {
            let key = json_path_to_key(&d.path);
            let e = loaded.error(&key, d.message.clone());
            format!("warning: {e}")
        })
        .collect();
    if let Some(a) = against {
        let root = json::parse(&json)
            .map_err(|e| anyhow::anyhow!("re-reading the built config: {}", e.message))?;
        let found = against::check(&root, a.image, a.platform);
        let at = |f: &against::Finding| loaded.error(&json_path_to_key(&f.path), f.message.clone());
        warnings.extend(
            found
                .iter()
                .filter(|f| f.warning)
                .map(|f| format!("warning: {}", at(f))),
        );
        refuse(found.iter().filter(|f| !f.warning).map(at))?;
    }
    Ok(Built { json, warnings })
}

/// The first error, with every further one on its own line; `Ok` when there is none.
fn refuse(mut errors: impl Iterator<Item = InputError>) -> Result<()> {
    if let Some(mut first) = errors.next() {
        for more in errors {
            first.message.push_str(&format!("\n  and: {more}"));
        }
        return Err(first.into());
    }
    Ok(())
}

/// Checks an Ignition JSON config (`file` holds `text`) against an image: errors are an
/// [`InputError`] at the config's line:col; warnings are returned.
pub fn check_json_against(file: &Path, text: &str, a: &Against) -> Result<Vec<String>> {
    let root = json::parse(text).map_err(|e| {
        let (l, c) = crate::error::line_col(text, e.pos);
        InputError::new(
            file.display().to_string(),
            format!("invalid JSON: {}", e.message),
        )
        .at(l, c)
    })?;
    let found = against::check(&root, a.image, a.platform);
    let at = |f: &against::Finding| {
        let (l, c) = crate::error::line_col(text, f.pos);
        InputError::new(file.display().to_string(), f.message.clone())
            .key(f.path.clone())
            .at(l, c)
    };
    refuse(found.iter().filter(|f| !f.warning).map(at))?;
    Ok(found
        .iter()
        .filter(|f| f.warning)
        .map(|f| format!("warning: {}", at(f)))
        .collect())
}

/// `$.storage.files.0.contents.source` -> `storage.files[0].contents.source`.
fn json_path_to_key(p: &str) -> source::KeyPath {
    let mut kp = source::KeyPath::default();
    for seg in p
        .trim_start_matches('$')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        if let Ok(i) = seg.parse::<usize>() {
            kp = kp.i(i);
        } else {
            let mut snake = String::new();
            for (i, c) in seg.replace("MiB", "Mib").chars().enumerate() {
                if c.is_ascii_uppercase() {
                    if i > 0 {
                        snake.push('_');
                    }
                    snake.push(c.to_ascii_lowercase());
                } else {
                    snake.push(c);
                }
            }
            kp = kp.k(&snake);
        }
    }
    kp
}

/// Refuses an output path that cannot take a file: an existing directory (or a name
/// written with a trailing `/`). Checked before anything is built or written.
pub fn check_output_file(path: &Path, key: &str) -> Result<()> {
    let slash = path.as_os_str().to_string_lossy().ends_with('/');
    if slash || path.is_dir() {
        return Err(InputError::new(
            "command line",
            format!(
                "{} is a directory; name the file to write (e.g. {}/config.ign)",
                path.display(),
                path.display().to_string().trim_end_matches('/')
            ),
        )
        .key(key)
        .into());
    }
    Ok(())
}

/// Writes `text` (a config: it may hold password hashes and keys) to `path` through a
/// temporary file in the same directory that is mode 0600 from its creation, then a
/// rename. The temporary file is removed on every error path.
pub fn write_private_atomic(path: &Path, text: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    // On failure the PersistError owns the temp file: take the io::Error only, so the file
    // is dropped (and deleted) here rather than kept alive inside the returned error.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the output into place at {}", path.display()))?;
    Ok(())
}

/// Takes group and other permissions away from an existing file that is about to receive
/// an Ignition config (an ISO edited in place, a disk-image file installed to), before the
/// config is written. Returns whether the mode changed.
pub fn make_private(f: &std::fs::File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))
        .with_context(|| format!("making {} private (chmod go-rwx)", path.display()))?;
    Ok(true)
}
