//! `storage.raid`: software RAID arrays.

use super::path_error;
use crate::ignition::json::Node;
use crate::ignition::validate::{arr, int, st, Validator, P};

impl Validator<'_> {
    pub(super) fn raids(&mut self, root: &Node, s: &Node, p: &P) {
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
}
