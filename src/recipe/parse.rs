//! One recipe file → a [`Layer`]: every value typed, checked and tagged with where it was
//! written (file, key path, line:col). The schema ([`FIELDS`]) is the one list of keys that
//! drives parsing, unknown-key suggestions and merging.

use super::validate::{self, Check};
use crate::error::{line_col, InputError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    /// The file as shown to users (relative to the working directory when below it).
    pub file: String,
    /// Key path: `units.enable[2]`, `metadata.team`.
    pub key: String,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    pub fn error(&self, message: impl Into<String>) -> InputError {
        InputError::new(self.file.clone(), message)
            .key(self.key.clone())
            .at(self.line, self.col)
    }

    /// `file:line:col`, for messages that point at a second place.
    pub fn short(&self) -> String {
        format!("{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub loc: Loc,
}

/// What a path in a list must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// A regular file (includes, postprocess scripts).
    File,
    /// A directory (overlays).
    Dir,
}

/// The type of a key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A string; later files replace it.
    Str(Check),
    /// A non-negative integer; later files replace it.
    Int,
    /// A boolean; later files replace it.
    Bool,
    /// A list of strings; appended without duplicates.
    List(Check),
    /// A list of paths relative to the declaring file; resolved to absolute paths and
    /// appended without duplicates.
    Paths(PathKind),
    /// A path relative to the declaring file; resolved to an absolute path; later files
    /// replace it.
    Path(PathKind),
    /// A table with known keys.
    Table(&'static [Field]),
    /// An array of tables with known keys (`[[repositories]]`); appended, an entry equal
    /// to an earlier one dropped.
    TableList(&'static [Field]),
    /// A table of free-form string keys and string values; merged per key.
    StrMap { key: Check, value: Check },
}

#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

pub(crate) static UNIT_FIELDS: &[Field] = &[
    f("enable", Kind::List(validate::unit_name)),
    f("disable", Kind::List(validate::unit_name)),
    f("mask", Kind::List(validate::unit_name)),
];

pub(crate) static UPDATE_WINDOW_FIELDS: &[Field] = &[
    f("days", Kind::List(validate::weekday)),
    f("start", Kind::Str(validate::time_of_day)),
    f("length", Kind::Str(validate::duration)),
];

pub(crate) static UPDATE_FLEETLOCK_FIELDS: &[Field] = &[
    f("url", Kind::Str(validate::fleetlock_url)),
    f("group", Kind::Str(crate::validate::lock_group)),
];

pub(crate) static UPDATE_FIELDS: &[Field] = &[
    f("mode", Kind::Str(validate::update_mode)),
    f("reboot", Kind::Str(validate::reboot_policy)),
    f("random-delay", Kind::Str(validate::duration)),
    f("window", Kind::Table(UPDATE_WINDOW_FIELDS)),
    f("strategy", Kind::Str(validate::update_strategy)),
    f("fleetlock", Kind::Table(UPDATE_FLEETLOCK_FIELDS)),
    f("tries", Kind::Int),
];

pub(crate) static HEALTH_FIELDS: &[Field] = &[
    f("required-units", Kind::List(validate::unit_name)),
    f("timeout", Kind::Str(validate::duration)),
];

pub(crate) static REPOSITORY_FIELDS: &[Field] = &[
    f("uri", Kind::Str(validate::mirror_url)),
    f("suite", Kind::Str(validate::repository_suite)),
    f("components", Kind::List(validate::archive_name)),
    f("signed-by", Kind::Path(PathKind::File)),
    f("trusted", Kind::Bool),
];

/// Every key a recipe file may contain.
pub(crate) static FIELDS: &[Field] = &[
    f("name", Kind::Str(validate::recipe_name)),
    f("ref", Kind::Str(validate::ostree_ref)),
    f("version", Kind::Str(validate::version_template)),
    f("suite", Kind::Str(validate::archive_name)),
    f("mirror", Kind::Str(validate::mirror_url)),
    f("components", Kind::List(validate::archive_name)),
    f("packages", Kind::List(validate::package_name)),
    f("exclude-packages", Kind::List(validate::package_name)),
    f("remove-files", Kind::List(validate::remove_glob)),
    f("include", Kind::Paths(PathKind::File)),
    f("overlays", Kind::Paths(PathKind::Dir)),
    f("postprocess", Kind::Paths(PathKind::File)),
    f("units", Kind::Table(UNIT_FIELDS)),
    f("updates", Kind::Table(UPDATE_FIELDS)),
    f("health", Kind::Table(HEALTH_FIELDS)),
    f("kernel-args", Kind::List(validate::kernel_arg)),
    f("dracut-modules", Kind::List(validate::dracut_module)),
    f(
        "metadata",
        Kind::StrMap {
            key: validate::metadata_key,
            value: validate::metadata_value,
        },
    ),
    f("source-date-epoch", Kind::Int),
    f("repositories", Kind::TableList(REPOSITORY_FIELDS)),
];

/// A parsed value of one key in one file.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Str(At<String>),
    Int(At<u64>),
    Bool(At<bool>),
    /// `key` is where the list itself was written. Path lists hold absolute paths.
    List {
        key: Loc,
        items: Vec<At<String>>,
    },
    Map(Vec<(String, At<String>)>),
    /// An array of tables: where it was written, and each entry's values by field name
    /// (with where the entry starts).
    Tables {
        key: Loc,
        items: Vec<Entry>,
    },
}

/// One table of an array of tables.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub loc: Loc,
    pub values: BTreeMap<String, Val>,
}

impl Entry {
    pub fn str(&self, k: &str) -> Option<&At<String>> {
        match self.values.get(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn list(&self, k: &str) -> &[At<String>] {
        match self.values.get(k) {
            Some(Val::List { items, .. }) => items,
            _ => &[],
        }
    }

    pub fn bool(&self, k: &str) -> Option<&At<bool>> {
        match self.values.get(k) {
            Some(Val::Bool(b)) => Some(b),
            _ => None,
        }
    }

    /// The entry's values as comparable text (two entries are the same repository when
    /// this is equal).
    pub fn fingerprint(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.values {
            let t = match v {
                Val::Str(s) => s.value.clone(),
                Val::Int(n) => n.value.to_string(),
                Val::Bool(b) => b.value.to_string(),
                Val::List { items, .. } => items
                    .iter()
                    .map(|i| i.value.as_str())
                    .collect::<Vec<_>>()
                    .join("\u{1}"),
                Val::Map(_) | Val::Tables { .. } => String::new(),
            };
            out.push_str(&format!("{k}={t}\u{0}"));
        }
        out
    }
}

/// One file's contribution: values by dotted key path (`units.enable`).
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// Absolute, canonical path of the file.
    pub path: PathBuf,
    pub values: BTreeMap<String, Val>,
}

impl Layer {
    pub fn list(&self, key: &str) -> &[At<String>] {
        match self.values.get(key) {
            Some(Val::List { items, .. }) => items,
            _ => &[],
        }
    }
}

struct Ctx<'a> {
    display: &'a str,
    text: &'a str,
    /// The directory relative paths are resolved against.
    dir: &'a Path,
}

impl Ctx<'_> {
    fn loc(&self, key: &str, span: Option<std::ops::Range<usize>>) -> Loc {
        let (line, col) = span.map(|s| line_col(self.text, s.start)).unwrap_or((1, 1));
        Loc {
            file: self.display.to_string(),
            key: key.to_string(),
            line,
            col,
        }
    }
}

/// Parses and checks one recipe file. `path` must be absolute and canonical.
pub(crate) fn parse_file(path: &Path, display: &str, text: &str) -> Result<Layer, InputError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        let msg = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        InputError::new(display, format!("invalid TOML: {msg}")).at(line, col)
    })?;
    let ctx = Ctx {
        display,
        text,
        dir: path.parent().unwrap_or(Path::new("/")),
    };
    let mut values = BTreeMap::new();
    walk(&ctx, doc.as_table(), FIELDS, "", &mut values)?;
    Ok(Layer {
        path: path.to_path_buf(),
        values,
    })
}

fn join(prefix: &str, name: &str) -> String {
    let name = if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    }
}

fn span_of(key: &Key, item: &Item) -> Option<std::ops::Range<usize>> {
    match item {
        Item::Value(v) => v.span().or_else(|| key.span()),
        _ => key.span().or_else(|| item.span()),
    }
}

/// Entries of a table in the order they appear in the file.
fn entries(table: &dyn TableLike) -> Vec<(&Key, &Item)> {
    let mut v: Vec<(&Key, &Item)> = table
        .iter()
        .filter_map(|(name, _)| table.get_key_value(name))
        .collect();
    v.sort_by_key(|(k, _)| k.span().map(|s| s.start).unwrap_or(usize::MAX));
    v
}

fn type_error(ctx: &Ctx, path: &str, key: &Key, item: &Item, want: &str) -> InputError {
    let found = match item {
        Item::Value(v) => v.type_name(),
        other => other.type_name(),
    };
    ctx.loc(path, span_of(key, item))
        .error(format!("expected {want}, found {}", article(found)))
}

fn walk(
    ctx: &Ctx,
    table: &dyn TableLike,
    fields: &[Field],
    prefix: &str,
    out: &mut BTreeMap<String, Val>,
) -> Result<(), InputError> {
    for (key, item) in entries(table) {
        let name = key.get();
        let path = join(prefix, name);
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            return Err(unknown_key(ctx, &path, key, name, fields, prefix));
        };
        let val = match field.kind {
            Kind::Str(check) => {
                let s = string_value(ctx, &path, key, item, "a string")?;
                check(&s.value).map_err(|m| s.loc.error(m))?;
                Val::Str(s)
            }
            Kind::Int => {
                let loc = ctx.loc(&path, span_of(key, item));
                let Some(n) = item.as_integer() else {
                    return Err(type_error(ctx, &path, key, item, "a non-negative integer"));
                };
                let n = u64::try_from(n).map_err(|_| {
                    loc.error(format!(
                        "{n} is negative; expected seconds since 1970-01-01 UTC"
                    ))
                })?;
                Val::Int(At { value: n, loc })
            }
            Kind::Path(kind) => {
                let s = string_value(ctx, &path, key, item, "a string (a path)")?;
                Val::Str(resolve_path(ctx, s, kind, name)?)
            }
            Kind::Bool => {
                let loc = ctx.loc(&path, span_of(key, item));
                let Some(b) = item.as_bool() else {
                    return Err(type_error(ctx, &path, key, item, "true or false"));
                };
                Val::Bool(At { value: b, loc })
            }
            Kind::TableList(sub) => {
                let list_loc = ctx.loc(&path, key.span());
                let tables: Vec<(&dyn TableLike, Option<std::ops::Range<usize>>)> =
                    if let Some(a) = item.as_array_of_tables() {
                        a.iter().map(|t| (t as &dyn TableLike, t.span())).collect()
                    } else if let Some(a) = item.as_array() {
                        let mut v = Vec::new();
                        for (i, x) in a.iter().enumerate() {
                            let Some(t) = x.as_inline_table() else {
                                return Err(ctx.loc(&format!("{path}[{i}]"), x.span()).error(
                                    format!("expected a table, found {}", article(x.type_name())),
                                ));
                            };
                            v.push((t as &dyn TableLike, x.span()));
                        }
                        v
                    } else {
                        return Err(type_error(
                            ctx,
                            &path,
                            key,
                            item,
                            &format!("an array of tables ([[{path}]])"),
                        ));
                    };
                let mut items = Vec::new();
                for (i, (t, span)) in tables.into_iter().enumerate() {
                    let epath = format!("{path}[{i}]");
                    let mut vals = BTreeMap::new();
                    walk(ctx, t, sub, &epath, &mut vals)?;
                    let strip = format!("{epath}.");
                    let values = vals
                        .into_iter()
                        .map(|(k, v)| (k.strip_prefix(&strip).unwrap_or(&k).to_string(), v))
                        .collect();
                    let span = span.or_else(|| t.iter().next().and_then(|(_, v)| v.span()));
                    items.push(Entry {
                        loc: ctx.loc(&epath, span),
                        values,
                    });
                }
                Val::Tables {
                    key: list_loc,
                    items,
                }
            }
            Kind::List(check) => {
                let (list_loc, items) = string_list(ctx, &path, key, item)?;
                for s in &items {
                    check(&s.value).map_err(|m| s.loc.error(m))?;
                }
                Val::List {
                    key: list_loc,
                    items,
                }
            }
            Kind::Paths(kind) => {
                let (list_loc, items) = string_list(ctx, &path, key, item)?;
                let items = items
                    .into_iter()
                    .map(|s| resolve_path(ctx, s, kind, name))
                    .collect::<Result<Vec<_>, _>>()?;
                Val::List {
                    key: list_loc,
                    items,
                }
            }
            Kind::Table(sub) => {
                let Some(t) = item.as_table_like() else {
                    return Err(type_error(ctx, &path, key, item, "a table"));
                };
                walk(ctx, t, sub, &path, out)?;
                continue;
            }
            Kind::StrMap {
                key: kcheck,
                value: vcheck,
            } => {
                let Some(t) = item.as_table_like() else {
                    return Err(type_error(ctx, &path, key, item, "a table of strings"));
                };
                let mut map = Vec::new();
                for (k, v) in entries(t) {
                    let kpath = join(&path, k.get());
                    kcheck(k.get()).map_err(|m| ctx.loc(&kpath, k.span()).error(m))?;
                    let s = string_value(ctx, &kpath, k, v, "a string")?;
                    vcheck(&s.value).map_err(|m| s.loc.error(m))?;
                    map.push((k.get().to_string(), s));
                }
                Val::Map(map)
            }
        };
        out.insert(path, val);
    }
    Ok(())
}

fn unknown_key(
    ctx: &Ctx,
    path: &str,
    key: &Key,
    name: &str,
    fields: &[Field],
    prefix: &str,
) -> InputError {
    let mut hint = validate::suggest(name, fields.iter().map(|f| f.name))
        .map(|k| format!("; did you mean `{}`?", join(prefix, k)))
        .unwrap_or_default();
    if hint.is_empty() && prefix.is_empty() {
        // A key of a sub-table written at the top level (`enable = [...]`).
        for field in FIELDS {
            if let Kind::Table(sub) = field.kind {
                if let Some(k) = validate::suggest(name, sub.iter().map(|f| f.name)) {
                    hint = format!("; did you mean `{}.{k}`?", field.name);
                    break;
                }
            }
        }
    }
    let known = fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    let what = if prefix.is_empty() {
        "unknown key".to_string()
    } else {
        format!("unknown key in [{prefix}]")
    };
    ctx.loc(path, key.span())
        .error(format!("{what}{hint} (known keys: {known})"))
}

fn string_value(
    ctx: &Ctx,
    path: &str,
    key: &Key,
    item: &Item,
    want: &str,
) -> Result<At<String>, InputError> {
    match item.as_str() {
        Some(s) => Ok(At {
            value: s.to_string(),
            loc: ctx.loc(path, span_of(key, item)),
        }),
        None => Err(type_error(ctx, path, key, item, want)),
    }
}

fn string_list(
    ctx: &Ctx,
    path: &str,
    key: &Key,
    item: &Item,
) -> Result<(Loc, Vec<At<String>>), InputError> {
    let Some(arr) = item.as_array() else {
        let hint = if item.is_str() {
            " (write it as a list: [\"...\"])"
        } else {
            ""
        };
        let e = type_error(ctx, path, key, item, "an array of strings");
        return Err(InputError {
            message: format!("{}{hint}", e.message),
            ..e
        });
    };
    let list_loc = ctx.loc(path, key.span());
    let mut items = Vec::with_capacity(arr.len());
    for (i, v) in arr.iter().enumerate() {
        let epath = format!("{path}[{i}]");
        let loc = ctx.loc(&epath, v.span());
        match v {
            Value::String(s) => items.push(At {
                value: s.value().to_string(),
                loc,
            }),
            other => {
                return Err(loc.error(format!(
                    "expected a string, found {}",
                    article(other.type_name())
                )))
            }
        }
    }
    Ok((list_loc, items))
}

/// The first entry below `dir` (walked without following symlinks, in name order) that is
/// not a regular file, a directory or a symlink, with its kind ("a FIFO").
pub(crate) fn special_file_in(dir: &Path) -> Result<Option<(PathBuf, &'static str)>, String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e: std::io::Error| format!("{}: cannot be listed: {e}", dir.display()))?;
    names.sort();
    for n in names {
        let p = dir.join(n);
        let ft = std::fs::symlink_metadata(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .file_type();
        if ft.is_dir() {
            if let Some(bad) = special_file_in(&p)? {
                return Ok(Some(bad));
            }
        } else if !(ft.is_file() || ft.is_symlink()) {
            return Ok(Some((p, crate::validate::file_kind(ft))));
        }
    }
    Ok(None)
}

fn article(t: &str) -> String {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {t}")
    } else {
        format!("a {t}")
    }
}

/// Resolves a path written in a recipe against the declaring file's directory and checks
/// that it exists with the right type. The result is absolute and canonical.
fn resolve_path(
    ctx: &Ctx,
    s: At<String>,
    kind: PathKind,
    key: &str,
) -> Result<At<String>, InputError> {
    validate::path_string(&s.value).map_err(|m| s.loc.error(m))?;
    let joined = ctx.dir.join(&s.value);
    let what = match key {
        "include" => "included recipe",
        "overlays" => "overlay directory",
        "postprocess" => "postprocess script",
        "signed-by" => "keyring",
        _ => "path",
    };
    let meta = std::fs::metadata(&joined).map_err(|e| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_string()
        } else {
            format!("cannot be read: {e}")
        };
        s.loc.error(format!("{what} {} {reason}", joined.display()))
    })?;
    match kind {
        PathKind::Dir if !meta.is_dir() => {
            return Err(s
                .loc
                .error(format!("{what} {} is not a directory", joined.display())))
        }
        PathKind::File if !meta.is_file() => {
            return Err(s
                .loc
                .error(format!("{what} {} is not a regular file", joined.display())))
        }
        _ => {}
    }
    let canon = joined.canonicalize().map_err(|e| {
        s.loc
            .error(format!("cannot resolve {what} {}: {e}", joined.display()))
    })?;
    let Some(value) = canon.to_str() else {
        return Err(s
            .loc
            .error(format!("{what} {} is not valid UTF-8", canon.display())));
    };
    if kind == PathKind::Dir {
        // Compose hashes and copies every entry: a FIFO would block it forever, a device
        // or socket cannot be copied. Symlinks are copied as links, never followed.
        if let Some(bad) =
            special_file_in(&canon).map_err(|e| s.loc.error(format!("{what} {e}")))?
        {
            return Err(s.loc.error(format!(
                "{what} {} holds {}, which is {}: overlays may hold only regular files, \
                 directories and symlinks",
                joined.display(),
                bad.0.strip_prefix(&canon).unwrap_or(&bad.0).display(),
                bad.1
            )));
        }
    }
    Ok(At {
        value: value.to_string(),
        loc: s.loc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/recipes.md documents every key in its table.
    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/recipes.md"))
            .expect("docs/recipes.md");
        for field in FIELDS {
            let names: Vec<String> = match field.kind {
                Kind::Table(sub) | Kind::TableList(sub) => sub
                    .iter()
                    .map(|s| format!("{}.{}", field.name, s.name))
                    .collect(),
                _ => vec![field.name.to_string()],
            };
            for n in names {
                assert!(
                    doc.contains(&format!("| `{n}` |")),
                    "docs/recipes.md lacks a row for `{n}`"
                );
            }
        }
    }

    fn parse(text: &str) -> Result<Layer, InputError> {
        parse_file(Path::new("/nonexistent/r.toml"), "r.toml", text)
    }

    #[test]
    fn positions_point_at_values_and_keys() {
        let e = parse(
            "name = \"t\"\n\n  [units]\n  mask = [\n    \"ok.service\",\n    \"bad\",\n  ]\n",
        )
        .unwrap_err();
        assert_eq!((e.key.as_str(), e.pos), ("units.mask[1]", Some((6, 5))));
        let e = parse("# c\nnmae = \"t\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.pos), ("nmae", Some((2, 1))));
        assert!(e.message.contains("did you mean `name`?"), "{e}");
        // Columns count characters, not bytes.
        let e = parse("[metadata]\nnote = \"héllo\"\nx = 1\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.pos), ("metadata.x", Some((3, 5))));
        let e = parse("name = \"é\" ; ref = \"x\"\n").unwrap_err();
        assert_eq!(e.pos, Some((1, 12)));
    }

    #[test]
    fn first_error_in_document_order() {
        // `[units]` sorts before `zzz` by name, but `zzz` comes first in the file.
        let e = parse("zzz = 1\n[units]\nbogus = []\n").unwrap_err();
        assert_eq!(e.key, "zzz");
    }
}
