//! `storage.filesystems`.

use super::path_error;
use crate::ignition::json::Node;
use crate::ignition::validate::{arr, boolean, non_empty, st, Validator, P};

/// `path` is /var (however written: `/var/`, `//var`).
fn clean_var(path: &str) -> bool {
    path.split('/').filter(|c| !c.is_empty()).eq(["var"])
}

/// The config has a `var.mount` unit that is enabled or has contents.
fn has_var_mount_unit(root: &Node) -> bool {
    root.get("systemd")
        .map(|s| arr(s, "units"))
        .unwrap_or_default()
        .iter()
        .any(|u| st(u, "name") == Some("var.mount"))
}

impl Validator<'_> {
    pub(super) fn filesystem(&mut self, root: &Node, f: &Node, p: &P) {
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
        if st(f, "path").map(clean_var) == Some(true) && !has_var_mount_unit(root) {
            self.warn(
                root,
                &p.k("path"),
                "a filesystem at /var is mounted there on the first boot only: without a var.mount \
                 unit in systemd.units, later boots use the deployment's own /var and do not \
                 see what Ignition wrote (kiln's with_mount_unit = true writes the unit)",
            );
        }
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
}

#[cfg(test)]
mod tests {
    use crate::ignition::validate::validate_json;

    fn var_warnings(units: &str) -> usize {
        let text = format!(
            r#"{{"ignition": {{"version": "3.3.0"}},
  "storage": {{"filesystems": [{{"device": "/dev/mapper/var", "format": "ext4", "path": "/var"}}]}},
  "systemd": {{"units": [{units}]}}}}"#
        );
        let r = validate_json(&text);
        assert!(!r.has_errors(), "{:?}", r.diagnostics);
        r.warnings()
            .filter(|d| d.path == "$.storage.filesystems.0.path" && d.message.contains("var.mount"))
            .count()
    }

    #[test]
    fn a_filesystem_at_var_without_a_mount_unit_is_a_warning() {
        assert_eq!(var_warnings(""), 1);
        assert_eq!(
            var_warnings(
                r#"{"name": "var.mount", "enabled": true, "contents": "[Mount]\nWhat=/dev/mapper/var\nWhere=/var\n[Install]\nRequiredBy=local-fs.target\n"}"#
            ),
            0
        );
    }
}
