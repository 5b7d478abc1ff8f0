//! Where packages come from: the recipe's mirror, or the Debian entries of the host's apt
//! sources (`/etc/apt/sources.list`, `sources.list.d/*.list` and deb822 `*.sources`).
//!
//! Only Debian archive entries are taken from the host: an entry counts as Debian when its
//! `Signed-By` names the Debian archive keyring, or, without `Signed-By`, when its host is
//! under `debian.org`. Third-party repositories (which often use Debian suite names such as
//! `bookworm`) are ignored. The host's suite names are mapped onto the recipe's suite:
//! `bookworm-updates` on a bookworm host becomes `trixie-updates` for a trixie recipe.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One `deb` line: a mirror URI and a suite with components; for a recipe's extra
/// repository also the keyring it is signed with, or `trusted`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct AptSource {
    pub uri: String,
    /// A suite, or a flat repository's directory ending in `/`.
    pub suite: String,
    pub components: Vec<String>,
    /// The keyring on the build host (absolute) and the sha256 of its bytes.
    pub keyring: Option<(PathBuf, String)>,
    /// No signature check (`[trusted=yes]`).
    pub trusted: bool,
}

/// Where a recipe repository's keyring goes in the tree.
pub const TREE_KEYRINGS: &str = "etc/apt/keyrings";

impl AptSource {
    fn with_options(&self, opts: Option<String>, uri: &str) -> String {
        let mut l = String::from("deb ");
        if let Some(o) = opts {
            l.push_str(&format!("[{o}] "));
        }
        l.push_str(uri);
        l.push(' ');
        l.push_str(&self.suite);
        for c in &self.components {
            l.push(' ');
            l.push_str(c);
        }
        l
    }

    /// A recipe's extra repository (signed by its own keyring, or trusted), not the
    /// Debian archive.
    pub fn is_extra(&self) -> bool {
        self.keyring.is_some() || self.trusted
    }

    /// The one-line `sources.list` form apt on the build host reads (mmdebstrap, and
    /// the package path): `signed-by` names the keyring where the recipe has it, and a
    /// `file:` URI is read as `copy:` (apt then copies each `.deb` into its archive, where
    /// dpkg in the chroot finds it, instead of handing dpkg the host's path).
    pub fn line(&self) -> String {
        let uri = match self.uri.strip_prefix("file:") {
            Some(rest) => format!("copy:{rest}"),
            None => self.uri.clone(),
        };
        self.with_options(
            match (&self.keyring, self.trusted) {
                (Some((p, _)), _) => Some(format!("signed-by={}", p.display())),
                (None, true) => Some("trusted=yes".into()),
                (None, false) => None,
            },
            &uri,
        )
    }

    /// The line as the tree's `/etc/apt/sources.list` holds it: `signed-by` names the
    /// keyring's copy in the tree ([`Self::tree_keyring`]).
    pub fn tree_line(&self) -> String {
        self.with_options(
            match (self.tree_keyring(), self.trusted) {
                (Some(k), _) => Some(format!("signed-by=/{k}")),
                (None, true) => Some("trusted=yes".into()),
                (None, false) => None,
            },
            &self.uri,
        )
    }

    /// The line as cache keys see it: the keyring by its content, not its place.
    pub fn key_line(&self) -> String {
        self.with_options(
            match (&self.keyring, self.trusted) {
                (Some((_, sha)), _) => Some(format!("signed-by=sha256:{sha}")),
                (None, true) => Some("trusted=yes".into()),
                (None, false) => None,
            },
            &self.uri,
        )
    }

    /// The keyring's path in the tree (relative): named by its content, `.asc` kept for
    /// an armored one (apt reads those by their extension).
    pub fn tree_keyring(&self) -> Option<String> {
        let (p, sha) = self.keyring.as_ref()?;
        let ext = if p.extension().is_some_and(|e| e == "asc") {
            "asc"
        } else {
            "gpg"
        };
        Some(format!("{TREE_KEYRINGS}/kiln-{}.{ext}", &sha[..16]))
    }

    /// `dists/SUITE/` or, for a flat repository, `SUITE` (ends in `/`): where the
    /// release files are, relative to the URI.
    fn release_dir(&self) -> String {
        if self.suite.ends_with('/') {
            self.suite.clone()
        } else {
            format!("dists/{}/", self.suite)
        }
    }

    /// `URI/dists/SUITE/InRelease` (`URI/SUITE/InRelease` for a flat repository).
    pub fn inrelease_url(&self) -> String {
        self.release_url("InRelease")
    }

    fn release_url(&self, name: &str) -> String {
        format!(
            "{}/{}{name}",
            self.uri.trim_end_matches('/'),
            self.release_dir()
        )
    }
}

/// A raw entry as read from the host's configuration.
#[derive(Debug, Clone, PartialEq)]
struct HostEntry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The sources for a recipe: the explicit mirror, or the host's Debian entries; then the
/// recipe's extra repositories, each with its keyring's hash.
pub fn resolve_recipe(recipe: &crate::recipe::Recipe, apt_root: &Path) -> Result<Vec<AptSource>> {
    let mut out = resolve(
        recipe.mirror.as_deref(),
        &recipe.suite,
        &recipe.components,
        apt_root,
    )?;
    for r in &recipe.repositories {
        let keyring = match &r.signed_by {
            Some(p) => {
                let text = p.to_string_lossy();
                // apt splits a line's options at white space and ends them at `]`.
                if text.contains(|c: char| c.is_whitespace() || c == ']') {
                    bail!(
                        "repository {} {}: apt cannot read the keyring path {text:?} (white \
                         space or `]`); move the keyring",
                        r.uri,
                        r.suite
                    );
                }
                let sha = super::inputhash::file_sha256(p)
                    .with_context(|| format!("reading the keyring of repository {}", r.uri))?;
                Some((p.clone(), sha))
            }
            None => None,
        };
        out.push(AptSource {
            uri: r.uri.trim_end_matches('/').to_string(),
            suite: r.suite.clone(),
            components: r.components.clone(),
            keyring,
            trusted: r.trusted,
        });
    }
    Ok(out)
}

/// The Debian archive's sources: the explicit mirror, or the host's Debian entries.
pub fn resolve(
    mirror: Option<&str>,
    suite: &str,
    components: &[String],
    apt_root: &Path,
) -> Result<Vec<AptSource>> {
    let comps = if components.is_empty() {
        vec!["main".to_string()]
    } else {
        components.to_vec()
    };
    if let Some(m) = mirror {
        return Ok(vec![AptSource {
            uri: m.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: comps,
            ..Default::default()
        }]);
    }
    let entries = read_host_entries(apt_root)?;
    let out = map_debian_entries(&entries, suite, &comps);
    if out.is_empty() {
        bail!(
            "no Debian archive entry in the host's apt sources ({}/etc/apt/sources.list, \
             sources.list.d/); set `mirror` in the recipe",
            apt_root.display().to_string().trim_end_matches('/')
        );
    }
    Ok(out)
}

fn map_debian_entries(entries: &[HostEntry], suite: &str, comps: &[String]) -> Vec<AptSource> {
    let mut out: Vec<AptSource> = Vec::new();
    for e in entries.iter().filter(|e| is_debian(e)) {
        for s in &e.suites {
            // `bookworm-updates` -> suffix `-updates`; `bookworm` -> no suffix.
            let suffix = s.find('-').map(|i| &s[i..]).unwrap_or("");
            // Only the release itself, its updates and its security suite.
            if !matches!(suffix, "" | "-updates" | "-security") {
                continue;
            }
            let src = AptSource {
                uri: e.uri.trim_end_matches('/').to_string(),
                suite: format!("{suite}{suffix}"),
                components: comps.to_vec(),
                ..Default::default()
            };
            if !out.contains(&src) {
                out.push(src);
            }
        }
    }
    out
}

fn is_debian(e: &HostEntry) -> bool {
    match &e.signed_by {
        Some(k) => k.contains("debian-archive-keyring"),
        None => host_of(&e.uri)
            .map(|h| h == "debian.org" || h.ends_with(".debian.org"))
            .unwrap_or(false),
    }
}

fn host_of(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let host = host.rsplit('@').next()?;
    Some(host.split(':').next().unwrap_or(host))
}

fn read_host_entries(root: &Path) -> Result<Vec<HostEntry>> {
    let mut out = Vec::new();
    let main = root.join("etc/apt/sources.list");
    if main.exists() {
        let text = std::fs::read_to_string(&main)
            .with_context(|| format!("reading {}", main.display()))?;
        out.extend(parse_one_line(&text));
    }
    let dir = root.join("etc/apt/sources.list.d");
    if dir.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in names {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "list" && ext != "sources" {
                continue; // apt ignores other names too (e.g. *.disabled)
            }
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            if ext == "list" {
                out.extend(parse_one_line(&text));
            } else {
                out.extend(parse_deb822(&text));
            }
        }
    }
    Ok(out)
}

/// `deb [opt=val ...] URI SUITE COMP...` lines; `deb-src` and comments are skipped.
fn parse_one_line(text: &str) -> Vec<HostEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { continue };
            for opt in r[..end].split_whitespace() {
                if let Some(v) = opt.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = r[end + 1..].trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(HostEntry {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            signed_by,
        });
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Signed-By:`, `Enabled:`).
fn parse_deb822(text: &str) -> Vec<HostEntry> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let flush = |stanza: &mut Vec<(String, String)>, out: &mut Vec<HostEntry>| {
        let get = |k: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let types = get("Types").unwrap_or_default();
        let enabled = get("Enabled").map(|v| v.trim() != "no").unwrap_or(true);
        if enabled && types.split_whitespace().any(|t| t == "deb") {
            let suites: Vec<String> = get("Suites")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
            let signed_by = get("Signed-By");
            for uri in get("URIs").unwrap_or_default().split_whitespace() {
                out.push(HostEntry {
                    uri: uri.to_string(),
                    suites: suites.clone(),
                    signed_by: signed_by.clone(),
                });
            }
        }
        stanza.clear();
    };
    for raw in text.lines() {
        if raw.trim_start().starts_with('#') {
            continue;
        }
        if raw.trim().is_empty() {
            flush(&mut stanza, &mut out);
            continue;
        }
        if raw.starts_with(' ') || raw.starts_with('\t') {
            // Continuation line (e.g. an inline Signed-By key block).
            if let Some(last) = stanza.last_mut() {
                last.1.push(' ');
                last.1.push_str(raw.trim());
            }
            continue;
        }
        if let Some((k, v)) = raw.split_once(':') {
            stanza.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut stanza, &mut out);
    out
}

/// Fetches each source's `InRelease` (or, where there is none, its `Release`) and
/// returns `"URI SUITE sha256"` lines, sorted. These files pin the whole archive state:
/// unchanged release files mean the mirror would install the very same package versions.
pub fn mirror_state(sources: &[AptSource]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in sources {
        let fetch = |url: &str| {
            crate::cmd::Cmd::new("curl")
                .args(["-fsSL", "--retry", "2", "--max-time", "60", url])
                .run()
                .map(|o| o.stdout)
        };
        let url = s.inrelease_url();
        let bytes = match fetch(&url) {
            Ok(b) => b,
            Err(e) => {
                let rel = s.release_url("Release");
                fetch(&rel)
                    .map_err(|_| e)
                    .with_context(|| format!("fetching the mirror state {url} (and {rel})"))?
            }
        };
        out.push(format!(
            "{} {} {}",
            s.uri,
            s.suite,
            hex::encode(Sha256::digest(&bytes))
        ));
    }
    out.sort();
    Ok(out)
}

/// The mirror state as apt saw it: hashes of the `InRelease` (else `Release`) files in
/// a tree's `var/lib/apt/lists`, in the same form as [`mirror_state`].
pub fn mirror_state_from_lists(sources: &[AptSource], lists: &Path) -> Result<Vec<String>> {
    mirror_state_with(sources, &|name| match std::fs::read(lists.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", lists.join(name).display())),
    })
}

/// [`mirror_state_from_lists`] with the list files read by `read` (by name; `None`:
/// absent).
pub fn mirror_state_with(
    sources: &[AptSource],
    read: &dyn Fn(&str) -> Result<Option<Vec<u8>>>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in sources {
        let (inrel, rel) = (
            apt_list_name(&s.uri, &format!("{}InRelease", s.release_dir())),
            apt_list_name(&s.uri, &format!("{}Release", s.release_dir())),
        );
        let bytes = match read(&inrel)? {
            Some(b) => b,
            None => read(&rel)?
                .with_context(|| format!("apt's lists hold neither {inrel} nor {rel}"))?,
        };
        out.push(format!(
            "{} {} {}",
            s.uri,
            s.suite,
            hex::encode(Sha256::digest(&bytes))
        ));
    }
    out.sort();
    Ok(out)
}

/// The prefix of apt's list file names for a source's URI.
pub fn list_prefix(s: &AptSource) -> String {
    apt_list_name(&s.uri, "")
}

/// apt's `URItoFileName`: scheme and credentials dropped, unsafe characters quoted as
/// `%xx` (apt's `QuoteString`), `/` turned into `_`.
fn apt_list_name(uri: &str, rest: &str) -> String {
    let no_scheme = uri.split_once("://").map(|x| x.1).unwrap_or(uri);
    let no_user = no_scheme.rsplit_once('@').map(|x| x.1).unwrap_or(no_scheme);
    let full = format!("{}/{}", no_user.trim_end_matches('/'), rest);
    let mut out = String::new();
    for b in full.bytes() {
        if b"\\|{}[]<>\"^~_=!@#$%^&*".contains(&b) || b <= 0x20 || b >= 0x7f {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out.replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "Types: deb\n\
        # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
        URIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://deb.debian.org/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/apt/sources.list.d")).unwrap();
        for (p, c) in files {
            std::fs::write(d.path().join(p), c).unwrap();
        }
        d
    }

    #[test]
    fn deb822_debian_entries_only() {
        let r = root_with(&[
            ("etc/apt/sources.list.d/debian.sources", HOST),
            (
                "etc/apt/sources.list.d/nodesource.sources",
                "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n\
                 Components: main\nSigned-By: /usr/share/keyrings/nodesource.gpg\n",
            ),
            (
                "etc/apt/sources.list.d/docker.list",
                "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] \
                 https://download.docker.com/linux/debian bookworm stable\n",
            ),
            (
                "etc/apt/sources.list.d/gcloud.list.disabled",
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
            ),
        ]);
        let s = resolve(None, "bookworm", &["main".into()], r.path()).unwrap();
        let lines: Vec<String> = s.iter().map(|s| s.line()).collect();
        assert_eq!(
            lines,
            vec![
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn one_line_format_maps_suite_and_components() {
        let r = root_with(&[(
            "etc/apt/sources.list",
            "# comment\ndeb http://ftp.de.debian.org/debian/ bookworm main contrib\n\
             deb-src http://ftp.de.debian.org/debian/ bookworm main\n\
             deb http://security.debian.org/debian-security bookworm-security main\n\
             deb http://deb.debian.org/debian bookworm-backports main\n\
             deb http://example.com/debian bookworm main\n",
        )]);
        let s = resolve(None, "trixie", &["main".into(), "contrib".into()], r.path()).unwrap();
        let lines: Vec<String> = s.iter().map(|s| s.line()).collect();
        assert_eq!(
            lines,
            vec![
                "deb http://ftp.de.debian.org/debian trixie main contrib",
                "deb http://security.debian.org/debian-security trixie-security main contrib",
            ]
        );
    }

    #[test]
    fn explicit_mirror_wins_and_no_debian_entry_is_an_error() {
        let r = root_with(&[]);
        let s = resolve(Some("http://m.example/debian/"), "bookworm", &[], r.path()).unwrap();
        assert_eq!(s[0].line(), "deb http://m.example/debian bookworm main");
        let e = resolve(None, "bookworm", &[], r.path()).unwrap_err();
        assert!(format!("{e}").contains("set `mirror`"), "{e}");
    }

    #[test]
    fn repository_lines_for_the_host_the_tree_and_the_keys() {
        let s = AptSource {
            uri: "file:///srv/vendor".into(),
            suite: "./".into(),
            components: vec![],
            keyring: Some(("/home/u/keys/v.asc".into(), "ab".repeat(32))),
            trusted: false,
        };
        assert!(s.is_extra());
        assert_eq!(
            s.line(),
            "deb [signed-by=/home/u/keys/v.asc] copy:///srv/vendor ./"
        );
        assert_eq!(
            s.tree_line(),
            "deb [signed-by=/etc/apt/keyrings/kiln-abababababababab.asc] file:///srv/vendor ./"
        );
        assert_eq!(
            s.key_line(),
            format!(
                "deb [signed-by=sha256:{}] file:///srv/vendor ./",
                "ab".repeat(32)
            )
        );
        assert_eq!(s.inrelease_url(), "file:///srv/vendor/./InRelease");
        let t = AptSource {
            uri: "https://v.example/debian".into(),
            suite: "bookworm".into(),
            components: vec!["main".into(), "extra".into()],
            keyring: None,
            trusted: true,
        };
        assert_eq!(
            t.line(),
            "deb [trusted=yes] https://v.example/debian bookworm main extra"
        );
        assert_eq!(t.line(), t.tree_line());
        assert_eq!(
            t.inrelease_url(),
            "https://v.example/debian/dists/bookworm/InRelease"
        );
    }

    #[test]
    fn list_file_names_follow_apt() {
        assert_eq!(
            apt_list_name("http://deb.debian.org/debian", "dists/bookworm/InRelease"),
            "deb.debian.org_debian_dists_bookworm_InRelease"
        );
        // A flat repository in a local directory, with characters apt quotes.
        assert_eq!(
            apt_list_name("file:///srv/my_repo~1", "./InRelease"),
            "_srv_my%5frepo%7e1_._InRelease"
        );
    }
}
