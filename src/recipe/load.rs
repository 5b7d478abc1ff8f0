//! Loading a recipe: the file, its includes (depth-first, each file once, loops reported)
//! and its `NAME.d/*.toml` fragments, merged in order and checked as a whole.
//!
//! The order for a file F is: F's includes (each expanded by this same rule), then F,
//! then F's fragments in lexical order (each fragment's own includes first). See
//! docs/recipes.md for the merge rules.

use super::parse::{parse_file, At, Entry, Layer, Loc, Val};
use super::types::{Recipe, Repository, Units};
use crate::error::InputError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Default `version` template.
pub const DEFAULT_VERSION: &str = "{date}.{serial}";
/// Default `suite`.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Default `components`.
pub const DEFAULT_COMPONENTS: &[&str] = &["main"];

/// Reads, merges and validates the recipe at `path`. Bad input is an
/// [`InputError`] naming the file, key path and line:col.
pub fn load(path: &Path) -> anyhow::Result<Recipe> {
    Ok(load_input(path)?)
}

/// [`load`] with the concrete error type.
pub fn load_input(path: &Path) -> Result<Recipe, InputError> {
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| d.canonicalize().ok())
        .filter(|d| d != Path::new("/"));
    let mut loader = Loader {
        cwd,
        layers: Vec::new(),
        stack: Vec::new(),
        seen: HashSet::new(),
    };
    let given = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| InputError::new(&given, format!("cannot read recipe: {}", io_reason(&e))))?;
    if !meta.is_file() {
        return Err(InputError::new(&given, "recipe is not a regular file"));
    }
    let canon = path
        .canonicalize()
        .map_err(|e| InputError::new(&given, format!("cannot resolve recipe path: {e}")))?;
    loader.load_file(&canon, None, true)?;
    let main_display = loader.display(&canon);
    merge(&loader.layers, &main_display)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

struct Loader {
    cwd: Option<PathBuf>,
    layers: Vec<Layer>,
    /// Files being expanded (for loop detection), with the include that led to each.
    stack: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
}

impl Loader {
    fn display(&self, p: &Path) -> String {
        match &self.cwd {
            Some(cwd) => match p.strip_prefix(cwd) {
                Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
                _ => p.display().to_string(),
            },
            None => p.display().to_string(),
        }
    }

    /// Expands `path` (canonical): its includes, itself, then (when `with_fragments`)
    /// its fragment directory. `from` is the include entry that named it.
    fn load_file(
        &mut self,
        path: &Path,
        from: Option<&Loc>,
        with_fragments: bool,
    ) -> Result<(), InputError> {
        if let Some(start) = self.stack.iter().position(|p| p == path) {
            let mut cycle: Vec<String> = self.stack[start..]
                .iter()
                .map(|p| self.display(p))
                .collect();
            cycle.push(self.display(path));
            let msg = format!("include cycle: {}", cycle.join(" -> "));
            return Err(match from {
                Some(loc) => loc.error(msg),
                None => InputError::new(self.display(path), msg),
            });
        }
        if !self.seen.insert(path.to_path_buf()) {
            // Already merged at an earlier position: each file is merged once.
            return Ok(());
        }
        let display = self.display(path);
        let text = std::fs::read_to_string(path).map_err(|e| {
            let msg = format!("cannot read {display}: {}", io_reason(&e));
            match from {
                Some(loc) => loc.error(msg),
                None => InputError::new(&display, msg),
            }
        })?;
        let layer = parse_file(path, &display, &text)?;
        check_layer(&layer)?;

        self.stack.push(path.to_path_buf());
        for inc in layer.list("include").to_vec() {
            self.load_file(Path::new(&inc.value), Some(&inc.loc), true)?;
        }
        self.layers.push(layer);
        if with_fragments {
            for frag in fragments(path).map_err(|(dir, e)| {
                InputError::new(
                    self.display(&dir),
                    format!("cannot read fragment directory: {e}"),
                )
            })? {
                self.load_file(&frag, None, false)?;
            }
        }
        self.stack.pop();
        Ok(())
    }
}

/// The fragment directory of a recipe file: `NAME.d` next to `NAME.toml`.
pub fn fragment_dir(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".toml").unwrap_or(&name);
    path.with_file_name(format!("{stem}.d"))
}

/// The `*.toml` files in a recipe's fragment directory (not hidden, regular files or
/// links to them), canonical, sorted by file name bytes.
fn fragments(path: &Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let dir = fragment_dir(path);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(&dir).map_err(|e| (dir.clone(), e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| (dir.clone(), e))?;
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if s.starts_with('.') || !s.ends_with(".toml") {
            continue;
        }
        let p = entry.path();
        if p.is_file() {
            names.push((name, p));
        }
    }
    names.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    names
        .into_iter()
        .map(|(_, p)| p.canonicalize().map_err(|e| (p, e)))
        .collect()
}

/// Checks that only need one file.
fn check_layer(layer: &Layer) -> Result<(), InputError> {
    let pkgs: HashMap<&str, &Loc> = layer
        .list("packages")
        .iter()
        .map(|p| (p.value.as_str(), &p.loc))
        .collect();
    for ex in layer.list("exclude-packages") {
        if let Some(loc) = pkgs.get(ex.value.as_str()) {
            return Err(ex.loc.error(format!(
                "package {:?} is both installed and excluded in this file (packages at {}:{})",
                ex.value, loc.line, loc.col
            )));
        }
    }
    Ok(())
}

/// Merges layers in order: scalars replaced, lists appended without duplicates, tables
/// per key.
pub(crate) fn merge_values(layers: &[Layer]) -> BTreeMap<String, Val> {
    let mut merged: BTreeMap<String, Val> = BTreeMap::new();
    for layer in layers {
        for (key, val) in &layer.values {
            if key == "include" {
                continue;
            }
            match (merged.get_mut(key), val) {
                (
                    Some(Val::List { key: kloc, items }),
                    Val::List {
                        key: nkloc,
                        items: new,
                    },
                ) => {
                    *kloc = nkloc.clone();
                    for item in new {
                        if !items.iter().any(|i| i.value == item.value) {
                            items.push(item.clone());
                        }
                    }
                }
                (
                    Some(Val::Tables { key: kloc, items }),
                    Val::Tables {
                        key: nkloc,
                        items: new,
                    },
                ) => {
                    *kloc = nkloc.clone();
                    for item in new {
                        if !items.iter().any(|i| i.fingerprint() == item.fingerprint()) {
                            items.push(item.clone());
                        }
                    }
                }
                (_, Val::Tables { key: kloc, items }) => {
                    let mut uniq: Vec<Entry> = Vec::new();
                    for item in items {
                        if !uniq.iter().any(|i| i.fingerprint() == item.fingerprint()) {
                            uniq.push(item.clone());
                        }
                    }
                    merged.insert(
                        key.clone(),
                        Val::Tables {
                            key: kloc.clone(),
                            items: uniq,
                        },
                    );
                }
                (Some(Val::Map(entries)), Val::Map(new)) => {
                    for (k, v) in new {
                        match entries.iter_mut().find(|(ek, _)| ek == k) {
                            Some(e) => e.1 = v.clone(),
                            None => entries.push((k.clone(), v.clone())),
                        }
                    }
                }
                (_, Val::List { key: kloc, items }) => {
                    let mut uniq: Vec<At<String>> = Vec::new();
                    for item in items {
                        if !uniq.iter().any(|i| i.value == item.value) {
                            uniq.push(item.clone());
                        }
                    }
                    merged.insert(
                        key.clone(),
                        Val::List {
                            key: kloc.clone(),
                            items: uniq,
                        },
                    );
                }
                (_, v) => {
                    merged.insert(key.clone(), v.clone());
                }
            }
        }
    }
    merged
}

/// Units named in two conflicting lists (enabled and masked, enabled and disabled). The
/// error points at the entry merged later.
fn check_units(layers: &[Layer]) -> Result<(), InputError> {
    let past = |w: &str| match w {
        "enable" => "enabled",
        "disable" => "disabled",
        _ => "masked",
    };
    let mut state: HashMap<String, (&'static str, Loc)> = HashMap::new();
    for layer in layers {
        // Within one file, in the order the entries are written.
        let mut entries: Vec<(&'static str, &At<String>)> = ["enable", "disable", "mask"]
            .into_iter()
            .flat_map(|w| {
                layer
                    .list(&format!("units.{w}"))
                    .iter()
                    .map(move |u| (w, u))
            })
            .collect();
        entries.sort_by_key(|(_, u)| (u.loc.line, u.loc.col));
        for (what, u) in entries {
            if let Some((prev, ploc)) = state.get(&u.value) {
                if (*prev == "enable") != (what == "enable") {
                    return Err(u.loc.error(format!(
                        "unit {:?} is {} here but {} at {}; a unit cannot be both",
                        u.value,
                        past(what),
                        past(prev),
                        ploc.short()
                    )));
                }
                // Remember the strongest state: mask over disable.
                if what != "mask" {
                    continue;
                }
            }
            state.insert(u.value.clone(), (what, u.loc.clone()));
        }
    }
    Ok(())
}

/// The `[updates]` table, with the checks that involve several keys.
fn resolve_updates(m: &BTreeMap<String, Val>) -> Result<crate::updates::Updates, InputError> {
    use crate::updates::{parse_duration, Fleetlock, Mode, Reboot, Strategy, Updates, Window};
    let get = |k: &str| match m.get(k) {
        Some(Val::Str(s)) => Some(s),
        _ => None,
    };
    let mode = match get("updates.mode").map(|s| s.value.as_str()) {
        None | Some("off") => Mode::Off,
        Some("check") => Mode::Check,
        Some("stage") => Mode::Stage,
        _ => Mode::Apply,
    };
    let reboot = match get("updates.reboot").map(|s| s.value.as_str()) {
        None | Some("never") => Reboot::Never,
        Some("immediate") => Reboot::Immediate,
        _ => Reboot::Window,
    };
    if let Some(r) = get("updates.reboot") {
        if reboot != Reboot::Never && mode != Mode::Apply {
            return Err(r.loc.error(format!(
                "reboot = {:?} only takes effect with mode = \"apply\" (mode is {:?}); \
                 \"stage\" leaves the update for the next reboot",
                r.value,
                get("updates.mode")
                    .map(|s| s.value.as_str())
                    .unwrap_or("off")
            )));
        }
    }
    let days = match m.get("updates.window.days") {
        Some(Val::List { key, items }) => Some((key, items)),
        _ => None,
    };
    let start = get("updates.window.start");
    let length = get("updates.window.length");
    let any_window = days.is_some() || start.is_some() || length.is_some();
    let window = if any_window {
        let first = days
            .map(|d| d.0)
            .or(start.map(|s| &s.loc))
            .or(length.map(|s| &s.loc))
            .cloned()
            .unwrap_or_else(unreachable_loc);
        if reboot != Reboot::Window {
            return Err(first.error(
                "a maintenance window is set but reboot is not \"window\"; set \
                 updates.reboot = \"window\" or remove [updates.window]",
            ));
        }
        let missing = |k: &str| first.error(format!("updates.window needs `{k}`"));
        let (dkey, ditems) = days.ok_or_else(|| missing("days"))?;
        if ditems.is_empty() {
            return Err(dkey.error("updates.window.days is empty: name at least one day"));
        }
        let start = start.ok_or_else(|| missing("start"))?;
        let length = length.ok_or_else(|| missing("length"))?;
        let secs = parse_duration(&length.value).map_err(|e| length.loc.error(e))?;
        if secs == 0 || secs > 7 * 86400 {
            return Err(length
                .loc
                .error("the window length must be between 1s and 7d"));
        }
        Some(Window {
            days: ditems.iter().map(|d| d.value.clone()).collect(),
            start: start.value.clone(),
            length: secs,
        })
    } else {
        if reboot == Reboot::Window {
            let r = get("updates.reboot")
                .map(|r| r.loc.clone())
                .unwrap_or_else(unreachable_loc);
            return Err(
                r.error("reboot = \"window\" needs [updates.window] with days, start and length")
            );
        }
        None
    };
    let random_delay = match get("updates.random-delay") {
        Some(s) => parse_duration(&s.value).map_err(|e| s.loc.error(e))?,
        None => 0,
    };
    let tries = match m.get("updates.tries") {
        Some(Val::Int(n)) => {
            let max = crate::deploy::bootcount::MAX_TRIES;
            if !(1..=u64::from(max)).contains(&n.value) {
                return Err(n.loc.error(format!(
                    "updates.tries is {}: a new deployment gets between 1 and {max} boots",
                    n.value
                )));
            }
            Some(n.value as u32)
        }
        _ => None,
    };
    let strategy = match get("updates.strategy").map(|s| s.value.as_str()) {
        Some("fleetlock") => Strategy::Fleetlock,
        _ => Strategy::Immediate,
    };
    let url = get("updates.fleetlock.url");
    let group = get("updates.fleetlock.group");
    let fleetlock = url.map(|u| Fleetlock {
        url: u.value.clone(),
        group: group
            .map(|g| g.value.clone())
            .unwrap_or_else(|| "default".into()),
    });
    let u = Updates {
        mode,
        reboot,
        window,
        random_delay,
        tries,
        strategy,
        fleetlock,
    };
    if let Some(msg) = u.strategy_error() {
        let at = get("updates.strategy")
            .or(url)
            .or(group)
            .map(|s| s.loc.clone())
            .unwrap_or_else(unreachable_loc);
        return Err(at.error(msg));
    }
    Ok(u)
}

/// The `[health]` table.
fn resolve_health(m: &BTreeMap<String, Val>) -> Result<crate::updates::Health, InputError> {
    let mut h = crate::updates::Health::default();
    if let Some(Val::List { items, .. }) = m.get("health.required-units") {
        h.required_units = items.iter().map(|i| i.value.clone()).collect();
    }
    if let Some(Val::Str(s)) = m.get("health.timeout") {
        let secs = crate::updates::parse_duration(&s.value).map_err(|e| s.loc.error(e))?;
        if secs == 0 || secs > 86400 {
            return Err(s.loc.error("health.timeout must be between 1s and 1d"));
        }
        h.timeout = secs;
    }
    Ok(h)
}

/// `[[repositories]]`, each checked: `uri` and `suite` present, components for a
/// suite and none for a flat repository, `signed-by` or an explicit `trusted = true`
/// (not both), and no two entries for the same `uri` and `suite`.
fn resolve_repositories(m: &BTreeMap<String, Val>) -> Result<Vec<Repository>, InputError> {
    let Some(Val::Tables { items, .. }) = m.get("repositories") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(Repository, &Loc)> = Vec::new();
    for e in items {
        let need = |k: &str| {
            e.str(k).ok_or_else(|| {
                e.loc.error(format!(
                    "a repository needs `{k}` (uri, suite, components, and signed-by or \
                     trusted = true)"
                ))
            })
        };
        let uri = need("uri")?;
        let suite = need("suite")?;
        let flat = suite.value.ends_with('/');
        let comps = e.list("components");
        if flat && !comps.is_empty() {
            return Err(comps[0].loc.error(format!(
                "suite {:?} is a flat repository (ends in `/`), which has no components",
                suite.value
            )));
        }
        if !flat && comps.is_empty() {
            return Err(match e.values.get("components") {
                Some(Val::List { key, .. }) => key.error("components is empty: name at least one"),
                _ => e.loc.error(format!(
                    "a repository with suite {:?} needs `components` (a flat repository's \
                     suite ends in `/`, e.g. \"./\")",
                    suite.value
                )),
            });
        }
        let signed = e.str("signed-by");
        let trusted = e.bool("trusted");
        match (signed, trusted) {
            (Some(_), Some(t)) if t.value => {
                return Err(t.loc.error(
                    "trusted = true turns signature checks off, which makes signed-by \
                     pointless: keep one of them",
                ))
            }
            (None, None) => {
                return Err(e.loc.error(format!(
                    "repository {} {} has no `signed-by`: name the keyring file its \
                     InRelease is signed with (relative to this file), or set trusted = true \
                     to install from it without any signature check",
                    uri.value, suite.value
                )))
            }
            (None, Some(t)) if !t.value => {
                return Err(t.loc.error(
                    "trusted = false needs `signed-by`: name the keyring file the \
                     repository's InRelease is signed with",
                ))
            }
            _ => {}
        }
        let r = Repository {
            uri: uri.value.trim_end_matches('/').to_string(),
            suite: suite.value.clone(),
            components: comps.iter().map(|c| c.value.clone()).collect(),
            signed_by: signed.map(|s| PathBuf::from(&s.value)),
            trusted: trusted.is_some_and(|t| t.value),
        };
        if let Some((_, prev)) = out
            .iter()
            .find(|(o, _)| o.uri == r.uri && o.suite == r.suite)
        {
            return Err(e.loc.error(format!(
                "repository {} {} is already declared at {} with other settings",
                r.uri,
                r.suite,
                prev.short()
            )));
        }
        out.push((r, &e.loc));
    }
    Ok(out.into_iter().map(|(r, _)| r).collect())
}

fn unreachable_loc() -> Loc {
    Loc {
        file: "recipe".into(),
        key: "updates".into(),
        line: 1,
        col: 1,
    }
}

fn merge(layers: &[Layer], main_display: &str) -> Result<Recipe, InputError> {
    check_units(layers)?;
    let mut m = merge_values(layers);
    let missing = |key: &str| {
        InputError::new(
            main_display,
            format!("missing required key `{key}` (in this file or a file it includes)"),
        )
        .key(key)
        .at(1, 1)
    };
    let scalar = |m: &BTreeMap<String, Val>, key: &str| match m.get(key) {
        Some(Val::Str(s)) => Some(s.value.clone()),
        _ => None,
    };
    let name = scalar(&m, "name").ok_or_else(|| missing("name"))?;
    let ref_ = scalar(&m, "ref").ok_or_else(|| missing("ref"))?;

    let mut list = |key: &str| -> Vec<String> {
        match m.remove(key) {
            Some(Val::List { items, .. }) => items.into_iter().map(|i| i.value).collect(),
            _ => Vec::new(),
        }
    };
    let exclude_packages = list("exclude-packages");
    let (packages, packages_loc) = match m.remove("packages") {
        Some(Val::List { key, items }) => (
            items
                .into_iter()
                .map(|i| i.value)
                .filter(|p| !exclude_packages.contains(p))
                .collect::<Vec<_>>(),
            Some(key),
        ),
        _ => (Vec::new(), None),
    };
    if packages.is_empty() {
        return Err(match packages_loc {
            Some(loc) if exclude_packages.is_empty() => {
                loc.error("no packages to install: the merged packages list is empty")
            }
            Some(loc) => loc.error(
                "no packages to install: every package in the merged list is in exclude-packages",
            ),
            None => missing("packages"),
        });
    }
    let updates = resolve_updates(&m)?;
    let health = resolve_health(&m)?;
    let repositories = resolve_repositories(&m)?;
    let mut list = |key: &str| -> Vec<String> {
        match m.remove(key) {
            Some(Val::List { items, .. }) => items.into_iter().map(|i| i.value).collect(),
            _ => Vec::new(),
        }
    };
    let components = list("components");
    let components = if components.is_empty() {
        DEFAULT_COMPONENTS.iter().map(|s| s.to_string()).collect()
    } else {
        components
    };
    let remove_files = list("remove-files");
    let overlays = list("overlays").into_iter().map(PathBuf::from).collect();
    let postprocess = list("postprocess").into_iter().map(PathBuf::from).collect();
    let mut enable = list("units.enable");
    if updates.mode != crate::updates::Mode::Off
        && !enable.iter().any(|u| u == crate::updates::TIMER)
    {
        enable.push(crate::updates::TIMER.to_string());
    }
    if updates.strategy == crate::updates::Strategy::Fleetlock
        && !enable.iter().any(|u| u == crate::updates::STEADY_UNIT)
    {
        enable.push(crate::updates::STEADY_UNIT.to_string());
    }
    let units = Units {
        enable,
        disable: list("units.disable"),
        mask: list("units.mask"),
    };
    let kernel_args = list("kernel-args");
    let dracut_modules = list("dracut-modules");
    let metadata = match m.remove("metadata") {
        Some(Val::Map(entries)) => entries.into_iter().map(|(k, v)| (k, v.value)).collect(),
        _ => BTreeMap::new(),
    };
    let source_date_epoch = match m.get("source-date-epoch") {
        Some(Val::Int(n)) => Some(n.value),
        _ => None,
    };
    Ok(Recipe {
        name,
        ref_,
        version: scalar(&m, "version").unwrap_or_else(|| DEFAULT_VERSION.to_string()),
        suite: scalar(&m, "suite").unwrap_or_else(|| DEFAULT_SUITE.to_string()),
        mirror: scalar(&m, "mirror"),
        components,
        packages,
        exclude_packages,
        remove_files,
        overlays,
        postprocess,
        units,
        updates,
        health,
        kernel_args,
        dracut_modules,
        metadata,
        source_date_epoch,
        repositories,
        sources: layers.iter().map(|l| l.path.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const HEAD: &str = "name = \"t\"\nref = \"kiln/test\"\npackages = [\"bash\"]\n";

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = dir.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text.replace("{HEAD}", HEAD)).unwrap();
        }
        dir
    }

    fn load_in(dir: &tempfile::TempDir, file: &str) -> Result<Recipe, InputError> {
        load_input(&dir.path().join(file))
    }

    fn names(dir: &tempfile::TempDir, r: &Recipe) -> Vec<String> {
        let root = dir.path().canonicalize().unwrap();
        r.sources
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn defaults_fill_in() {
        let d = tree(&[("r.toml", "{HEAD}")]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.version, DEFAULT_VERSION);
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.components, vec!["main"]);
        assert_eq!(r.mirror, None);
        assert_eq!(r.source_date_epoch, None);
        assert_eq!(names(&d, &r), vec!["r.toml"]);
    }

    #[test]
    fn order_is_includes_then_file_then_fragments() {
        let d = tree(&[
            ("r.toml", "include = [\"a.toml\", \"b.toml\"]\nname = \"t\"\nref = \"k/t\"\npackages = [\"r1\"]\n"),
            ("a.toml", "include = [\"lib/c.toml\"]\npackages = [\"a1\"]"),
            ("lib/c.toml", "packages = [\"c1\"]"),
            ("b.toml", "packages = [\"b1\"]"),
            ("b.d/10-x.toml", "packages = [\"bx\"]"),
            ("r.d/20-y.toml", "packages = [\"ry\"]"),
            ("r.d/10-x.toml", "packages = [\"rx\"]"),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(
            names(&d, &r),
            vec![
                "lib/c.toml",
                "a.toml",
                "b.toml",
                "b.d/10-x.toml",
                "r.toml",
                "r.d/10-x.toml",
                "r.d/20-y.toml"
            ]
        );
        assert_eq!(r.packages, vec!["c1", "a1", "b1", "bx", "r1", "rx", "ry"]);
    }

    #[test]
    fn scalars_later_wins_lists_dedup_tables_per_key() {
        let d = tree(&[
            (
                "base.toml",
                "name = \"base\"\nref = \"k/base\"\nversion = \"1\"\nsuite = \"bookworm\"\n\
                 packages = [\"aa\", \"bb\"]\nkernel-args = [\"quiet\"]\n\
                 [units]\nenable = [\"x.service\"]\n[metadata]\nteam = \"os\"\ntier = \"1\"\n",
            ),
            (
                "r.toml",
                "include = [\"base.toml\"]\nname = \"r\"\nversion = \"2\"\n\
                 packages = [\"bb\", \"cc\", \"cc\"]\nkernel-args = [\"quiet\", \"debug\"]\n\
                 [units]\nenable = [\"y.service\", \"x.service\"]\n[metadata]\ntier = \"2\"\n",
            ),
            (
                "r.d/50-v.toml",
                "version = \"3\"\nsource-date-epoch = 1700000000\n",
            ),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.name, "r");
        assert_eq!(r.ref_, "k/base");
        assert_eq!(r.version, "3");
        assert_eq!(r.source_date_epoch, Some(1_700_000_000));
        assert_eq!(r.packages, vec!["aa", "bb", "cc"]);
        assert_eq!(r.kernel_args, vec!["quiet", "debug"]);
        assert_eq!(r.units.enable, vec!["x.service", "y.service"]);
        assert_eq!(r.metadata.get("team").map(String::as_str), Some("os"));
        assert_eq!(r.metadata.get("tier").map(String::as_str), Some("2"));
    }

    #[test]
    fn each_file_is_merged_once() {
        // Diamond: a and b both include c. c is merged once, at its first position, so
        // a's override of c's suite is not undone when b includes c again.
        let d = tree(&[
            ("r.toml", "include = [\"a.toml\", \"b.toml\"]\n{HEAD}"),
            ("a.toml", "include = [\"c.toml\"]\nsuite = \"trixie\"\n"),
            ("b.toml", "include = [\"c.toml\"]\n"),
            ("c.toml", "suite = \"bookworm\"\n"),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(names(&d, &r), vec!["c.toml", "a.toml", "b.toml", "r.toml"]);
        assert_eq!(r.suite, "trixie");
    }

    #[test]
    fn fragments_lexical_hidden_and_non_toml_ignored() {
        let d = tree(&[
            ("r.toml", "{HEAD}version = \"0\""),
            ("r.d/2-b.toml", "version = \"2\""),
            ("r.d/10-a.toml", "version = \"10\""),
            ("r.d/99-z.toml", "version = \"99\""),
            ("r.d/.50-hidden.toml", "version = \"hidden\""),
            ("r.d/README", "not toml"),
            ("r.d/99-z.toml.orig", "version = \"orig\""),
            // A fragment's own NAME.d is not read: only recipes named on the command
            // line or in `include` have fragment directories.
            ("r.d/99-z.d/x.toml", "version = \"nested\""),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(
            names(&d, &r),
            vec!["r.toml", "r.d/10-a.toml", "r.d/2-b.toml", "r.d/99-z.toml"]
        );
        assert_eq!(r.version, "99");
    }

    #[test]
    fn fragment_includes_come_before_the_fragment() {
        let d = tree(&[
            ("r.toml", "{HEAD}"),
            (
                "r.d/10-x.toml",
                "include = [\"../extra/tools.toml\"]\npackages = [\"xx\"]",
            ),
            ("extra/tools.toml", "packages = [\"tool\"]"),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(
            names(&d, &r),
            vec!["r.toml", "extra/tools.toml", "r.d/10-x.toml"]
        );
        assert_eq!(r.packages, vec!["bash", "tool", "xx"]);
    }

    #[test]
    fn paths_resolve_against_the_declaring_file() {
        let d = tree(&[
            (
                "recipes/r.toml",
                "include = [\"sub/base.toml\"]\n{HEAD}overlays = [\"../ov/two\"]",
            ),
            (
                "recipes/sub/base.toml",
                "overlays = [\"../../ov/one\"]\npostprocess = [\"fix.sh\"]",
            ),
            ("recipes/sub/fix.sh", "#!/bin/sh\n"),
            ("ov/one/.keep", ""),
            ("ov/two/.keep", ""),
        ]);
        let r = load_in(&d, "recipes/r.toml").unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(r.overlays, vec![root.join("ov/one"), root.join("ov/two")]);
        assert_eq!(r.postprocess, vec![root.join("recipes/sub/fix.sh")]);
        assert!(r.overlays.iter().all(|p| p.is_absolute()));
    }

    #[test]
    fn exclude_packages_drop_inherited_packages() {
        let d = tree(&[
            (
                "base.toml",
                "name = \"b\"\nref = \"k/b\"\npackages = [\"bash\", \"podman\"]",
            ),
            (
                "r.toml",
                "include = [\"base.toml\"]\nexclude-packages = [\"podman\"]",
            ),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.packages, vec!["bash"]);
        assert_eq!(r.exclude_packages, vec!["podman"]);
    }

    #[test]
    fn include_cycle_names_the_cycle() {
        let d = tree(&[
            ("r.toml", "include = [\"a.toml\"]\n{HEAD}"),
            ("a.toml", "include = [\"b.toml\"]\n"),
            ("b.toml", "\ninclude = [\"a.toml\"]\n"),
        ]);
        let e = load_in(&d, "r.toml").unwrap_err();
        assert!(e.file.ends_with("b.toml"), "{e}");
        assert_eq!(e.key, "include[0]");
        assert_eq!(e.pos, Some((2, 12)));
        assert!(
            e.message.contains("a.toml -> ") && e.message.contains("b.toml -> "),
            "{e}"
        );
        assert!(e.message.starts_with("include cycle:"), "{e}");
    }

    #[test]
    fn unit_conflict_points_at_the_later_entry() {
        let d = tree(&[
            ("base.toml", "name = \"b\"\nref = \"k/b\"\npackages = [\"bash\"]\n[units]\nmask = [\"x.service\"]\n"),
            ("r.toml", "include = [\"base.toml\"]\n[units]\nenable = [\"x.service\"]\n"),
        ]);
        let e = load_in(&d, "r.toml").unwrap_err();
        assert!(e.file.ends_with("r.toml"), "{e}");
        assert_eq!((e.key.as_str(), e.pos), ("units.enable[0]", Some((3, 11))));
        assert!(e.message.contains("base.toml:5:9"), "{e}");
        // disable + mask is not a conflict.
        fs::write(
            d.path().join("r.toml"),
            "include = [\"base.toml\"]\n[units]\ndisable = [\"x.service\"]\n",
        )
        .unwrap();
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.units.mask, vec!["x.service"]);
    }

    #[test]
    fn updates_table_resolves_and_enables_the_timer() {
        let d = tree(&[(
            "r.toml",
            "{HEAD}[updates]\nmode = \"apply\"\nreboot = \"window\"\nrandom-delay = \"30min\"\n\
             [updates.window]\ndays = [\"sat\", \"sun\"]\nstart = \"02:30\"\nlength = \"2h\"\n",
        )]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.updates.mode, crate::updates::Mode::Apply);
        assert_eq!(r.updates.random_delay, 1800);
        let w = r.updates.window.unwrap();
        assert_eq!(
            (w.days.len(), w.start.as_str(), w.length),
            (2, "02:30", 7200)
        );
        assert!(r.units.enable.contains(&"kiln-upgrade.timer".to_string()));
        // No [updates]: off, no timer.
        let d = tree(&[("r.toml", "{HEAD}")]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.updates, crate::updates::Updates::default());
        assert!(r.units.enable.is_empty());
    }

    #[test]
    fn tries_and_health_resolve() {
        let d = tree(&[(
            "r.toml",
            "{HEAD}[updates]\nmode = \"stage\"\ntries = 5\n\
             [health]\nrequired-units = [\"web.service\"]\ntimeout = \"2min\"\n",
        )]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.updates.tries, Some(5));
        assert_eq!(r.health.required_units, vec!["web.service"]);
        assert_eq!(r.health.timeout, 120);
        let d = tree(&[("r.toml", "{HEAD}")]);
        let r = load_in(&d, "r.toml").unwrap();
        assert_eq!(r.health, crate::updates::Health::default());
        assert_eq!(r.updates.tries, None);
    }

    #[test]
    fn updates_errors_are_located() {
        let cases: &[(&str, &str, (usize, usize), &str)] = &[
            ("[updates]\nmode = \"sometimes\"\n", "updates.mode", (5, 8), "unknown update mode"),
            ("[updates]\nmode = \"stage\"\nreboot = \"immediate\"\n", "updates.reboot", (6, 10), "only takes effect"),
            ("[updates]\nmode = \"apply\"\nreboot = \"window\"\n", "updates.reboot", (6, 10), "needs [updates.window]"),
            ("[updates]\nmode = \"apply\"\nreboot = \"window\"\n[updates.window]\ndays = [\"fri\", \"caturday\"]\nstart = \"02:00\"\nlength = \"1h\"\n", "updates.window.days[1]", (8, 16), "not a day"),
            ("[updates]\nrandom-delay = \"soon\"\n", "updates.random-delay", (5, 16), "not a duration"),
            ("[updates]\nmode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n", "updates.strategy", (7, 12), "needs [updates.fleetlock]"),
            ("[updates]\nmode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n[updates.fleetlock]\nurl = \"ftp://x\"\n", "updates.fleetlock.url", (9, 7), "not supported"),
            ("[updates]\nmode = \"apply\"\nreboot = \"immediate\"\nstrategy = \"fleetlock\"\n[updates.fleetlock]\nurl = \"http://x\"\ngroup = \"a/b\"\n", "updates.fleetlock.group", (10, 9), "FleetLock group"),
            ("[updates]\nmode = \"stage\"\nstrategy = \"fleetlock\"\n[updates.fleetlock]\nurl = \"http://x\"\n", "updates.strategy", (6, 12), "needs mode = \"apply\""),
            ("[updates]\ntries = 12\n", "updates.tries", (5, 9), "between 1 and 9"),
            ("[health]\nrequired-units = [\"web\"]\n", "health.required-units[0]", (5, 19), "not a systemd unit name"),
            ("[health]\ntimeout = \"0s\"\n", "health.timeout", (5, 11), "between 1s and 1d"),
            ("[updates]\nmode = \"apply\"\nreboot = \"window\"\n[updates.window]\ndays = [\"fri\"]\nstart = \"25:00\"\nlength = \"1h\"\n", "updates.window.start", (9, 9), "not a time of day"),
        ];
        for (text, key, pos, msg) in cases {
            let d = tree(&[("r.toml", &format!("{{HEAD}}{text}"))]);
            let e = load_in(&d, "r.toml").unwrap_err();
            assert_eq!((e.key.as_str(), e.pos), (*key, Some(*pos)), "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn repositories_resolve_and_merge_across_fragments() {
        let d = tree(&[
            (
                "r.toml",
                "{HEAD}[[repositories]]\nuri = \"https://vendor.example/debian/\"\n\
                 suite = \"bookworm\"\ncomponents = [\"main\"]\nsigned-by = \"keys/v.gpg\"\n",
            ),
            ("keys/v.gpg", "k"),
            (
                "r.d/10-local.toml",
                "[[repositories]]\nuri = \"file:///srv/local\"\nsuite = \"./\"\ntrusted = true\n\
                 [[repositories]]\nuri = \"https://vendor.example/debian/\"\n\
                 suite = \"bookworm\"\ncomponents = [\"main\"]\nsigned-by = \"../keys/v.gpg\"\n",
            ),
        ]);
        let r = load_in(&d, "r.toml").unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(
            r.repositories,
            vec![
                Repository {
                    uri: "https://vendor.example/debian".into(),
                    suite: "bookworm".into(),
                    components: vec!["main".into()],
                    signed_by: Some(root.join("keys/v.gpg")),
                    trusted: false,
                },
                Repository {
                    uri: "file:///srv/local".into(),
                    suite: "./".into(),
                    components: vec![],
                    signed_by: None,
                    trusted: true,
                },
            ]
        );
        assert_eq!(r.warnings().len(), 1, "the trusted repository is flagged");
        assert!(r.warnings()[0].contains("without any signature check"));
        // Shown and loaded back the same.
        let text = crate::recipe::cli::render_toml(&r).unwrap();
        let back: toml::Value = toml::from_str(&text).unwrap();
        let repos = back["repositories"].as_array().unwrap();
        assert_eq!(repos.len(), 2, "{text}");
        assert_eq!(repos[1]["trusted"].as_bool(), Some(true), "{text}");
        // A recipe without repositories serializes as before.
        let plain = load_in(&tree(&[("r.toml", "{HEAD}")]), "r.toml").unwrap();
        let j = serde_json::to_value(&plain).unwrap();
        assert!(j.get("repositories").is_none());
    }

    #[test]
    fn shipped_recipes_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let base = load_input(&root.join("recipes/base.toml")).unwrap();
        assert_eq!(base.ref_, "kiln/bookworm/x86_64/base");
        assert_eq!(
            base.sources.len(),
            1,
            "base.toml must not pull fragments into the default image"
        );
        let dev = load_input(&root.join("recipes/examples/devbox.toml")).unwrap();
        assert_eq!(dev.sources.len(), 3);
        assert!(dev
            .packages
            .contains(&"linux-image-cloud-amd64".to_string()));
        assert!(dev.packages.contains(&"jq".to_string()));
        assert_eq!(dev.overlays, base.overlays);
    }
}
