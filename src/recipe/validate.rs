//! Value checks for recipe keys. Each check takes one value as written in a recipe and
//! returns a message saying what is wrong with it; the caller adds file, key path and
//! position.

/// A check for one string value.
pub type Check = fn(&str) -> Result<(), String>;

fn is_ascii_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `name`: a short identifier used in file names and metadata.
pub fn recipe_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !is_ascii_alnum(c) => {
            return Err(format!(
                "{s:?} must start with a letter or digit (allowed: A-Z a-z 0-9 . _ -)"
            ))
        }
        _ => {}
    }
    if let Some(c) = chars.find(|&c| !(is_ascii_alnum(c) || "._-".contains(c))) {
        return Err(format!(
            "{s:?} contains {c:?}; allowed: letters, digits, '.', '_', '-'"
        ));
    }
    Ok(())
}

/// `ref`: an OSTree ref (`kiln/bookworm/x86_64/base`): `/`-separated components of
/// letters, digits, `.`, `_`, `-`; no empty, `.` or `..` component; no remote prefix.
pub fn ostree_ref(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.contains(':') {
        return Err(format!(
            "{s:?} is not an OSTree ref: a remote prefix (\"remote:\") is not allowed here"
        ));
    }
    for part in s.split('/') {
        if part.is_empty() {
            return Err(format!(
                "{s:?} is not an OSTree ref: empty component (leading, trailing or double '/')"
            ));
        }
        if part == "." || part == ".." {
            return Err(format!(
                "{s:?} is not an OSTree ref: component {part:?} is not allowed"
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|&c| !(is_ascii_alnum(c) || "._-".contains(c)))
        {
            return Err(format!(
                "{s:?} is not an OSTree ref: {c:?} is not allowed (components use A-Z a-z 0-9 . _ -, separated by '/')"
            ));
        }
    }
    Ok(())
}

/// The placeholders a `version` template may use.
pub const VERSION_PLACEHOLDERS: &[&str] = &["date", "serial"];

/// `version`: literal characters `A-Z a-z 0-9 . _ + ~ -` and the placeholders `{date}` and
/// `{serial}`.
pub fn version_template(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '{' {
            let Some(end) = rest.find('}') else {
                return Err(format!("{s:?}: '{{' without a closing '}}'"));
            };
            let name = &rest[1..end];
            if !VERSION_PLACEHOLDERS.contains(&name) {
                let hint = suggest(name, VERSION_PLACEHOLDERS.iter().copied())
                    .map(|k| format!(" (did you mean {{{k}}}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "{s:?}: unknown placeholder {{{name}}}{hint}; known: {{date}}, {{serial}}"
                ));
            }
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err(format!("{s:?}: '}}' without an opening '{{'"));
        } else if is_ascii_alnum(c) || "._+~-".contains(c) {
            rest = &rest[c.len_utf8()..];
        } else {
            return Err(format!(
                "{s:?} contains {c:?}; allowed: letters, digits, '.', '_', '+', '~', '-' and the placeholders {{date}}, {{serial}}"
            ));
        }
    }
    Ok(())
}

/// `suite` and `components`: lower-case Debian archive names (`bookworm`,
/// `bookworm-backports`, `non-free-firmware`).
pub fn archive_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err(format!(
                "{s:?} must start with a lower-case letter or digit"
            ))
        }
        _ => {}
    }
    if let Some(c) =
        chars.find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c)))
    {
        return Err(format!("{s:?} contains {c:?}; allowed: a-z 0-9 . -"));
    }
    Ok(())
}

/// `repositories[].suite`: a suite or codename (like `suite`), or a flat repository's
/// directory ending in `/` (`./`, `stable/`): `A-Z a-z 0-9 . _ - /`, no `..`.
pub fn repository_suite(s: &str) -> Result<(), String> {
    if !s.ends_with('/') {
        return archive_name(s);
    }
    if s.starts_with('/') {
        return Err(format!(
            "{s:?}: a flat repository's directory is relative to the uri (\"./\")"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-/".contains(c)))
    {
        return Err(format!(
            "{s:?} contains {c:?}; allowed: A-Z a-z 0-9 . _ - /"
        ));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(format!("{s:?}: `..` is not allowed"));
    }
    Ok(())
}

/// `mirror`: an `http://`, `https://` or `file:///` URL (the shared URL rule).
pub fn mirror_url(s: &str) -> Result<(), String> {
    crate::validate::url(s, crate::validate::Schemes::HttpOrFile)
}

/// `packages`, `exclude-packages`: Debian package names per Debian policy 5.6.1: at least
/// two characters, lower-case letters, digits, `+`, `-`, `.`, starting with a letter or
/// digit.
pub fn package_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty package name".into());
    }
    if s.contains('=') || s.contains('/') {
        return Err(format!(
            "{s:?} is not a package name: versions and suites (pkg=1.0, pkg/suite) are not supported here"
        ));
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{s:?} is not a Debian package name: package names are lower case (did you mean {:?}?)",
            s.to_ascii_lowercase()
        ));
    }
    let mut chars = s.chars();
    let first = chars.next().unwrap_or(' ');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not a Debian package name: it must start with a lower-case letter or digit"
        ));
    }
    if let Some(c) =
        chars.find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)))
    {
        let hint = if c.is_ascii_uppercase() {
            " (package names are lower case)"
        } else {
            ""
        };
        return Err(format!(
            "{s:?} is not a Debian package name: {c:?} is not allowed{hint}; allowed: a-z 0-9 + - ."
        ));
    }
    if s.len() < 2 {
        return Err(format!(
            "{s:?} is not a Debian package name: it must be at least two characters long"
        ));
    }
    Ok(())
}

/// The unit types a recipe may enable, disable or mask.
pub const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "device",
    "slice",
    "scope",
];

/// `updates.mode`.
pub fn update_mode(s: &str) -> Result<(), String> {
    match s {
        "off" | "check" | "stage" | "apply" => Ok(()),
        _ => Err(format!(
            "unknown update mode {s:?}: expected \"off\", \"check\", \"stage\" or \"apply\""
        )),
    }
}

/// `updates.strategy`.
pub fn update_strategy(s: &str) -> Result<(), String> {
    match s {
        "immediate" | "fleetlock" => Ok(()),
        _ => Err(format!(
            "unknown update strategy {s:?}: expected \"immediate\" or \"fleetlock\""
        )),
    }
}

/// `updates.fleetlock.url`: the FleetLock server, http or https.
pub fn fleetlock_url(s: &str) -> Result<(), String> {
    crate::validate::url(s, crate::validate::Schemes::Http)
}

/// `updates.reboot`.
pub fn reboot_policy(s: &str) -> Result<(), String> {
    match s {
        "never" | "immediate" | "window" => Ok(()),
        _ => Err(format!(
            "unknown reboot policy {s:?}: expected \"never\", \"immediate\" or \"window\""
        )),
    }
}

/// `updates.window.days[]`: `mon` … `sun`.
pub fn weekday(s: &str) -> Result<(), String> {
    if crate::updates::DAYS.contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a day: expected one of {}",
            crate::updates::DAYS.join(", ")
        ))
    }
}

/// `updates.window.start`: `HH:MM` (UTC).
pub fn time_of_day(s: &str) -> Result<(), String> {
    crate::updates::parse_time_of_day(s).map(|_| ())
}

/// A time span such as `30min` or `2h`.
pub fn duration(s: &str) -> Result<(), String> {
    crate::updates::parse_duration(s).map(|_| ())
}

/// `units.*`: a systemd unit name: `NAME.TYPE` or `NAME@INSTANCE.TYPE`, characters
/// `A-Z a-z 0-9 : - _ . \` (and one `@`), at most 255 characters.
pub fn unit_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty unit name".into());
    }
    if s.len() > 255 {
        return Err(format!(
            "unit name is {} characters long; at most 255",
            s.len()
        ));
    }
    let Some((stem, ty)) = s.rsplit_once('.') else {
        let hint = if s.contains('@') {
            "foo@bar.service"
        } else {
            "ssh.service"
        };
        return Err(format!(
            "{s:?} is not a systemd unit name: it has no type suffix (e.g. {hint})"
        ));
    };
    if !UNIT_TYPES.contains(&ty) {
        let hint = suggest(ty, UNIT_TYPES.iter().copied())
            .map(|k| format!(" (did you mean .{k}?)"))
            .unwrap_or_default();
        return Err(format!(
            "{s:?} is not a systemd unit name: unknown unit type .{ty}{hint}"
        ));
    }
    if stem.is_empty() || stem.starts_with('@') {
        return Err(format!(
            "{s:?} is not a systemd unit name: the name before the type is empty"
        ));
    }
    if stem.matches('@').count() > 1 {
        return Err(format!(
            "{s:?} is not a systemd unit name: more than one '@'"
        ));
    }
    if let Some(c) = stem
        .chars()
        .find(|&c| !(is_ascii_alnum(c) || ":-_.\\@".contains(c)))
    {
        return Err(format!(
            "{s:?} is not a systemd unit name: {c:?} is not allowed (A-Z a-z 0-9 : - _ . \\ @)"
        ));
    }
    Ok(())
}

/// `kernel-args`: one argument per entry, no whitespace, no quotes.
pub fn kernel_arg(s: &str) -> Result<(), String> {
    crate::validate::user_kernel_arg(s)
}

/// `dracut-modules`: dracut module names (`network`, `ignition`).
pub fn dracut_module(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty dracut module name".into());
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(is_ascii_alnum(c) || "_-".contains(c)))
    {
        return Err(format!(
            "{s:?} is not a dracut module name: {c:?} is not allowed (A-Z a-z 0-9 _ -)"
        ));
    }
    Ok(())
}

/// `remove-files`: a glob relative to the tree root: `*`, `?`, `[...]`, `**` for any
/// number of directories; no leading `/`, no `..` component, balanced brackets.
pub fn remove_glob(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty glob".into());
    }
    if s.starts_with('/') {
        return Err(format!(
            "{s:?} is absolute; remove-files globs are relative to the tree root (write {:?})",
            s.trim_start_matches('/')
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("{s:?} contains the control character {c:?}"));
    }
    if s.split('/').any(|p| p == "..") {
        return Err(format!("{s:?} contains '..'; globs cannot leave the tree"));
    }
    if s.split('/')
        .all(|p| p == "." || p.is_empty() || p == "**" || p == "*")
    {
        return Err(format!("{s:?} would remove the whole tree"));
    }
    let mut in_class = false;
    for c in s.chars() {
        match c {
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '/' if in_class => return Err(format!("{s:?}: '/' inside [...]")),
            _ => {}
        }
    }
    if in_class {
        return Err(format!("{s:?}: '[' without a closing ']'"));
    }
    Ok(())
}

/// `metadata` keys: letters, digits, `.`, `_`, `-`, starting with a letter.
pub fn metadata_key(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("empty metadata key".into()),
        Some(c) if !c.is_ascii_alphabetic() => {
            return Err(format!("metadata key {s:?} must start with a letter"))
        }
        _ => {}
    }
    if let Some(c) = chars.find(|&c| !(is_ascii_alnum(c) || "._-".contains(c))) {
        return Err(format!(
            "metadata key {s:?} contains {c:?}; allowed: A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// Metadata values: any string without control characters other than tab and newline.
pub fn metadata_value(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

/// Paths to files and directories (`include`, `overlays`, `postprocess`): not empty.
pub fn path_string(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    if s.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    Ok(())
}

/// Edit distance between two short strings (Levenshtein, on chars).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
/// `exclude_packages` finds `exclude-packages`; case is ignored.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let norm = word.to_ascii_lowercase().replace('_', "-");
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = distance(&norm, c);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (word.chars().count() / 3).max(2);
    (d <= limit || c.starts_with(&norm) && norm.len() >= 3).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert!(ostree_ref("kiln/bookworm/x86_64/base").is_ok());
        assert!(ostree_ref("a").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a b", "origin:a/b", "a/é"] {
            assert!(ostree_ref(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn packages() {
        for ok in [
            "linux-image-cloud-amd64",
            "g++",
            "libc6",
            "0ad",
            "python3.11",
        ] {
            assert!(package_name(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "",
            "a",
            "Vim",
            "-x",
            "foo bar",
            "foo=1.0",
            "foo/bookworm",
            "foo_bar",
        ] {
            assert!(package_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn units() {
        for ok in [
            "ssh.service",
            "getty@ttyS0.service",
            "getty@.service",
            "dev-sda.device",
            "var-lib\\x2dfoo.mount",
            "apt-daily.timer",
        ] {
            assert!(unit_name(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "",
            "ssh",
            "ssh.servce",
            ".service",
            "a b.service",
            "a@b@c.service",
            "@x.service",
        ] {
            assert!(unit_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(unit_name("ssh.servce")
            .unwrap_err()
            .contains("did you mean .service"));
    }

    #[test]
    fn versions() {
        for ok in ["{date}.{serial}", "1.0", "12~rc1+{serial}", "{date}"] {
            assert!(version_template(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in ["", "{dat}", "{date", "1}", "a b", "{}", "v/1"] {
            assert!(version_template(bad).is_err(), "{bad:?} accepted");
        }
        assert!(version_template("{dat}")
            .unwrap_err()
            .contains("did you mean {date}"));
    }

    #[test]
    fn mirrors() {
        for ok in [
            "http://deb.debian.org/debian",
            "https://127.0.0.1:8080/debian/",
            "file:///srv/mirror",
            "http://[::1]:3142/debian",
        ] {
            assert!(mirror_url(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "deb.debian.org/debian",
            "ftp://x/debian",
            "http:///debian",
            "file://srv/mirror",
            "http://host:port/x",
            "http://a b/",
        ] {
            assert!(mirror_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kernel_args_and_globs() {
        assert!(kernel_arg("console=ttyS0,115200").is_ok());
        assert!(kernel_arg("quiet").is_ok());
        for bad in ["", "a b", "a\tb", "x=\"y\"", "=1"] {
            assert!(kernel_arg(bad).is_err(), "{bad:?} accepted");
        }
        for ok in [
            "usr/share/doc/**",
            "usr/share/man/*",
            "etc/foo[0-9].conf",
            "./usr/x",
        ] {
            assert!(remove_glob(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in [
            "",
            "/usr/share/doc",
            "usr/../etc",
            "**",
            "*",
            "a[b",
            "a[/]b",
        ] {
            assert!(remove_glob(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn suggestions() {
        let keys = [
            "packages",
            "exclude-packages",
            "kernel-args",
            "units",
            "ref",
        ];
        assert_eq!(suggest("pakages", keys), Some("packages"));
        assert_eq!(suggest("exclude_packages", keys), Some("exclude-packages"));
        assert_eq!(suggest("kernel_args", keys), Some("kernel-args"));
        assert_eq!(suggest("Packages", keys), Some("packages"));
        assert_eq!(suggest("completely-different", keys), None);
    }
}
