//! The `systemd` section: units and their drop-ins.

use super::{arr, boolean, non_empty, st, Validator, P};
use crate::ignition::json::Node;

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
    pub(super) fn systemd(&mut self, root: &Node, sd: &Node, p: &P) {
        let pu = p.k("units");
        let units = arr(sd, "units");
        for (i, u) in units.iter().enumerate() {
            self.unit(root, u, &pu.i(i));
        }
        self.dups(root, &[(pu, units)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });
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
