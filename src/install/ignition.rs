//! The Ignition config an install writes: where it may come from (`--ignition`), the rule
//! for plain http, and reading and checking it before anything is written.

use super::digest::IgnitionHash;
use super::source::fetch_small;
use crate::error::InputError;
use crate::image;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Largest Ignition config fetched from a URL.
const MAX_IGNITION_BYTES: u64 = 16 * image::disk::MIB;

/// Where the Ignition config comes from (`--ignition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnitionSource {
    File(PathBuf),
    /// A valid http(s) URL ([`crate::validate::url`]).
    Url(String),
}

impl IgnitionSource {
    /// A value with `://` must be a valid http(s) URL; anything else is a file path.
    pub fn parse(s: &str) -> std::result::Result<IgnitionSource, String> {
        if s.contains("://") {
            crate::validate::url(s, crate::validate::Schemes::Http)?;
            Ok(IgnitionSource::Url(s.to_string()))
        } else {
            Ok(IgnitionSource::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for IgnitionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IgnitionSource::File(p) => write!(f, "{}", p.display()),
            IgnitionSource::Url(u) => f.write_str(u),
        }
    }
}

/// A plain `http://` source needs a hash (anyone on the network path could otherwise hand
/// the machine a config of their choosing, as coreos-installer also refuses) unless
/// `insecure`. The error is the message for `--ignition`.
pub fn check_plain_http(
    src: &IgnitionSource,
    hash: Option<&IgnitionHash>,
    insecure: bool,
) -> std::result::Result<(), String> {
    match src {
        IgnitionSource::Url(u)
            if crate::validate::is_plain_http(u) && hash.is_none() && !insecure =>
        {
            Err(format!(
                "{u} is plain http: anyone on the network path could change the config \
                 and so own the machine. Give its hash with --ignition-hash \
                 sha256-<hex>, serve it over https://, or accept the risk with \
                 --insecure-ignition"
            ))
        }
        _ => Ok(()),
    }
}

/// Decides whether an Ignition source given as strings may be used, before anything is
/// fetched or written: the hash must parse ([`IgnitionHash::parse`]), a URL must be a valid
/// http(s) URL ([`IgnitionSource::parse`]) and pass [`check_plain_http`]. Returns the parsed
/// hash, or the option at fault and why.
pub fn ignition_policy(
    src: &str,
    hash: Option<&str>,
    insecure: bool,
) -> std::result::Result<Option<IgnitionHash>, (&'static str, String)> {
    let hash = hash
        .map(IgnitionHash::parse)
        .transpose()
        .map_err(|m| ("--ignition-hash", m))?;
    let src = IgnitionSource::parse(src).map_err(|m| ("--ignition", m))?;
    check_plain_http(&src, hash.as_ref(), insecure).map_err(|m| ("--ignition", m))?;
    Ok(hash)
}

/// Reads the Ignition config from a file or URL and checks it.
pub(super) fn load_ignition(
    src: &IgnitionSource,
    hash: Option<&IgnitionHash>,
    work: &Path,
) -> Result<String> {
    let name = src.to_string();
    let bytes = match src {
        IgnitionSource::Url(u) => fetch_small(u, MAX_IGNITION_BYTES, work)?.ok_or_else(|| {
            InputError::new(u, "Ignition config not found (HTTP 404)").key("--ignition")
        })?,
        IgnitionSource::File(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InputError::new(name, "Ignition config not found")
                    .key("--ignition")
                    .into())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        },
    };
    if let Some(h) = hash {
        h.verify(&bytes)
            .map_err(|m| anyhow::anyhow!("{name}: {m}"))?;
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| InputError::new(name.clone(), "the Ignition config is not UTF-8 text"))?;
    image::check_ignition_config(&text, &name)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn plain_http_ignition_needs_a_hash_or_insecure() {
        let h256 = format!("sha256-{}", "ab".repeat(32));
        let h512 = format!("sha512-{}", "CD".repeat(64));
        // https and files: fine without a hash.
        assert_eq!(ignition_policy("https://h/c.ign", None, false), Ok(None));
        assert_eq!(ignition_policy("/srv/c.ign", None, false), Ok(None));
        assert_eq!(ignition_policy("c.ign", None, false), Ok(None));
        // Plain http: refused without a hash, naming the way out.
        let (key, m) = ignition_policy("http://10.0.0.1/c.ign", None, false).unwrap_err();
        assert_eq!(key, "--ignition");
        assert!(
            m.contains("--ignition-hash") && m.contains("--insecure-ignition"),
            "{m}"
        );
        assert!(ignition_policy("HTTP://10.0.0.1/c.ign", None, false).is_err());
        // ... accepted with a hash or the explicit flag.
        assert_eq!(
            ignition_policy("http://10.0.0.1/c.ign", Some(&h256), false),
            Ok(Some(IgnitionHash::Sha256("ab".repeat(32))))
        );
        assert_eq!(
            ignition_policy("http://10.0.0.1/c.ign", Some(&h512), false),
            Ok(Some(IgnitionHash::Sha512("cd".repeat(64))))
        );
        assert_eq!(ignition_policy("http://h/c.ign", None, true), Ok(None));
        // Bad hashes and URLs are refused at the door.
        for bad in [
            "ab".repeat(32),
            format!("md5-{}", "ab".repeat(16)),
            format!("sha256-{}", "ab".repeat(31)),
            format!("sha256-{}", "zz".repeat(32)),
            format!("sha512-{}", "ab".repeat(32)),
        ] {
            let (key, _) = ignition_policy("https://h/c", Some(&bad), false).unwrap_err();
            assert_eq!(key, "--ignition-hash", "{bad}");
        }
        for bad in ["http:///c.ign", "ftp://h/c.ign", "https://h:0/c"] {
            assert!(ignition_policy(bad, Some(&h256), true).is_err(), "{bad}");
        }
        // Verification.
        let data = b"{\"ignition\":{\"version\":\"3.3.0\"}}";
        let good =
            IgnitionHash::parse(&format!("sha256-{}", hex::encode(Sha256::digest(data)))).unwrap();
        good.verify(data).unwrap();
        let e = good.verify(b"{}").unwrap_err();
        assert!(e.contains("not the expected"), "{e}");
        let good512 = IgnitionHash::parse(&format!(
            "sha512-{}",
            hex::encode(sha2::Sha512::digest(data))
        ))
        .unwrap();
        good512.verify(data).unwrap();
        assert!(good512.verify(b"x").is_err());
    }
}
