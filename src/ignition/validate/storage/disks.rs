//! `storage.disks` and their partitions.

use super::path_error;
use crate::ignition::json::Node;
use crate::ignition::validate::{arr, boolean, int, non_empty, st, Validator, P};
use std::collections::HashMap;

fn is_guid(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Validator<'_> {
    pub(super) fn disk(&mut self, root: &Node, d: &Node, p: &P) {
        let dev = st(d, "device").unwrap_or("");
        if dev.is_empty() {
            return self.err(root, &p.k("device"), "disk device is required");
        }
        if let Some(e) = path_error(dev) {
            self.err(root, &p.k("device"), e);
        }
        let parts = arr(d, "partitions");
        let pp = p.k("partitions");
        for (i, part) in parts.iter().enumerate() {
            self.partition(root, part, &pp.i(i));
        }
        // Partition numbers.
        let mut nums: HashMap<i64, usize> = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            let n = int(part, "number").unwrap_or(0);
            if n != 0 && nums.insert(n, i).is_some() {
                self.err(root, &pp.i(i), format!("partition numbers collide ({n})"));
            }
        }
        // Overlaps, for partitions whose start and size are both given (start 0 = default).
        let ranges: Vec<Option<(i64, i64)>> = parts
            .iter()
            .map(|x| match (int(x, "startMiB"), int(x, "sizeMiB")) {
                (Some(s), Some(z)) if s != 0 => {
                    Some((s, if z == 0 { s } else { s.saturating_add(z - 1) }))
                }
                _ => None,
            })
            .collect();
        'outer: for (a, ra) in ranges.iter().enumerate() {
            let Some((s1, e1)) = ra else { continue };
            for (b, rb) in ranges.iter().enumerate() {
                let Some((s2, e2)) = rb else { continue };
                if a == b {
                    continue;
                }
                if (s1 >= s2 && s1 <= e2) || (e1 >= s2 && e1 <= e2) || (s1 < s2 && e1 > e2) {
                    self.err(
                        root,
                        &pp.i(b),
                        format!(
                            "partitions overlap: MiB {s1}–{e1} (partition {a}) and MiB {s2}–{e2} (partition {b})"
                        ),
                    );
                    break 'outer;
                }
            }
        }
        let zero = parts.iter().any(|x| int(x, "number").unwrap_or(0) == 0);
        let gone = parts
            .iter()
            .any(|x| boolean(x, "shouldExist") == Some(false));
        if zero && gone {
            self.err(
                root,
                &pp,
                "shouldExist is false for a partition and other partition(s) has start or size 0",
            );
        }
        let mut labels: HashMap<&str, usize> = HashMap::new();
        for (i, part) in parts.iter().enumerate() {
            if let Some(l) = st(part, "label") {
                if labels.insert(l, i).is_some() {
                    self.err(root, &pp.i(i), "cannot use the same partition label twice");
                }
            }
        }
    }

    fn partition(&mut self, root: &Node, part: &Node, p: &P) {
        let label = st(part, "label");
        if boolean(part, "shouldExist") == Some(false)
            && (label.is_some()
                || non_empty(st(part, "typeGuid"))
                || non_empty(st(part, "guid"))
                || int(part, "startMiB").is_some()
                || int(part, "sizeMiB").is_some())
        {
            self.err(
                root,
                p,
                "shouldExist specified false with other options also specified",
            );
        }
        if int(part, "number").unwrap_or(0) == 0 && label.is_none() {
            self.err(
                root,
                p,
                "a partition number >= 1 or a label must be specified",
            );
        }
        if let Some(l) = label {
            if l.len() > 36 {
                self.err(
                    root,
                    &p.k("label"),
                    format!(
                        "partition labels may not exceed 36 characters ({l:?} has {})",
                        l.len()
                    ),
                );
            } else if l.contains(':') {
                self.err(
                    root,
                    &p.k("label"),
                    "partition label will be truncated to text before the colon",
                );
            }
        }
        for k in ["guid", "typeGuid"] {
            if let Some(g) = st(part, k) {
                if !is_guid(g) {
                    self.err(
                        root,
                        &p.k(k),
                        "doesn't match the form \"01234567-89AB-CDEF-EDCB-A98765432101\"",
                    );
                }
            }
        }
    }
}
