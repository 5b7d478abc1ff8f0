//! The friendly TOML source format (snake_case, Butane-like), ordered fragments, and the
//! mapping from a key path back to a file and line:col.

use crate::error::{line_col, InputError};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Source types. Every struct refuses unknown keys: a misspelt key is an error, never
// silently dropped.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub ignition: IgnitionSrc,
    #[serde(default)]
    pub passwd: PasswdSrc,
    #[serde(default)]
    pub storage: StorageSrc,
    #[serde(default)]
    pub systemd: SystemdSrc,
    #[serde(default)]
    pub kernel_arguments: KargsSrc,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnitionSrc {
    pub config: Option<ConfigRefSrc>,
    pub timeouts: Option<TimeoutsSrc>,
    pub security: Option<SecuritySrc>,
    pub proxy: Option<ProxySrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRefSrc {
    #[serde(default)]
    pub merge: Vec<ResourceSrc>,
    pub replace: Option<ResourceSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSrc {
    pub http_response_headers: Option<i64>,
    pub http_total: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySrc {
    pub tls: Option<TlsSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSrc {
    #[serde(default)]
    pub certificate_authorities: Vec<ResourceSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySrc {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// Where contents come from: exactly one of `inline`, `local` (a file under --files-dir)
/// or `source` (a URL Ignition fetches at first boot).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSrc {
    pub inline: Option<String>,
    pub local: Option<String>,
    pub source: Option<String>,
    pub compression: Option<String>,
    pub verification: Option<VerificationSrc>,
    #[serde(default)]
    pub http_headers: Vec<HeaderSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationSrc {
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSrc {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswdSrc {
    #[serde(default)]
    pub users: Vec<UserSrc>,
    #[serde(default)]
    pub groups: Vec<GroupSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSrc {
    pub name: String,
    pub uid: Option<i64>,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Files under --files-dir holding one public key per line.
    #[serde(default)]
    pub ssh_authorized_keys_local: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub primary_group: Option<String>,
    pub shell: Option<String>,
    pub home_dir: Option<String>,
    pub gecos: Option<String>,
    pub system: Option<bool>,
    pub no_create_home: Option<bool>,
    pub no_user_group: Option<bool>,
    pub no_log_init: Option<bool>,
    pub should_exist: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSrc {
    pub name: String,
    pub gid: Option<i64>,
    pub password_hash: Option<String>,
    pub system: Option<bool>,
    pub should_exist: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSrc {
    #[serde(default)]
    pub files: Vec<FileSrc>,
    #[serde(default)]
    pub directories: Vec<DirSrc>,
    #[serde(default)]
    pub links: Vec<LinkSrc>,
    #[serde(default)]
    pub trees: Vec<TreeSrc>,
    #[serde(default)]
    pub disks: Vec<DiskSrc>,
    #[serde(default)]
    pub filesystems: Vec<FilesystemSrc>,
    #[serde(default)]
    pub luks: Vec<LuksSrc>,
    #[serde(default)]
    pub raid: Vec<RaidSrc>,
}

/// File and directory owner: a name or a numeric id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerSrc {
    pub id: Option<i64>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSrc {
    pub path: String,
    pub mode: Option<Mode>,
    pub overwrite: Option<bool>,
    pub user: Option<OwnerSrc>,
    pub group: Option<OwnerSrc>,
    pub contents: Option<ResourceSrc>,
    #[serde(default)]
    pub append: Vec<ResourceSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSrc {
    pub path: String,
    pub mode: Option<Mode>,
    pub overwrite: Option<bool>,
    pub user: Option<OwnerSrc>,
    pub group: Option<OwnerSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSrc {
    pub path: String,
    pub target: String,
    pub hard: Option<bool>,
    pub overwrite: Option<bool>,
    pub user: Option<OwnerSrc>,
    pub group: Option<OwnerSrc>,
}

/// A local directory copied in: regular files become files (mode 0755 when executable,
/// else 0644), symlinks become links.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSrc {
    pub local: String,
    /// Where the tree lands on the target; "/" when omitted.
    pub path: Option<String>,
    pub overwrite: Option<bool>,
    pub user: Option<OwnerSrc>,
    pub group: Option<OwnerSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSrc {
    pub device: String,
    pub wipe_table: Option<bool>,
    #[serde(default)]
    pub partitions: Vec<PartitionSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSrc {
    pub label: Option<String>,
    pub number: Option<i64>,
    pub size_mib: Option<i64>,
    pub start_mib: Option<i64>,
    pub type_guid: Option<String>,
    pub guid: Option<String>,
    pub wipe_partition_entry: Option<bool>,
    pub should_exist: Option<bool>,
    pub resize: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSrc {
    pub device: String,
    pub format: Option<String>,
    pub path: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub wipe_filesystem: Option<bool>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// Generate a systemd .mount (or .swap) unit for it, enabled for local-fs.target.
    #[serde(default)]
    pub with_mount_unit: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuksSrc {
    pub name: String,
    pub device: String,
    pub key_file: Option<ResourceSrc>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub wipe_volume: Option<bool>,
    #[serde(default)]
    pub options: Vec<String>,
    pub clevis: Option<ClevisSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClevisSrc {
    pub tpm2: Option<bool>,
    pub threshold: Option<i64>,
    #[serde(default)]
    pub tang: Vec<TangSrc>,
    pub custom: Option<ClevisCustomSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TangSrc {
    pub url: String,
    pub thumbprint: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClevisCustomSrc {
    pub pin: Option<String>,
    pub config: Option<String>,
    pub needs_network: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaidSrc {
    pub name: String,
    pub level: String,
    #[serde(default)]
    pub devices: Vec<String>,
    pub spares: Option<i64>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdSrc {
    #[serde(default)]
    pub units: Vec<UnitSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSrc {
    pub name: String,
    pub enabled: Option<bool>,
    pub mask: Option<bool>,
    pub contents: Option<String>,
    /// A unit file under --files-dir.
    pub contents_local: Option<String>,
    #[serde(default)]
    pub dropins: Vec<DropinSrc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropinSrc {
    pub name: String,
    pub contents: Option<String>,
    pub contents_local: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KargsSrc {
    #[serde(default)]
    pub should_exist: Vec<String>,
    #[serde(default)]
    pub should_not_exist: Vec<String>,
}

/// A file mode written as an octal string ("0640"). Integers are refused: TOML integers
/// are decimal, so `mode = 644` would silently mean 0o1204.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an octal mode string such as \"0644\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Mode, E> {
                parse_mode(s).map(Mode).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Mode, E> {
                Err(E::custom(integer_mode_message(n)))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Mode, E> {
                Err(E::custom(integer_mode_message(n as i64)))
            }
        }
        d.deserialize_any(V)
    }
}

fn integer_mode_message(n: i64) -> String {
    let digits = n.to_string();
    let looks_octal = digits.len() >= 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mut m = format!(
        "mode must be an octal string such as \"0644\", not the integer {n}: TOML integers are decimal, and decimal {n} is octal 0{n:o}"
    );
    if looks_octal {
        m.push_str(&format!(
            "; write mode = \"0{digits}\" if you meant 0{digits}"
        ));
        if (0..=0o7777).contains(&n) {
            m.push_str(&format!(", or mode = \"0{n:o}\" if you meant 0{n:o}"));
        }
    } else if (0..=0o7777).contains(&n) {
        m.push_str(&format!("; write mode = \"0{n:o}\""));
    }
    m
}

/// "0644", "644", "0o644" -> 0o644.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!(
            "mode {s:?} is not an octal mode: write three or four octal digits such as \"0644\""
        ));
    }
    let m = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if m > 0o7777 {
        return Err(format!("mode {s:?} is larger than 07777"));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// Key paths and locating them in TOML text

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

/// A dotted key path such as `storage.files[2].mode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn k(&self, key: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }
    pub fn i(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Idx(i));
        p
    }
    pub fn parse(s: &str) -> KeyPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(b) = rest.find('[') {
                segs.push(Seg::Key(rest[..b].to_string()));
                rest = &rest[b..];
                while let Some(r) = rest.strip_prefix('[') {
                    let e = r.find(']').unwrap_or(r.len());
                    if let Ok(i) = r[..e].parse() {
                        segs.push(Seg::Idx(i));
                    }
                    rest = r.get(e + 1..).unwrap_or("");
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        KeyPath(segs)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Idx(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Byte span of the deepest item that exists along `path` in TOML `text`.
pub fn locate(text: &str, path: &KeyPath) -> Option<std::ops::Range<usize>> {
    use toml_edit::{Item, Value};
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut best: Option<std::ops::Range<usize>> = None;
    let mut item: Item = Item::Table(doc.as_table().clone());
    for seg in &path.0 {
        let next: Option<Item> = match (seg, &item) {
            (Seg::Key(k), Item::Table(t)) => t.get(k).cloned(),
            (Seg::Key(k), Item::Value(Value::InlineTable(t))) => {
                t.get(k).map(|v| Item::Value(v.clone()))
            }
            (Seg::Idx(i), Item::ArrayOfTables(a)) => a.get(*i).map(|t| Item::Table(t.clone())),
            (Seg::Idx(i), Item::Value(Value::Array(a))) => {
                a.get(*i).map(|v| Item::Value(v.clone()))
            }
            _ => None,
        };
        match next {
            Some(n) => {
                if let Some(s) = n.span() {
                    best = Some(s);
                }
                item = n;
            }
            None => break,
        }
    }
    best
}

// ---------------------------------------------------------------------------------------
// Loading a config and its fragments

/// One TOML file that went into a build.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The merged source plus what is needed to point at a key's origin.
#[derive(Debug)]
pub struct Loaded {
    pub source: Source,
    pub files: Vec<SourceFile>,
    /// Merged key path -> (file index, key path in that file).
    provenance: HashMap<KeyPath, (usize, KeyPath)>,
}

impl Loaded {
    /// An input error for merged key path `key`, pointing at the file and line it came from.
    pub fn error(&self, key: &KeyPath, message: impl Into<String>) -> InputError {
        // Longest prefix of `key` with a known origin.
        let mut n = key.0.len();
        let origin = loop {
            let prefix = KeyPath(key.0[..n].to_vec());
            if let Some((f, orig)) = self.provenance.get(&prefix) {
                let mut full = orig.clone();
                full.0.extend(key.0[n..].iter().cloned());
                break Some((*f, full));
            }
            if n == 0 {
                break None;
            }
            n -= 1;
        };
        let (fi, orig) = origin.unwrap_or((0, key.clone()));
        let file = &self.files[fi.min(self.files.len() - 1)];
        let mut e = InputError::new(file.path.display().to_string(), message).key(orig.to_string());
        if let Some(span) = locate(&file.text, &orig) {
            let (l, c) = line_col(&file.text, span.start);
            e = e.at(l, c);
        }
        e
    }
}

fn read_toml(path: &Path) -> anyhow::Result<SourceFile> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading Ignition source {}", path.display()))?;
    Ok(SourceFile {
        path: path.to_path_buf(),
        text,
    })
}

/// Parses one file as a [`Source`], with errors located in it.
pub fn parse_source(file: &SourceFile) -> Result<(Source, toml::Table), InputError> {
    let name = file.path.display().to_string();
    let to_input = |e: toml::de::Error| {
        let mut ie = InputError::new(name.clone(), e.message().trim().to_string());
        if let Some(span) = e.span() {
            let (l, c) = line_col(&file.text, span.start);
            ie = ie.at(l, c);
            if let Some(k) = key_at(&file.text, span.start) {
                ie = ie.key(k.to_string());
            }
        }
        ie
    };
    let source: Source = toml::from_str(&file.text).map_err(to_input)?;
    let table: toml::Table = toml::from_str(&file.text).map_err(to_input)?;
    Ok((source, table))
}

/// The key path of the innermost item whose span holds `offset`.
fn key_at(text: &str, offset: usize) -> Option<KeyPath> {
    use toml_edit::{Item, Value};
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    fn walk(item: &Item, path: KeyPath, offset: usize, best: &mut Option<KeyPath>) {
        let contains = |s: Option<std::ops::Range<usize>>| {
            s.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
        };
        match item {
            Item::Table(t) => {
                if contains(t.span()) {
                    *best = Some(path.clone());
                }
                for (k, v) in t.iter() {
                    if contains(t.key(k).and_then(|kk| kk.span())) {
                        *best = Some(path.k(k));
                    }
                    walk(v, path.k(k), offset, best);
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    walk(&Item::Table(t.clone()), path.i(i), offset, best);
                }
            }
            Item::Value(v) => {
                if contains(v.span()) {
                    *best = Some(path.clone());
                }
                match v {
                    Value::InlineTable(t) => {
                        for (k, vv) in t.iter() {
                            if contains(t.key(k).and_then(|kk| kk.span())) {
                                *best = Some(path.k(k));
                            }
                            walk(&Item::Value(vv.clone()), path.k(k), offset, best);
                        }
                    }
                    Value::Array(a) => {
                        for (i, vv) in a.iter().enumerate() {
                            walk(&Item::Value(vv.clone()), path.i(i), offset, best);
                        }
                    }
                    _ => {}
                }
            }
            Item::None => {}
        }
    }
    let mut best = None;
    walk(
        &Item::Table(doc.as_table().clone()),
        KeyPath::default(),
        offset,
        &mut best,
    );
    best.filter(|b| !b.0.is_empty())
}

/// Loads `config` and, when given, the `NN-*.toml` fragments of `fragments_dir` in name
/// order, merged: later files win per key; lists of tables are merged by their identity
/// key (path, name, device, label, number, source), other lists are joined without
/// repeats.
pub fn load(config: &Path, fragments_dir: Option<&Path>) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let mut files = vec![read_toml(config)?];
    if let Some(dir) = fragments_dir {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading fragments directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        names.sort();
        for n in names {
            let fname = n.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let numbered = fname.len() > 3
                && fname.as_bytes()[..2].iter().all(|b| b.is_ascii_digit())
                && fname.as_bytes()[2] == b'-';
            if !numbered {
                return Err(InputError::new(
                    n.display().to_string(),
                    "fragment names must start with two digits and a dash (NN-name.toml) so their order is explicit",
                )
                .into());
            }
            files.push(read_toml(&n)?);
        }
    }
    let mut merged = toml::Value::Table(toml::Table::new());
    let mut provenance = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let (_, table) = parse_source(f)?;
        merge_value(
            &mut merged,
            toml::Value::Table(table),
            &KeyPath::default(),
            &KeyPath::default(),
            fi,
            &mut provenance,
        );
    }
    let source: Source = merged.try_into().map_err(|e: toml::de::Error| {
        InputError::new(
            files[0].path.display().to_string(),
            format!("merging fragments: {}", e.message()),
        )
    })?;
    Ok(Loaded {
        source,
        files,
        provenance,
    })
}

fn record(
    v: &toml::Value,
    m: &KeyPath,
    o: &KeyPath,
    fi: usize,
    prov: &mut HashMap<KeyPath, (usize, KeyPath)>,
) {
    prov.insert(m.clone(), (fi, o.clone()));
    match v {
        toml::Value::Table(t) => {
            for (k, c) in t {
                record(c, &m.k(k), &o.k(k), fi, prov);
            }
        }
        toml::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                record(c, &m.i(i), &o.i(i), fi, prov);
            }
        }
        _ => {}
    }
}

fn identity(v: &toml::Value) -> Option<String> {
    let t = v.as_table()?;
    for k in [
        "path", "name", "device", "label", "number", "source", "local",
    ] {
        if let Some(x) = t.get(k) {
            return Some(format!("{k}={x}"));
        }
    }
    None
}

const EXCLUSIVE: &[&[&str]] = &[
    &["inline", "local", "source"],
    &["contents", "contents_local"],
];

fn merge_value(
    dst: &mut toml::Value,
    src: toml::Value,
    m: &KeyPath,
    o: &KeyPath,
    fi: usize,
    prov: &mut HashMap<KeyPath, (usize, KeyPath)>,
) {
    match (dst, src) {
        (toml::Value::Table(d), toml::Value::Table(s)) => {
            // Alternatives replace each other: a later `contents` drops an earlier
            // `contents_local`, a later `source` an earlier `inline`.
            for group in EXCLUSIVE {
                if group.iter().any(|k| s.contains_key(*k)) {
                    for k in *group {
                        if !s.contains_key(*k) {
                            d.remove(*k);
                        }
                    }
                }
            }
            for (k, v) in s {
                let (mk, ok) = (m.k(&k), o.k(&k));
                match d.get_mut(&k) {
                    Some(existing) => merge_value(existing, v, &mk, &ok, fi, prov),
                    None => {
                        record(&v, &mk, &ok, fi, prov);
                        d.insert(k, v);
                    }
                }
            }
        }
        (toml::Value::Array(d), toml::Value::Array(s)) => {
            for (j, v) in s.into_iter().enumerate() {
                let oj = o.i(j);
                let id = identity(&v);
                let pos = match &id {
                    Some(id) => d.iter().position(|x| identity(x).as_ref() == Some(id)),
                    None => d.iter().position(|x| *x == v),
                };
                match pos {
                    Some(p) => merge_value(&mut d[p], v, &m.i(p), &oj, fi, prov),
                    None => {
                        record(&v, &m.i(d.len()), &oj, fi, prov);
                        d.push(v);
                    }
                }
            }
        }
        (d, s) => {
            record(&s, m, o, fi, prov);
            *d = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Result<Source, InputError> {
        parse_source(&SourceFile {
            path: "c.toml".into(),
            text: text.into(),
        })
        .map(|x| x.0)
    }

    #[test]
    fn integer_mode_is_refused_with_the_decimal_trap_explained() {
        let e = src("[[storage.files]]\npath = \"/etc/x\"\nmode = 644\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("c.toml:3:8: storage.files[0].mode: "), "{s}");
        assert!(s.contains("decimal 644 is octal 01204"), "{s}");
        assert!(s.contains("write mode = \"0644\""), "{s}");
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        assert!(parse_mode("0988").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn unknown_key_is_located() {
        let e = src("[passwd]\n[[passwd.users]]\nname = \"core\"\nssh_keys = []\n").unwrap_err();
        assert_eq!(e.pos, Some((4, 1)), "{e}");
        assert!(e.message.contains("unknown field `ssh_keys`"), "{e}");
    }

    #[test]
    fn locate_finds_nested_values() {
        let t = "[[storage.files]]\npath = \"/a\"\n[[storage.files]]\npath = \"/b\"\ncontents = { local = \"x\" }\n";
        let span = locate(t, &KeyPath::parse("storage.files[1].contents.local")).unwrap();
        assert_eq!(line_col(t, span.start), (5, 22));
        assert_eq!(
            KeyPath::parse("storage.files[1].contents.local").to_string(),
            "storage.files[1].contents.local"
        );
    }
}
