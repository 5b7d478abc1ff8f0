//! Validation of Ignition 3.0–3.3 JSON with JSON paths and line:col.
//!
//! Two passes over a position-keeping parse: a schema pass (types, unknown keys as warnings,
//! keys newer than the config's version) and, when the types are right, a semantic pass with
//! the rules Ignition 2.14 applies when it parses a config, plus a few checks of kiln's own
//! (hash sums that are not hex, for example) that would only fail later, at first boot.

use super::json::{self, Kind, Node};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// JSON path in Ignition's notation: `$.storage.files.0.path`.
    pub path: String,
    /// 1-based line and column of the value (or of the key, for unknown keys).
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{sev} at {}, line {} col {}: {}",
            self.path, self.line, self.col, self.message
        )
    }
}

/// What `validate_json` found. Valid when it holds no error (warnings allowed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The config's `ignition.version`, when it could be read.
    pub version: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Validates an Ignition config given as JSON text. Never panics; every problem is a
/// diagnostic.
pub fn validate_json(text: &str) -> Report {
    let mut v = Validator {
        text,
        minor: 3,
        diags: Vec::new(),
    };
    if text.trim().is_empty() {
        v.diags.push(Diagnostic {
            severity: Severity::Error,
            path: "$".into(),
            line: 1,
            col: 1,
            message: "not a config (empty)".into(),
        });
        return Report {
            version: None,
            diagnostics: v.diags,
        };
    }
    let root = match json::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, col) = crate::error::line_col(text, e.pos);
            v.diags.push(Diagnostic {
                severity: Severity::Error,
                path: "$".into(),
                line,
                col,
                message: format!("invalid JSON: {}", e.message),
            });
            return Report {
                version: None,
                diagnostics: v.diags,
            };
        }
    };
    let version = v.check_version(&root);
    if let Some(minor) = version.as_ref().and_then(|(_, m)| *m) {
        v.minor = minor;
        let before = v.diags.len();
        let mut p = P::root();
        v.check_type(&root, Ty::Obj(Def::Config), &mut p);
        let type_errors = v.diags[before..]
            .iter()
            .any(|d| d.severity == Severity::Error);
        if !type_errors {
            v.semantic(&root);
        }
    }
    // Stable order: by position, errors first at the same place.
    let mut diags = v.diags;
    diags.sort_by_key(|d| (d.line, d.col, d.severity == Severity::Warning));
    diags.dedup();
    Report {
        version: version.map(|(s, _)| s),
        diagnostics: diags,
    }
}

// ---------------------------------------------------------------------------------------
// JSON paths

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

#[derive(Debug, Clone)]
struct P(Vec<Seg>);

impl P {
    fn root() -> P {
        P(Vec::new())
    }
    fn k(&self, key: &str) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }
    fn i(&self, idx: usize) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Idx(idx));
        p
    }
    fn render(&self) -> String {
        let mut s = String::from("$");
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Seg::Idx(i) => {
                    s.push('.');
                    s.push_str(&i.to_string());
                }
            }
        }
        s
    }
}

/// Offset of the deepest node that exists along `path`.
fn locate(root: &Node, path: &P) -> usize {
    let mut n = root;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => n.get(k),
            Seg::Idx(i) => n.as_array().get(*i),
        };
        match next {
            Some(x) => n = x,
            None => break,
        }
    }
    n.pos
}

// ---------------------------------------------------------------------------------------
// Schema

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
    Obj(Def),
    ArrStr,
    ArrObj(Def),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Def {
    Config,
    Ignition,
    IgnitionConfig,
    Proxy,
    Security,
    Tls,
    Timeouts,
    Kargs,
    Passwd,
    User,
    Group,
    Resource,
    FileContents,
    Header,
    Verification,
    Storage,
    File,
    Directory,
    Link,
    NodeUser,
    NodeGroup,
    Disk,
    Partition,
    Filesystem,
    Luks,
    Clevis,
    ClevisCustom,
    Tang,
    Raid,
    Systemd,
    Unit,
    Dropin,
}

/// The keys of each object in spec 3.`minor`, from the Ignition spec's types.
fn fields(def: Def, minor: u8) -> Vec<(&'static str, Ty)> {
    use Def as D;
    use Ty::*;
    let node = [
        ("group", Obj(D::NodeGroup)),
        ("overwrite", Bool),
        ("path", Str),
        ("user", Obj(D::NodeUser)),
    ];
    let mut f: Vec<(&'static str, Ty)> = match def {
        D::Config => vec![
            ("ignition", Obj(D::Ignition)),
            ("passwd", Obj(D::Passwd)),
            ("storage", Obj(D::Storage)),
            ("systemd", Obj(D::Systemd)),
        ],
        D::Ignition => vec![
            ("config", Obj(D::IgnitionConfig)),
            ("security", Obj(D::Security)),
            ("timeouts", Obj(D::Timeouts)),
            ("version", Str),
        ],
        D::IgnitionConfig => vec![
            ("merge", ArrObj(D::Resource)),
            ("replace", Obj(D::Resource)),
        ],
        D::Proxy => vec![("httpProxy", Str), ("httpsProxy", Str), ("noProxy", ArrStr)],
        D::Security => vec![("tls", Obj(D::Tls))],
        D::Tls => vec![("certificateAuthorities", ArrObj(D::Resource))],
        D::Timeouts => vec![("httpResponseHeaders", Int), ("httpTotal", Int)],
        D::Kargs => vec![("shouldExist", ArrStr), ("shouldNotExist", ArrStr)],
        D::Passwd => vec![("groups", ArrObj(D::Group)), ("users", ArrObj(D::User))],
        D::User => vec![
            ("gecos", Str),
            ("groups", ArrStr),
            ("homeDir", Str),
            ("name", Str),
            ("noCreateHome", Bool),
            ("noLogInit", Bool),
            ("noUserGroup", Bool),
            ("passwordHash", Str),
            ("primaryGroup", Str),
            ("sshAuthorizedKeys", ArrStr),
            ("shell", Str),
            ("system", Bool),
            ("uid", Int),
        ],
        D::Group => vec![
            ("gid", Int),
            ("name", Str),
            ("passwordHash", Str),
            ("system", Bool),
        ],
        D::Resource => vec![("source", Str), ("verification", Obj(D::Verification))],
        D::FileContents => vec![
            ("compression", Str),
            ("source", Str),
            ("verification", Obj(D::Verification)),
        ],
        D::Header => vec![("name", Str), ("value", Str)],
        D::Verification => vec![("hash", Str)],
        D::Storage => vec![
            ("directories", ArrObj(D::Directory)),
            ("disks", ArrObj(D::Disk)),
            ("files", ArrObj(D::File)),
            ("filesystems", ArrObj(D::Filesystem)),
            ("links", ArrObj(D::Link)),
            ("raid", ArrObj(D::Raid)),
        ],
        D::File => {
            let mut v = node.to_vec();
            v.extend([
                ("append", ArrObj(D::FileContents)),
                ("contents", Obj(D::FileContents)),
                ("mode", Int),
            ]);
            v
        }
        D::Directory => {
            let mut v = node.to_vec();
            v.push(("mode", Int));
            v
        }
        D::Link => {
            let mut v = node.to_vec();
            v.extend([("hard", Bool), ("target", Str)]);
            v
        }
        D::NodeUser | D::NodeGroup => vec![("id", Int), ("name", Str)],
        D::Disk => vec![
            ("device", Str),
            ("partitions", ArrObj(D::Partition)),
            ("wipeTable", Bool),
        ],
        D::Partition => vec![
            ("guid", Str),
            ("label", Str),
            ("number", Int),
            ("shouldExist", Bool),
            ("sizeMiB", Int),
            ("startMiB", Int),
            ("typeGuid", Str),
            ("wipePartitionEntry", Bool),
        ],
        D::Filesystem => vec![
            ("device", Str),
            ("format", Str),
            ("label", Str),
            ("options", ArrStr),
            ("path", Str),
            ("uuid", Str),
            ("wipeFilesystem", Bool),
        ],
        D::Luks => vec![
            ("clevis", Obj(D::Clevis)),
            ("device", Str),
            ("keyFile", Obj(D::Resource)),
            ("label", Str),
            ("name", Str),
            ("options", ArrStr),
            ("uuid", Str),
            ("wipeVolume", Bool),
        ],
        D::Clevis => vec![
            ("custom", Obj(D::ClevisCustom)),
            ("tang", ArrObj(D::Tang)),
            ("threshold", Int),
            ("tpm2", Bool),
        ],
        D::ClevisCustom => vec![("config", Str), ("needsNetwork", Bool), ("pin", Str)],
        D::Tang => vec![("thumbprint", Str), ("url", Str)],
        D::Raid => vec![
            ("devices", ArrStr),
            ("level", Str),
            ("name", Str),
            ("options", ArrStr),
            ("spares", Int),
        ],
        D::Systemd => vec![("units", ArrObj(D::Unit))],
        D::Unit => vec![
            ("contents", Str),
            ("dropins", ArrObj(D::Dropin)),
            ("enabled", Bool),
            ("mask", Bool),
            ("name", Str),
        ],
        D::Dropin => vec![("contents", Str), ("name", Str)],
    };
    // Keys added by later spec versions.
    let added: &[(u8, Def, &'static str, Ty)] = &[
        (1, D::Ignition, "proxy", Obj(D::Proxy)),
        (1, D::Resource, "compression", Str),
        (1, D::Resource, "httpHeaders", ArrObj(D::Header)),
        (1, D::FileContents, "httpHeaders", ArrObj(D::Header)),
        (1, D::Filesystem, "mountOptions", ArrStr),
        (2, D::Storage, "luks", ArrObj(D::Luks)),
        (2, D::User, "shouldExist", Bool),
        (2, D::Group, "shouldExist", Bool),
        (2, D::Partition, "resize", Bool),
        (3, D::Config, "kernelArguments", Obj(D::Kargs)),
    ];
    for (m, d, k, t) in added {
        if *d == def && minor >= *m {
            f.push((k, *t));
        }
    }
    f
}

// ---------------------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    minor: u8,
    diags: Vec<Diagnostic>,
}

fn is_null(n: &Node) -> bool {
    n.kind == Kind::Null
}

/// The string at `key`, None when absent or null.
fn st<'n>(n: &'n Node, key: &str) -> Option<&'n str> {
    n.get(key).and_then(|v| v.as_str())
}

fn int(n: &Node, key: &str) -> Option<i64> {
    n.get(key).and_then(|v| v.as_int())
}

fn boolean(n: &Node, key: &str) -> Option<bool> {
    n.get(key).and_then(|v| v.as_bool())
}

fn arr<'n>(n: &'n Node, key: &str) -> &'n [Node] {
    n.get(key).map(|v| v.as_array()).unwrap_or(&[])
}

fn non_empty(s: Option<&str>) -> bool {
    s.is_some_and(|s| !s.is_empty())
}

/// Go's path.Clean for the cases Ignition cares about.
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn path_error(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("path not specified")
    } else if !p.starts_with('/') {
        Some("path not absolute")
    } else if clean_path(p) != p {
        Some("path is not fully simplified")
    } else {
        None
    }
}

/// Scheme of a URL the way Go's url.Parse sees it (lowercased), or an error message.
fn url_scheme(s: &str) -> Result<String, &'static str> {
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

fn is_guid(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses unit-file text the way systemd's (and go-systemd's) reader does, far enough to
/// find syntax errors and the section names.
fn unit_sections(contents: &str) -> Result<Vec<String>, String> {
    let mut sections = Vec::new();
    let mut in_section = false;
    let mut continued = false;
    for line in contents.lines() {
        let t = line.trim();
        if continued {
            continued = t.ends_with('\\');
            continue;
        }
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or("invalid unit content: unable to find end of section")?;
            let garbage = rest[end + 1..].trim();
            if !garbage.is_empty() {
                return Err(format!(
                    "invalid unit content: found garbage after section name: {garbage:?}"
                ));
            }
            sections.push(rest[..end].to_string());
            in_section = true;
            continue;
        }
        if in_section && !t.contains('=') {
            return Err(format!(
                "invalid unit content: line {t:?} is neither a section header nor key=value"
            ));
        }
        continued = t.ends_with('\\');
    }
    Ok(sections)
}

impl Validator<'_> {
    fn push(&mut self, sev: Severity, root: &Node, p: &P, msg: impl Into<String>) {
        let pos = locate(root, p);
        self.push_at(sev, p, pos, msg);
    }

    fn push_at(&mut self, sev: Severity, p: &P, pos: usize, msg: impl Into<String>) {
        let (line, col) = crate::error::line_col(self.text, pos);
        self.diags.push(Diagnostic {
            severity: sev,
            path: p.render(),
            line,
            col,
            message: msg.into(),
        });
    }

    fn err(&mut self, root: &Node, p: &P, msg: impl Into<String>) {
        self.push(Severity::Error, root, p, msg);
    }

    fn warn(&mut self, root: &Node, p: &P, msg: impl Into<String>) {
        self.push(Severity::Warning, root, p, msg);
    }

    /// Reads `ignition.version`: (text, Some(minor)) when it is a 3.x version kiln knows.
    fn check_version(&mut self, root: &Node) -> Option<(String, Option<u8>)> {
        let p = P::root().k("ignition").k("version");
        if !matches!(root.kind, Kind::Obj(_)) {
            let pos = root.pos;
            self.push_at(
                Severity::Error,
                &P::root(),
                pos,
                format!("a config must be a JSON object, not {}", root.type_name()),
            );
            return None;
        }
        let ver = root.get("ignition").and_then(|i| i.get("version"));
        let Some(text) = ver.and_then(|v| v.as_str()) else {
            self.err(
                root,
                &p,
                "ignition.version is required (this validator reads 3.0.0 to 3.3.0)",
            );
            return None;
        };
        let minor = match text {
            "3.0.0" => Some(0),
            "3.1.0" => Some(1),
            "3.2.0" => Some(2),
            "3.3.0" => Some(3),
            _ => None,
        };
        if minor.is_none() {
            let semverish = text.split('.').count() == 3
                && text
                    .split(['.', '-', '+'])
                    .next()
                    .is_some_and(|m| m.parse::<u32>().is_ok());
            let msg = if semverish {
                format!(
                    "unsupported config version {text:?}: kiln validates 3.0.0 to 3.3.0 (Debian's Ignition 2.14 reads these; kiln emits 3.3.0)"
                )
            } else {
                format!("invalid config version (couldn't parse) {text:?}")
            };
            self.err(root, &p, msg);
        }
        Some((text.to_string(), minor))
    }

    fn check_type(&mut self, n: &Node, ty: Ty, p: &mut P) {
        if is_null(n) {
            return; // Go leaves the field at its zero value.
        }
        let want = match ty {
            Ty::Str => "string",
            Ty::Int => "integer",
            Ty::Bool => "boolean",
            Ty::Obj(_) => "object",
            Ty::ArrStr | Ty::ArrObj(_) => "array",
        };
        let ok = match (&n.kind, ty) {
            (Kind::Str(_), Ty::Str) | (Kind::Bool(_), Ty::Bool) => true,
            (Kind::Num(raw), Ty::Int) => {
                if raw.parse::<i64>().is_err() {
                    let pos = n.pos;
                    self.push_at(
                        Severity::Error,
                        p,
                        pos,
                        format!("expected an integer, found the number {raw}"),
                    );
                }
                return;
            }
            (Kind::Obj(members), Ty::Obj(def)) => {
                let fs = fields(def, self.minor);
                for m in members {
                    // Go fills a field from a key that differs only in case, and
                    // Ignition still calls that key unused.
                    if let Some((_, t)) = fs
                        .iter()
                        .find(|(k, _)| *k != m.key && k.eq_ignore_ascii_case(&m.key))
                    {
                        let mut child = p.k(&m.key);
                        self.check_type(&m.value, *t, &mut child);
                    }
                    match fs.iter().find(|(k, _)| *k == m.key) {
                        Some((_, t)) => {
                            let mut child = p.k(&m.key);
                            self.check_type(&m.value, *t, &mut child);
                        }
                        None => {
                            let later = (self.minor + 1..=3)
                                .any(|mi| fields(def, mi).iter().any(|(k, _)| *k == m.key));
                            let msg = if later {
                                format!(
                                    "Unused key {}: not in spec 3.{}.0 (a later spec version has it)",
                                    m.key, self.minor
                                )
                            } else {
                                format!("Unused key {}", m.key)
                            };
                            let pos = m.key_pos;
                            self.push_at(Severity::Warning, &p.k(&m.key), pos, msg);
                        }
                    }
                }
                true
            }
            (Kind::Arr(items), Ty::ArrStr | Ty::ArrObj(_)) => {
                let et = match ty {
                    Ty::ArrObj(d) => Ty::Obj(d),
                    _ => Ty::Str,
                };
                for (i, it) in items.iter().enumerate() {
                    let mut child = p.i(i);
                    self.check_type(it, et, &mut child);
                }
                true
            }
            _ => false,
        };
        if !ok {
            let pos = n.pos;
            let msg = format!("expected {want}, found {}", n.type_name());
            self.push_at(Severity::Error, p, pos, msg);
        }
    }

    // -------------------------------------------------------------------------------
    // Semantic rules

    fn semantic(&mut self, root: &Node) {
        let r = P::root();
        if let Some(ign) = root.get("ignition") {
            let p = r.k("ignition");
            if let Some(cfg) = ign.get("config") {
                let pc = p.k("config");
                for (i, m) in arr(cfg, "merge").iter().enumerate() {
                    if self.minor >= 1 {
                        // 3.0's config references had an optional source.
                        self.required_source(root, m, &pc.k("merge").i(i));
                    }
                    self.resource(root, m, &pc.k("merge").i(i), false);
                }
                self.dups(root, &[(pc.k("merge"), arr(cfg, "merge"))], |n| {
                    st(n, "source").unwrap_or("").to_string()
                });
                if let Some(rep) = cfg.get("replace") {
                    self.resource(root, rep, &pc.k("replace"), false);
                }
            }
            if let Some(tls) = ign.get("security").and_then(|s| s.get("tls")) {
                let pt = p.k("security").k("tls").k("certificateAuthorities");
                let cas = arr(tls, "certificateAuthorities");
                for (i, ca) in cas.iter().enumerate() {
                    self.required_source(root, ca, &pt.i(i));
                    self.resource(root, ca, &pt.i(i), false);
                }
                self.dups(root, &[(pt, cas)], |n| {
                    st(n, "source").unwrap_or("").to_string()
                });
            }
            if let Some(px) = ign.get("proxy").filter(|_| self.minor >= 1) {
                let pp = p.k("proxy");
                for (k, http_ok) in [("httpProxy", true), ("httpsProxy", false)] {
                    if let Some(u) = st(px, k) {
                        match url_scheme(u) {
                            Err(e) => self.err(root, &pp.k(k), e),
                            Ok(s) if s != "http" && s != "https" => {
                                self.err(root, &pp.k(k), "proxies must be http(s)")
                            }
                            Ok(s) if s == "http" && !http_ok => self.warn(
                                root,
                                &pp.k(k),
                                "insecure plaintext HTTP proxy specified for HTTPS resources",
                            ),
                            Ok(_) => {}
                        }
                    }
                }
                self.dup_strings(root, &[(pp.k("noProxy"), arr(px, "noProxy"))]);
            }
            if let Some(t) = ign.get("timeouts") {
                for k in ["httpResponseHeaders", "httpTotal"] {
                    if int(t, k).is_some_and(|v| v < 0) {
                        self.warn(root, &p.k("timeouts").k(k), "negative timeout");
                    }
                }
            }
        }
        if let Some(k) = root.get("kernelArguments").filter(|_| self.minor >= 3) {
            let pk = r.k("kernelArguments");
            self.dup_strings(
                root,
                &[
                    (pk.k("shouldExist"), arr(k, "shouldExist")),
                    (pk.k("shouldNotExist"), arr(k, "shouldNotExist")),
                ],
            );
        }
        if let Some(pw) = root.get("passwd") {
            let pp = r.k("passwd");
            let users = arr(pw, "users");
            for (i, u) in users.iter().enumerate() {
                let pu = pp.k("users").i(i);
                if !non_empty(st(u, "name")) {
                    self.warn(
                        root,
                        &pu.k("name"),
                        "user name is empty: Ignition accepts the config but cannot create the user",
                    );
                }
                self.dup_strings(root, &[(pu.k("groups"), arr(u, "groups"))]);
                self.dup_strings(
                    root,
                    &[(pu.k("sshAuthorizedKeys"), arr(u, "sshAuthorizedKeys"))],
                );
            }
            self.dups(root, &[(pp.k("users"), users)], |n| {
                st(n, "name").unwrap_or("").to_string()
            });
            let groups = arr(pw, "groups");
            for (i, g) in groups.iter().enumerate() {
                if !non_empty(st(g, "name")) {
                    self.warn(
                        root,
                        &pp.k("groups").i(i).k("name"),
                        "group name is empty: Ignition accepts the config but cannot create the group",
                    );
                }
            }
            self.dups(root, &[(pp.k("groups"), groups)], |n| {
                st(n, "name").unwrap_or("").to_string()
            });
        }
        if let Some(s) = root.get("storage") {
            self.storage(root, s, &r.k("storage"));
        }
        if let Some(sd) = root.get("systemd") {
            let pu = r.k("systemd").k("units");
            let units = arr(sd, "units");
            for (i, u) in units.iter().enumerate() {
                self.unit(root, u, &pu.i(i));
            }
            self.dups(root, &[(pu, units)], |n| {
                st(n, "name").unwrap_or("").to_string()
            });
        }
    }

    /// Ignition's duplicate rule: within the lists given (which share one key space), a
    /// later entry with the same key as an earlier one is an error at the later entry.
    fn dups(&mut self, root: &Node, lists: &[(P, &[Node])], key: impl Fn(&Node) -> String) {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (p, items) in lists {
            for (i, it) in items.iter().enumerate() {
                let k = key(it);
                let here = p.i(i);
                if let Some(first) = seen.get(&k) {
                    let msg = format!("duplicate entry defined (same as {first})");
                    self.err(root, &here, msg);
                } else {
                    seen.insert(k, here.render());
                }
            }
        }
    }

    fn dup_strings(&mut self, root: &Node, lists: &[(P, &[Node])]) {
        self.dups(root, lists, |n| n.as_str().unwrap_or("").to_string());
    }

    fn required_source(&mut self, root: &Node, res: &Node, p: &P) {
        if !non_empty(st(res, "source")) {
            self.err(root, p, "source is required");
        }
    }

    fn url(&mut self, root: &Node, u: &str, p: &P) {
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
    fn resource(&mut self, root: &Node, res: &Node, p: &P, contents: bool) {
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

    fn mode(&mut self, root: &Node, n: &Node, p: &P) {
        if let Some(m) = int(n, "mode") {
            if !(0..=0o7777).contains(&m) {
                self.err(
                    root,
                    &p.k("mode"),
                    format!("illegal file mode {m} (modes are decimal in JSON: 0644 is 420)"),
                );
            } else if m & 0o7000 != 0 {
                self.warn(
                    root,
                    &p.k("mode"),
                    "setuid/setgid/sticky bits are not supported in spec versions older than 3.4.0",
                );
            }
        }
    }

    fn node(&mut self, root: &Node, n: &Node, p: &P) {
        match st(n, "path") {
            Some(path) => {
                if let Some(e) = path_error(path) {
                    self.err(root, &p.k("path"), e);
                }
            }
            None => self.err(root, &p.k("path"), "path not specified"),
        }
        for k in ["user", "group"] {
            if let Some(o) = n.get(k) {
                if int(o, "id").is_some() && non_empty(st(o, "name")) {
                    self.err(root, &p.k(k), "cannot set both id and name");
                }
            }
        }
    }

    fn storage(&mut self, root: &Node, s: &Node, p: &P) {
        let files = arr(s, "files");
        let dirs = arr(s, "directories");
        let links = arr(s, "links");
        for (i, f) in files.iter().enumerate() {
            let pf = p.k("files").i(i);
            self.node(root, f, &pf);
            self.mode(root, f, &pf);
            let contents = f.get("contents");
            if boolean(f, "overwrite") == Some(true)
                && contents.and_then(|c| st(c, "source")).is_none()
            {
                self.err(
                    root,
                    &pf.k("overwrite"),
                    "overwrite must be false if source is unspecified",
                );
            }
            if let Some(c) = contents {
                self.resource(root, c, &pf.k("contents"), true);
            }
            for (j, a) in arr(f, "append").iter().enumerate() {
                self.resource(root, a, &pf.k("append").i(j), true);
            }
        }
        for (i, d) in dirs.iter().enumerate() {
            let pd = p.k("directories").i(i);
            self.node(root, d, &pd);
            self.mode(root, d, &pd);
        }
        for (i, l) in links.iter().enumerate() {
            self.node(root, l, &p.k("links").i(i));
        }
        // Nothing may be written through a link the config creates.
        let link_paths: Vec<&str> = links.iter().filter_map(|l| st(l, "path")).collect();
        let under_link = |path: Option<&str>| {
            path.is_some_and(|x| link_paths.iter().any(|l| x.starts_with(&format!("{l}/"))))
        };
        for (i, d) in dirs.iter().enumerate() {
            if under_link(st(d, "path")) {
                self.err(
                    root,
                    &p.k("directories").i(i),
                    "directory path includes link in config",
                );
            }
        }
        for (i, f) in files.iter().enumerate() {
            if under_link(st(f, "path")) {
                self.err(
                    root,
                    &p.k("files").i(i),
                    "file path includes link in config",
                );
            }
        }
        let dir_paths: Vec<&str> = dirs.iter().filter_map(|d| st(d, "path")).collect();
        for (i, l) in links.iter().enumerate() {
            let pl = p.k("links").i(i);
            if under_link(st(l, "path")) {
                self.err(root, &pl, "link path includes link in config");
            }
            let target = st(l, "target").unwrap_or("");
            if target.is_empty() && self.minor >= 3 {
                self.err(root, &pl.k("target"), "link target is required");
                continue;
            }
            if boolean(l, "hard") == Some(true) {
                let mut t = clean_path(target);
                if !t.starts_with('/') {
                    t = clean_path(&format!("{}/{}", st(l, "path").unwrap_or(""), target));
                }
                if dir_paths.contains(&t.as_str()) {
                    self.err(root, &pl, "hard link target is a directory");
                }
            }
        }
        self.dups(
            root,
            &[
                (p.k("directories"), dirs),
                (p.k("files"), files),
                (p.k("links"), links),
            ],
            |n| st(n, "path").unwrap_or("").to_string(),
        );

        let disks = arr(s, "disks");
        for (i, d) in disks.iter().enumerate() {
            self.disk(root, d, &p.k("disks").i(i));
        }
        self.dups(root, &[(p.k("disks"), disks)], |n| {
            st(n, "device").unwrap_or("").to_string()
        });

        let fss = arr(s, "filesystems");
        for (i, f) in fss.iter().enumerate() {
            self.filesystem(root, f, &p.k("filesystems").i(i));
        }
        self.dups(root, &[(p.k("filesystems"), fss)], |n| {
            st(n, "device").unwrap_or("").to_string()
        });

        // Keys a config's version does not have were reported as unused; they get no
        // semantic checks, as in Ignition.
        let luks = if self.minor >= 2 { arr(s, "luks") } else { &[] };
        for (i, l) in luks.iter().enumerate() {
            self.luks(root, l, &p.k("luks").i(i));
        }
        self.dups(root, &[(p.k("luks"), luks)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });

        let raids = arr(s, "raid");
        for (i, r) in raids.iter().enumerate() {
            let pr = p.k("raid").i(i);
            let spares = int(r, "spares").unwrap_or(0);
            match st(r, "level").unwrap_or("") {
                "" => self.err(root, &pr.k("level"), "raid level is required"),
                "linear" | "raid0" | "0" | "stripe" if spares != 0 => self.err(
                    root,
                    &pr.k("level"),
                    "spares unsupported for linear and raid0 arrays",
                ),
                "linear" | "raid0" | "0" | "stripe" | "raid1" | "1" | "mirror" | "raid4" | "4"
                | "raid5" | "5" | "raid6" | "6" | "raid10" | "10" => {}
                other => self.err(
                    root,
                    &pr.k("level"),
                    format!("unrecognized raid level {other:?}"),
                ),
            }
            let devs = arr(r, "devices");
            if devs.is_empty() {
                self.err(root, &pr.k("devices"), "raid devices required");
            }
            for (j, d) in devs.iter().enumerate() {
                if let Some(e) = d.as_str().and_then(path_error) {
                    self.err(root, &pr.k("devices").i(j), e);
                }
            }
            self.dup_strings(root, &[(pr.k("devices"), devs)]);
        }
        self.dups(root, &[(p.k("raid"), raids)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });
    }

    fn disk(&mut self, root: &Node, d: &Node, p: &P) {
        let dev = st(d, "device").unwrap_or("");
        if dev.is_empty() {
            return self.err(root, &p.k("device"), "disk device is required");
        }
        if let Some(e) = path_error(dev) {
            self.err(root, &p.k("device"), e);
        }
        let parts = arr(d, "partitions");
        let pp = p.k("partitions");
        for (i, part) in parts.iter().enumerate() {
            self.partition(root, part, &pp.i(i));
        }
        // Partition numbers.
        let mut nums: HashMap<i64, usize> = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            let n = int(part, "number").unwrap_or(0);
            if n != 0 && nums.insert(n, i).is_some() {
                self.err(root, &pp.i(i), format!("partition numbers collide ({n})"));
            }
        }
        // Overlaps, for partitions whose start and size are both given (start 0 = default).
        let ranges: Vec<Option<(i64, i64)>> = parts
            .iter()
            .map(|x| match (int(x, "startMiB"), int(x, "sizeMiB")) {
                (Some(s), Some(z)) if s != 0 => {
                    Some((s, if z == 0 { s } else { s.saturating_add(z - 1) }))
                }
                _ => None,
            })
            .collect();
        'outer: for (a, ra) in ranges.iter().enumerate() {
            let Some((s1, e1)) = ra else { continue };
            for (b, rb) in ranges.iter().enumerate() {
                let Some((s2, e2)) = rb else { continue };
                if a == b {
                    continue;
                }
                if (s1 >= s2 && s1 <= e2) || (e1 >= s2 && e1 <= e2) || (s1 < s2 && e1 > e2) {
                    self.err(
                        root,
                        &pp.i(b),
                        format!(
                            "partitions overlap: MiB {s1}–{e1} (partition {a}) and MiB {s2}–{e2} (partition {b})"
                        ),
                    );
                    break 'outer;
                }
            }
        }
        let zero = parts.iter().any(|x| int(x, "number").unwrap_or(0) == 0);
        let gone = parts
            .iter()
            .any(|x| boolean(x, "shouldExist") == Some(false));
        if zero && gone {
            self.err(
                root,
                &pp,
                "shouldExist is false for a partition and other partition(s) has start or size 0",
            );
        }
        let mut labels: HashMap<&str, usize> = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            if let Some(l) = st(part, "label") {
                if labels.insert(l, i).is_some() {
                    self.err(root, &pp.i(i), "cannot use the same partition label twice");
                }
            }
        }
    }

    fn partition(&mut self, root: &Node, part: &Node, p: &P) {
        let label = st(part, "label");
        if boolean(part, "shouldExist") == Some(false)
            && (label.is_some()
                || non_empty(st(part, "typeGuid"))
                || non_empty(st(part, "guid"))
                || int(part, "startMiB").is_some()
                || int(part, "sizeMiB").is_some())
        {
            self.err(
                root,
                p,
                "shouldExist specified false with other options also specified",
            );
        }
        if int(part, "number").unwrap_or(0) == 0 && label.is_none() {
            self.err(
                root,
                p,
                "a partition number >= 1 or a label must be specified",
            );
        }
        if let Some(l) = label {
            if l.len() > 36 {
                self.err(
                    root,
                    &p.k("label"),
                    format!(
                        "partition labels may not exceed 36 characters ({l:?} has {})",
                        l.len()
                    ),
                );
            } else if l.contains(':') {
                self.err(
                    root,
                    &p.k("label"),
                    "partition label will be truncated to text before the colon",
                );
            }
        }
        for k in ["guid", "typeGuid"] {
            if let Some(g) = st(part, k) {
                if !is_guid(g) {
                    self.err(
                        root,
                        &p.k(k),
                        "doesn't match the form \"01234567-89AB-CDEF-EDCB-A98765432101\"",
                    );
                }
            }
        }
    }

    fn filesystem(&mut self, root: &Node, f: &Node, p: &P) {
        if let Some(path) = st(f, "path").filter(|x| !x.is_empty()) {
            if let Some(e) = path_error(path) {
                self.err(root, &p.k("path"), e);
            }
        }
        match path_error(st(f, "device").unwrap_or("")) {
            Some("path not specified") => self.err(root, &p.k("device"), "device is required"),
            Some(e) => self.err(root, &p.k("device"), e),
            None => {}
        }
        let format = st(f, "format").filter(|x| !x.is_empty());
        match format {
            None => {
                if non_empty(st(f, "path"))
                    || non_empty(st(f, "label"))
                    || non_empty(st(f, "uuid"))
                    || boolean(f, "wipeFilesystem") == Some(true)
                    || (self.minor >= 1 && !arr(f, "mountOptions").is_empty())
                    || !arr(f, "options").is_empty()
                {
                    self.err(
                        root,
                        &p.k("format"),
                        "format cannot be empty when path, label, uuid, wipeFilesystem, options, or mountOptions is specified",
                    );
                }
            }
            Some("ext4" | "btrfs" | "xfs" | "swap" | "vfat") => {}
            Some("none") if self.minor >= 3 => {}
            Some(other) => self.err(
                root,
                &p.k("format"),
                format!(
                    "invalid filesystem format {other:?}: use ext4, xfs, btrfs, vfat, swap or none"
                ),
            ),
        }
        if let Some(label) = st(f, "label").filter(|x| !x.is_empty()) {
            let max = match format {
                None => {
                    return self.err(
                        root,
                        &p.k("label"),
                        "filesystem must specify format if label is specified",
                    )
                }
                Some("ext4") => 16,
                Some("btrfs") => 256,
                Some("xfs") => 12,
                Some("swap") => 15,
                Some("vfat") => 11,
                Some(_) => usize::MAX,
            };
            if label.len() > max {
                self.err(
                    root,
                    &p.k("label"),
                    format!(
                        "filesystem labels cannot be longer than {max} characters when using {} ({label:?} has {})",
                        format.unwrap_or(""),
                        label.len()
                    ),
                );
            }
        }
    }

    fn luks(&mut self, root: &Node, l: &Node, p: &P) {
        let name = st(l, "name").unwrap_or("");
        if name.is_empty() {
            self.warn(
                root,
                &p.k("name"),
                "luks name is empty: Ignition cannot open the volume",
            );
        }
        if name.contains('/') {
            self.err(root, &p.k("name"), "device names cannot contain slashes");
        }
        if st(l, "label").is_some_and(|x| x.len() > 47) {
            self.err(
                root,
                &p.k("label"),
                "luks device labels cannot be longer than 47 characters",
            );
        }
        match st(l, "device").filter(|x| !x.is_empty()) {
            None => self.err(root, &p.k("device"), "disk device is required"),
            Some(d) => {
                if let Some(e) = path_error(d) {
                    self.err(root, &p.k("device"), e);
                }
            }
        }
        if let Some(c) = l.get("clevis") {
            let pc = p.k("clevis");
            let custom = c.get("custom").filter(|x| !is_null(x));
            let pin = custom.and_then(|x| st(x, "pin"));
            // Spec 3.2 counted any custom object; 3.3 only a custom pin.
            let custom_set = if self.minor >= 3 {
                non_empty(pin)
            } else {
                custom.is_some()
            };
            if custom_set
                && (!arr(c, "tang").is_empty()
                    || boolean(c, "tpm2") == Some(true)
                    || int(c, "threshold").is_some_and(|t| t != 0))
            {
                self.err(
                    root,
                    &pc,
                    "cannot use custom clevis config with tpm2, tang, or threshold",
                );
            }
            if let Some(cu) = custom {
                let config = st(cu, "config");
                let needs_network = self.minor >= 3 && boolean(cu, "needsNetwork") == Some(true);
                if non_empty(pin) || non_empty(config) || needs_network {
                    match pin.unwrap_or("") {
                        "tpm2" | "tang" | "sss" => {}
                        "" if self.minor >= 3 => self.err(
                            root,
                            &pc.k("custom").k("pin"),
                            "missing required custom clevis pin",
                        ),
                        _ => self.err(root, &pc.k("custom").k("pin"), "unsupported clevis pin"),
                    }
                    if !non_empty(config) {
                        self.err(
                            root,
                            &pc.k("custom").k("config"),
                            "missing required custom clevis config",
                        );
                    }
                }
            }
            let tangs = arr(c, "tang");
            for (i, t) in tangs.iter().enumerate() {
                let pt = pc.k("tang").i(i);
                match url_scheme(st(t, "url").unwrap_or("")) {
                    Err(e) => self.err(root, &pt.k("url"), e),
                    Ok(s) if s != "http" && s != "https" => {
                        self.err(root, &pt.k("url"), "invalid url scheme: tang needs http(s)")
                    }
                    Ok(_) => {}
                }
                if !non_empty(st(t, "thumbprint")) {
                    self.err(root, &pt.k("thumbprint"), "thumbprint is required");
                }
            }
            self.dups(root, &[(pc.k("tang"), tangs)], |n| {
                st(n, "url").unwrap_or("").to_string()
            });
        }
        if let Some(k) = l.get("keyFile") {
            if let Some(src) = st(k, "source").filter(|s| !s.is_empty()) {
                let before = self.diags.len();
                self.url(root, src, &p.k("keyFile").k("source"));
                if self.diags.len() > before {
                    self.diags.truncate(before);
                    self.err(root, &p.k("keyFile").k("source"), "invalid key-file source");
                }
            }
            self.resource(root, k, &p.k("keyFile"), false);
        }
    }

    fn unit(&mut self, root: &Node, u: &Node, p: &P) {
        let name = st(u, "name").unwrap_or("");
        let exts = [
            "service",
            "socket",
            "device",
            "mount",
            "automount",
            "swap",
            "target",
            "path",
            "timer",
            "snapshot",
            "slice",
            "scope",
        ];
        let ext = name.rsplit_once('.').map(|x| x.1).unwrap_or("");
        if !exts.contains(&ext) {
            self.err(
                root,
                &p.k("name"),
                format!(
                    "invalid systemd unit extension in {name:?}: the name must end in .{}",
                    exts.join(", .")
                ),
            );
        }
        let contents = st(u, "contents");
        let sections = match contents.map(unit_sections) {
            Some(Err(e)) => {
                self.err(root, &p.k("contents"), e);
                None
            }
            Some(Ok(s)) => Some(s),
            None => None,
        };
        if boolean(u, "enabled") == Some(true) && non_empty(contents) {
            if let Some(secs) = sections {
                if !secs.iter().any(|s| s == "Install") {
                    self.warn(
                        root,
                        &p.k("contents"),
                        format!(
                            "unit {name:?} is enabled, but has no install section so enable does nothing"
                        ),
                    );
                }
            }
        }
        let dropins = arr(u, "dropins");
        for (i, d) in dropins.iter().enumerate() {
            let pd = p.k("dropins").i(i);
            if let Some(Err(e)) = st(d, "contents").map(unit_sections) {
                self.err(root, &pd.k("contents"), e);
            }
            let dn = st(d, "name").unwrap_or("");
            if !dn.ends_with(".conf") || dn.rsplit_once('.').map(|x| x.1) != Some("conf") {
                self.err(
                    root,
                    &pd.k("name"),
                    format!(
                        "invalid systemd drop-in extension in {dn:?}: the name must end in .conf"
                    ),
                );
            }
        }
        self.dups(root, &[(p.k("dropins"), dropins)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        validate_json(text)
            .errors()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn relative_path_position() {
        let t = "{\"ignition\":{\"version\":\"3.3.0\"},\n\"storage\":{\"files\":[{\"path\":\"etc/x\"}]}}";
        assert_eq!(
            errs(t),
            vec!["error at $.storage.files.0.path, line 2 col 29: path not absolute"]
        );
    }

    #[test]
    fn minimal_is_valid() {
        let r = validate_json(r#"{"ignition":{"version":"3.3.0"}}"#);
        assert!(!r.has_errors(), "{r}");
        assert_eq!(r.version.as_deref(), Some("3.3.0"));
    }

    #[test]
    fn unknown_key_is_warning() {
        let r = validate_json(r#"{"ignition":{"version":"3.3.0"},"bogus":1}"#);
        assert!(!r.has_errors());
        let w: Vec<_> = r.warnings().collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].path, "$.bogus");
        assert_eq!((w[0].line, w[0].col), (1, 33));
    }

    #[test]
    fn version_gates_keys() {
        let r = validate_json(r#"{"ignition":{"version":"3.2.0"},"kernelArguments":{}}"#);
        assert!(r.warnings().any(|d| d.message.contains("later spec")));
    }

    #[test]
    fn clean_paths_like_go() {
        assert_eq!(clean_path("/a/b/../c/"), "/a/c");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(path_error("/etc//x"), Some("path is not fully simplified"));
    }

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url("data:,a%20b").unwrap(), b"a b");
        assert_eq!(decode_data_url("data:;base64,aGk=").unwrap(), b"hi");
        assert!(decode_data_url("data:;base64,***").is_err());
        assert!(decode_data_url("data:nocomma").is_err());
    }

    #[test]
    fn unit_parsing() {
        assert!(unit_sections("[Unit\n").is_err());
        assert!(unit_sections("[Unit]\nfoo\n").is_err());
        assert_eq!(
            unit_sections("[Unit]\nA=b\\\n c\n[Install]\nWantedBy=x\n").unwrap(),
            vec!["Unit", "Install"]
        );
    }
}
