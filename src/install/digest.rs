//! The digests `kiln install` checks against: an image's sha256 (`--image-sha256`) and an
//! Ignition config's hash (`--ignition-hash`), parsed once, by clap, into these types.

use crate::error::InputError;
use anyhow::Result;
use sha2::Digest;

/// A sha256 digest as 64 lowercase hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256(String);

impl Sha256 {
    /// Parses 64 hexadecimal digits (either case, surrounding blanks ignored).
    pub fn parse(s: &str) -> std::result::Result<Sha256, String> {
        let t = s.trim().to_ascii_lowercase();
        if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not a sha256 (64 hexadecimal digits)"));
        }
        Ok(Sha256(t))
    }

    /// The lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<String> for Sha256 {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

/// Parses a `--image-sha256` value given as a string (the library's door; the command
/// line parses it with [`Sha256::parse`]).
pub fn parse_sha256(s: &str) -> Result<Sha256> {
    Sha256::parse(s).map_err(|m| {
        InputError::new("command line", m)
            .key("--image-sha256")
            .into()
    })
}

/// The sha256 an image must match and where that value came from.
#[derive(Debug, Clone)]
pub(super) struct Expected {
    pub(super) sha256: String,
    pub(super) from: String,
}

impl Expected {
    /// Fails with a [`DigestMismatch`] unless `actual` (the sha256 of what was read from
    /// `source_name`) is the expected one.
    pub(super) fn check(&self, source_name: &str, actual: &str) -> Result<()> {
        if self.sha256 != actual {
            return Err(DigestMismatch {
                source_name: source_name.to_string(),
                expected: self.sha256.clone(),
                from: self.from.clone(),
                actual: actual.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

/// A sha256 mismatch: the caller knows nothing was accepted.
#[derive(Debug, thiserror::Error)]
#[error(
    "sha256 mismatch for {source_name}: expected {expected} (from {from}), got {actual}; \
     the image was not accepted"
)]
pub struct DigestMismatch {
    pub source_name: String,
    pub expected: String,
    pub from: String,
    pub actual: String,
}

/// An expected hash of an Ignition config (`--ignition-hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnitionHash {
    Sha256(String),
    Sha512(String),
}

impl IgnitionHash {
    /// Parses `sha256-<64 hex>` or `sha512-<128 hex>` (Ignition's own spelling).
    pub fn parse(s: &str) -> std::result::Result<IgnitionHash, String> {
        let bad = || {
            format!(
                "{s:?} is not an Ignition config hash: write sha256-<64 hex digits> or \
                 sha512-<128 hex digits> (e.g. sha256-$(sha256sum config.ign | cut -d' ' -f1))"
            )
        };
        let (func, hex) = s.split_once('-').ok_or_else(bad)?;
        let hex = hex.to_ascii_lowercase();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match (func, hex.len()) {
            ("sha256", 64) => Ok(IgnitionHash::Sha256(hex)),
            ("sha512", 128) => Ok(IgnitionHash::Sha512(hex)),
            _ => Err(bad()),
        }
    }

    /// Checks `data` against the hash; the message names both sums.
    pub fn verify(&self, data: &[u8]) -> std::result::Result<(), String> {
        let (name, want, got) = match self {
            IgnitionHash::Sha256(w) => ("sha256", w, hex::encode(sha2::Sha256::digest(data))),
            IgnitionHash::Sha512(w) => ("sha512", w, hex::encode(sha2::Sha512::digest(data))),
        };
        if *want == got {
            Ok(())
        } else {
            Err(format!(
                "the Ignition config's {name} is {got}, not the expected {want}: refusing it"
            ))
        }
    }
}
