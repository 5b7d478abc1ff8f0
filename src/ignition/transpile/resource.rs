//! Resources (inline, local or remote contents) and the data URLs that embed them.

use super::{chk, terr, Ctx, R};
use crate::ignition::source::{KeyPath, ResourceSrc};
use ignition_config::v3_3 as ign;
use std::io::Write;

/// Percent-encodes everything but unreserved characters and a few that are safe in a
/// data URL's data part.
fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~/:=,@!".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(b);
    e.finish().unwrap_or_default()
}

/// A `data:` URL for `b`; when `allow_gzip`, gzip+base64 if that is shorter. Returns the
/// URL and the compression to declare.
pub fn data_url(b: &[u8], allow_gzip: bool) -> (String, Option<String>) {
    use base64::Engine;
    let plain = format!("data:,{}", percent_encode(b));
    if allow_gzip {
        let gz = format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(gzip(b))
        );
        if gz.len() < plain.len() {
            return (gz, Some("gzip".into()));
        }
    }
    (plain, None)
}

fn check_hash(h: &str, key: &KeyPath) -> R<()> {
    let ok = match h.split_once('-') {
        Some(("sha512", s)) => s.len() == 128,
        Some(("sha256", s)) => s.len() == 64,
        _ => false,
    } && h
        .split_once('-')
        .is_some_and(|(_, s)| s.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(terr(
            key,
            format!("hash {h:?} is not sha512-<128 hex digits> or sha256-<64 hex digits>"),
        ))
    }
}

pub(super) fn resource(
    ctx: &Ctx,
    r: &ResourceSrc,
    key: &KeyPath,
    allow_gzip: bool,
) -> R<ign::Resource> {
    let given: Vec<&str> = [
        r.inline.as_ref().map(|_| "inline"),
        r.local.as_ref().map(|_| "local"),
        r.source.as_ref().map(|_| "source"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        return Err(terr(
            key,
            format!(
                "give exactly one of inline, local or source (found {})",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            ),
        ));
    }
    let mut out = ign::Resource::default();
    if let Some(src) = &r.source {
        out.source = Some(src.clone());
        out.compression = r.compression.clone();
        if let Some(h) = r.verification.as_ref().and_then(|v| v.hash.as_ref()) {
            check_hash(h, &key.k("verification").k("hash"))?;
            out.verification = Some(ign::Verification {
                hash: Some(h.clone()),
            });
        }
        if !r.http_headers.is_empty() {
            out.http_headers = Some(
                r.http_headers
                    .iter()
                    .map(|h| ign::HttpHeadersItem {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
            );
        }
        return Ok(out);
    }
    for (set, what) in [
        (r.compression.is_some(), "compression"),
        (r.verification.is_some(), "verification"),
        (!r.http_headers.is_empty(), "http_headers"),
    ] {
        if set {
            return Err(terr(
                &key.k(what),
                format!("{what} applies to remote sources only (inline and local contents are embedded, compressed when that is smaller)"),
            ));
        }
    }
    let bytes = match (&r.inline, &r.local) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (_, Some(l)) => ctx.read_local(l, &key.k("local"))?,
        _ => unreachable!("checked above"),
    };
    let (url, comp) = data_url(&bytes, allow_gzip);
    out.source = Some(url);
    out.compression = comp;
    Ok(out)
}

/// An http(s) source or proxy URL goes through [`crate::validate::url`]; other schemes
/// (data, tftp, s3, gs) are left to Ignition's rules in the validator.
/// Each resource of a list, at `key`'s indices; the first error wins.
pub(super) fn resources(
    ctx: &Ctx,
    list: &[ResourceSrc],
    key: &KeyPath,
    allow_gzip: bool,
) -> R<Vec<ign::Resource>> {
    list.iter()
        .enumerate()
        .map(|(i, r)| resource(ctx, r, &key.i(i), allow_gzip))
        .collect()
}

fn chk_url(u: &str, key: &KeyPath) -> R<()> {
    let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        chk(key, crate::validate::url(u, crate::validate::Schemes::Http))?;
    }
    Ok(())
}

pub(super) fn chk_resource(r: &ResourceSrc, key: &KeyPath) -> R<()> {
    if let Some(src) = &r.source {
        chk_url(src, &key.k("source"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_pick_the_shorter() {
        let (u, c) = data_url(b"hello world\n", true);
        assert_eq!(u, "data:,hello%20world%0A");
        assert_eq!(c, None);
        let big = "x".repeat(4096);
        let (u, c) = data_url(big.as_bytes(), true);
        assert!(u.starts_with("data:;base64,"));
        assert_eq!(c.as_deref(), Some("gzip"));
    }
}
