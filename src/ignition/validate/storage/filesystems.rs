//! `storage.filesystems`.

use super::path_error;
use crate::ignition::json::Node;
use crate::ignition::validate::{arr, boolean, non_empty, st, Validator, P};

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
