//! Validation of Ignition 3.0–3.3 JSON with JSON paths and line:col.
//!
//! Two passes over a position-keeping parse: a schema pass (types, unknown keys as warnings,
//! keys newer than the config's version) and, when the types are right, a semantic pass with
//! the rules Ignition 2.14 applies when it parses a config, plus a few checks of kiln's own
//! (hash sums that are not hex, for example) that would only fail later, at first boot.
//!
//! The walker and its state live here; the schema pass is in [`schema`], and the
//! semantic rules sit in one file per Ignition section ([`ignition`], [`kargs`],
//! [`passwd`], [`storage`], [`systemd`]), with the rules for resources and URLs that
//! several sections share in [`resource`].

mod ignition;
mod kargs;
mod passwd;
mod path;
mod resource;
mod schema;
mod storage;
mod systemd;

pub use resource::decode_data_url;

use super::json::{self, Kind, Node};
use path::{locate, P};
use schema::{Def, Ty};
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

    // -------------------------------------------------------------------------------
    // Semantic rules: one method per Ignition section, each in its own file.

    fn semantic(&mut self, root: &Node) {
        let r = P::root();
        if let Some(ign) = root.get("ignition") {
            self.ignition(root, ign, &r.k("ignition"));
        }
        if let Some(k) = root.get("kernelArguments").filter(|_| self.minor >= 3) {
            self.kernel_arguments(root, k, &r.k("kernelArguments"));
        }
        if let Some(pw) = root.get("passwd") {
            self.passwd(root, pw, &r.k("passwd"));
        }
        if let Some(s) = root.get("storage") {
            self.storage(root, s, &r.k("storage"));
        }
        if let Some(sd) = root.get("systemd") {
            self.systemd(root, sd, &r.k("systemd"));
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
}
