//! Resources (a source URL, its verification and headers) and URLs, data URLs among
//! them: the rules every section that fetches something shares.

use super::{arr, is_null, non_empty, st, Validator, P};
use crate::ignition::json::Node;

/// Scheme of a URL the way Go's url.Parse sees it (lowercased), or an error message.
pub(super) fn url_scheme(s: &str) -> Result<String, &'static str> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("unable to parse url");
    }
    // Percent escapes must be well formed.
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok && !s.starts_with("data:") {
                return Err("unable to parse url");
            }
        }
        i += 1;
    }
    match s.find(':') {
        Some(0) => Err("unable to parse url"),
        Some(c) => {
            let sch = &s[..c];
            let first_alpha = sch.as_bytes()[0].is_ascii_alphabetic();
            if first_alpha
                && sch
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
            {
                Ok(sch.to_ascii_lowercase())
            } else {
                Ok(String::new())
            }
        }
        None => Ok(String::new()),
    }
}

/// Decodes a `data:` URL (RFC 2397). Used by the validator and by tests.
pub fn decode_data_url(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let rest = s
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &s[5..])
        .ok_or("not a data URL")?;
    let comma = rest.find(',').ok_or("data URL without ','")?;
    let (header, data) = (&rest[..comma], &rest[comma + 1..]);
    let mut params: Vec<&str> = header.split(';').collect();
    let b64 = params
        .last()
        .is_some_and(|p| p.eq_ignore_ascii_case("base64"));
    if b64 {
        params.pop();
    }
    let media = params.first().copied().unwrap_or("");
    if !media.is_empty() {
        let mut parts = media.splitn(2, '/');
        let (t, st) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let token = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
        };
        if !token(t) || !token(st) {
            return Err(format!("invalid media type {media:?} in data URL"));
        }
    }
    for p in params.iter().skip(1) {
        if !p.contains('=') {
            return Err(format!("invalid parameter {p:?} in data URL"));
        }
    }
    let raw = percent_decode(data)?;
    if b64 {
        let text: Vec<u8> = raw
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&text))
            .map_err(|e| format!("invalid base64 in data URL: {e}"))
    } else {
        Ok(raw)
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid escape at byte {i} in data URL"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

impl Validator<'_> {
    pub(super) fn required_source(&mut self, root: &Node, res: &Node, p: &P) {
        if !non_empty(st(res, "source")) {
            self.err(root, p, "source is required");
        }
    }

    pub(super) fn url(&mut self, root: &Node, u: &str, p: &P) {
        let scheme = match url_scheme(u) {
            Ok(s) => s,
            Err(e) => return self.err(root, p, e),
        };
        let ok: &[&str] = if self.minor >= 2 {
            &["http", "https", "tftp", "s3", "gs", "data"]
        } else {
            &["http", "https", "tftp", "s3", "data"]
        };
        if !ok.contains(&scheme.as_str()) {
            let shown = if scheme.is_empty() {
                "none".to_string()
            } else {
                format!("{scheme:?}")
            };
            return self.err(
                root,
                p,
                format!("invalid url scheme {shown}: use one of {}", ok.join(", ")),
            );
        }
        if scheme == "data" {
            if let Err(e) = decode_data_url(u) {
                self.err(root, p, e);
            }
        }
        if scheme == "s3" {
            if let Some(q) = u.split_once('?').map(|x| x.1) {
                for kv in q.split('&') {
                    if kv == "versionId" || kv == "versionId=" {
                        self.err(root, p, "invalid S3 object VersionId");
                    }
                }
            }
        }
    }

    /// `contents`: a file's contents or append entry (which had compression from 3.0).
    pub(super) fn resource(&mut self, root: &Node, res: &Node, p: &P, contents: bool) {
        if is_null(res) {
            return;
        }
        if let Some(c) = st(res, "compression").filter(|_| self.minor >= 1 || contents) {
            if !c.is_empty() && c != "gzip" {
                self.err(
                    root,
                    &p.k("compression"),
                    format!("invalid compression method {c:?}: only \"gzip\" is supported"),
                );
            }
        }
        let source = st(res, "source");
        if let Some(v) = res.get("verification") {
            if let Some(h) = st(v, "hash") {
                let ph = p.k("verification").k("hash");
                if source.is_none() && (self.minor >= 1 || contents) {
                    self.err(
                        root,
                        &ph,
                        "source must be specified if verification is specified",
                    );
                }
                self.hash(root, h, &ph);
            }
        }
        if let Some(s) = source.filter(|s| !s.is_empty()) {
            self.url(root, s, &p.k("source"));
        }
        let headers = if self.minor >= 1 {
            arr(res, "httpHeaders")
        } else {
            &[]
        };
        if !headers.is_empty() {
            let ph = p.k("httpHeaders");
            match source.filter(|s| !s.is_empty()).map(url_scheme) {
                None | Some(Err(_)) => self.err(root, &ph, "unable to parse url"),
                Some(Ok(s)) if s != "http" && s != "https" => {
                    self.err(root, &ph, "cannot use HTTP headers with this source scheme")
                }
                _ => {}
            }
            for (i, h) in headers.iter().enumerate() {
                if st(h, "name").unwrap_or("").is_empty() {
                    self.err(root, &ph.i(i).k("name"), "HTTP header name can't be empty");
                }
                if st(h, "value") == Some("") {
                    self.err(root, &ph.i(i).k("value"), "unable to parse HTTP header");
                }
            }
            self.dups(root, &[(ph, headers)], |n| {
                st(n, "name").unwrap_or("").to_string()
            });
        }
    }

    fn hash(&mut self, root: &Node, h: &str, p: &P) {
        let Some((func, sum)) = h.split_once('-') else {
            return self.err(
                root,
                p,
                "malformed hash specifier: expected sha512-<128 hex digits> or sha256-<64 hex digits>",
            );
        };
        let len = match func {
            "sha512" => 128,
            "sha256" if self.minor >= 1 => 64,
            _ => {
                return self.err(
                    root,
                    p,
                    format!("unrecognized hash function {func:?}: use sha512 or sha256"),
                )
            }
        };
        if sum.len() != len {
            self.err(
                root,
                p,
                format!(
                    "incorrect size for hash sum: {func} takes {len} hex digits, found {}",
                    sum.len()
                ),
            );
        } else if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.err(
                root,
                p,
                "hash sum is not hexadecimal: it can never match (Ignition would fail at first boot)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url("data:,a%20b").unwrap(), b"a b");
        assert_eq!(decode_data_url("data:;base64,aGk=").unwrap(), b"hi");
        assert!(decode_data_url("data:;base64,***").is_err());
        assert!(decode_data_url("data:nocomma").is_err());
    }
}
