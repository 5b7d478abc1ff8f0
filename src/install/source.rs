//! Where the image comes from, resolved before anything is written: a local file (raw or
//! qcow2, its sha256 from `--image-sha256` or the `manifest.json` beside it) or an
//! http(s) URL (its sha256 and format from the `manifest.json` beside it).

use super::digest::{Expected, Sha256};
use super::QCOW2_MAGIC;
use crate::cmd::Cmd;
use crate::error::InputError;
use crate::image::{disk, manifest, Format};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The curl options every fetch uses: http(s) only (also across redirects), errors on
/// HTTP failures, and a stalled transfer fails instead of hanging.
pub(super) fn curl() -> Cmd {
    Cmd::new("curl").args([
        "--silent",
        "--show-error",
        "--location",
        "--proto",
        "=http,https",
        "--proto-redir",
        "=http,https",
        "--connect-timeout",
        "30",
        "--speed-limit",
        "1",
        "--speed-time",
        "120",
    ])
}

/// Fetches a small document; `Ok(None)` when the server says 404 or 410.
pub(super) fn fetch_small(url: &str, max: u64, work: &Path) -> Result<Option<Vec<u8>>> {
    let out = work.join("fetch.out");
    let code = curl()
        .args(["--max-filesize", &max.to_string(), "--output"])
        .arg(&out)
        .args(["--write-out", "%{http_code}"])
        .arg(url)
        .read()
        .with_context(|| format!("fetching {url}"))?;
    match code.trim() {
        "200" => {
            let data = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
            let _ = std::fs::remove_file(&out);
            Ok(Some(data))
        }
        "404" | "410" => Ok(None),
        c => bail!("fetching {url}: the server answered HTTP {c}"),
    }
}

/// The `manifest.json` URL beside an image URL, and the image's file name in it.
pub fn manifest_url(url: &str) -> Option<(String, String)> {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let (dir, name) = no_query.rsplit_once('/')?;
    if name.is_empty() || dir.ends_with('/') || !dir.contains("://") {
        return None;
    }
    Some((format!("{dir}/{}", manifest::FILE_NAME), name.to_string()))
}

/// An image, located and checked, ready to be written.
pub(super) struct Resolved {
    pub(super) format: Format,
    /// Bytes of disk the image covers.
    pub(super) size: Option<u64>,
    /// Size of the file or download itself, when known.
    pub(super) file_size: Option<u64>,
    pub(super) expected: Option<Expected>,
    /// sha256 of a local qcow2, checked against `expected` before `qemu-img` read it.
    pub(super) verified_sha: Option<String>,
}

fn format_from_name(name: &str) -> Option<Format> {
    Format::from_path(Path::new(name))
}

pub(super) fn qcow2_virtual_size(path: &Path) -> Result<u64> {
    if !crate::cmd::have("qemu-img") {
        bail!("missing host tool for qcow2 images: qemu-img (package qemu-utils)");
    }
    let info = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .read()
        .with_context(|| format!("reading the qcow2 header of {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&info).context("parsing qemu-img info")?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| anyhow!("qemu-img info gave no virtual-size for {}", path.display()))
}

pub(super) fn resolve_file(path: &Path, sha: Option<&Sha256>) -> Result<Resolved> {
    let name = path.display().to_string();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError::new(name, "image not found").into())
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {name}")),
    };
    if !md.is_file() {
        return Err(InputError::new(name, "the image is not a regular file").into());
    }
    let mut magic = [0u8; 4];
    let n = File::open(path)
        .and_then(|f| f.read_at(&mut magic, 0))
        .with_context(|| format!("reading {name}"))?;
    let format = if n == 4 && magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    };
    let expected = match sha {
        Some(s) => Some(Expected {
            sha256: s.to_string(),
            from: "--image-sha256".into(),
        }),
        None => {
            let mpath = manifest::path_for(path);
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            manifest::load(&mpath)?
                .artifacts
                .get(file_name)
                .map(|a| Expected {
                    sha256: a.sha256.clone(),
                    from: mpath.display().to_string(),
                })
        }
    };
    // A qcow2 is parsed by qemu-img: verify it whole first. A raw image is verified as
    // it streams (its head is written last).
    let mut verified_sha = None;
    let size = match format {
        Format::Raw
        | Format::Vmdk
        | Format::Vhd
        | Format::Gce
        | Format::Ova
        | Format::Iso
        | Format::Pxe => md.len(),
        Format::Qcow2 => {
            if let Some(e) = &expected {
                let actual = manifest::sha256_file(path)?;
                e.check(&name, &actual)?;
                verified_sha = Some(actual);
            }
            qcow2_virtual_size(path)?
        }
    };
    Ok(Resolved {
        format,
        size: Some(size),
        file_size: Some(md.len()),
        expected,
        verified_sha,
    })
}

pub(super) fn resolve_url(url: &str, sha: Option<&Sha256>, work: &Path) -> Result<Resolved> {
    let (entry, mfrom) = match manifest_url(url) {
        Some((murl, name)) => match fetch_small(&murl, 16 * disk::MIB, work)? {
            Some(bytes) => {
                let m: manifest::Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    InputError::new(murl.clone(), format!("not a kiln manifest: {e}"))
                        .at(e.line(), e.column())
                })?;
                (m.artifacts.get(&name).cloned(), murl)
            }
            None => (None, murl),
        },
        None => (None, String::new()),
    };
    let expected = match (sha, &entry) {
        (Some(s), _) => Expected {
            sha256: s.to_string(),
            from: "--image-sha256".into(),
        },
        (None, Some(a)) => Expected {
            sha256: a.sha256.clone(),
            from: mfrom.clone(),
        },
        (None, None) => {
            return Err(InputError::new(
                url,
                format!(
                    "no sha256 to verify the download against: {} does not list it; pass \
                     --image-sha256 HEX or publish the manifest.json `kiln image` writes \
                     beside the image",
                    if mfrom.is_empty() {
                        "no manifest.json URL could be derived, so nothing".to_string()
                    } else {
                        mfrom.clone()
                    }
                ),
            )
            .key("--image")
            .into())
        }
    };
    let format = entry
        .as_ref()
        .and_then(|a| match a.format.as_str() {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        })
        .or_else(|| format_from_name(url.split(['?', '#']).next().unwrap_or(url)))
        .unwrap_or(Format::Raw);
    let file_size = entry.as_ref().map(|a| a.size);
    Ok(Resolved {
        format,
        // A raw image covers as many bytes as it has; a qcow2's virtual size is known
        // once it is downloaded.
        size: if format == Format::Raw {
            file_size
        } else {
            None
        },
        file_size,
        expected: Some(expected),
        verified_sha: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_url_is_beside_the_image() {
        assert_eq!(
            manifest_url("http://127.0.0.1:8000/a/b/disk.raw?x=1"),
            Some((
                "http://127.0.0.1:8000/a/b/manifest.json".into(),
                "disk.raw".into()
            ))
        );
        assert_eq!(manifest_url("http://host/"), None);
        assert_eq!(manifest_url("http://host"), None);
    }
}
