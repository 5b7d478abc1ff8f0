//! A config checked against the image it provisions (`--against REPO:REF`): what neither
//! Ignition's schema nor its validator can know, found before first boot.
//!
//! Errors: a file or link the image already has, written without `overwrite` (Ignition's
//! files stage stops the boot); any path under /usr (read-only, from the commit); a user
//! in a group neither the image nor the config has; a unit enabled that neither defines;
//! a unit (or drop-in) whose `ExecStart*` program is not in the image nor written by the
//! config. Warning: a `storage.filesystems` device named the way the platform's disks are
//! not (`/dev/sdb` on QEMU's virtio disks).

use super::json::Node;
use crate::repo::tree::{CommitTree, Kind};
use std::collections::BTreeSet;

/// One problem: where in the config (an Ignition JSON path and the byte offset of its
/// node), what, and whether it only warns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub warning: bool,
    /// `$.storage.files.0`.
    pub path: String,
    pub pos: usize,
    pub message: String,
}

struct Checker<'a> {
    image: &'a CommitTree,
    found: Vec<Finding>,
}

impl Checker<'_> {
    fn push(&mut self, warning: bool, path: String, node: &Node, message: String) {
        self.found.push(Finding {
            warning,
            path,
            pos: node.pos,
            message,
        });
    }
}

/// Checks `config` (a parsed Ignition 3.x config) against `image`; `platform` is the
/// Ignition platform id the image is built for, when known.
pub fn check(config: &Node, image: &CommitTree, platform: Option<&str>) -> Vec<Finding> {
    let mut c = Checker {
        image,
        found: Vec::new(),
    };
    let storage = config.get("storage");
    let section = |name: &str| storage.and_then(|s| s.get(name)).map(Node::as_array);
    let mut written: BTreeSet<String> = BTreeSet::new();
    for kind in ["files", "links", "directories"] {
        for (i, n) in section(kind).unwrap_or(&[]).iter().enumerate() {
            let Some(p) = n.get("path").and_then(Node::as_str) else {
                continue;
            };
            let at = format!("$.storage.{kind}.{i}");
            written.insert(normalize(p));
            check_path(&mut c, kind, p, n, at);
        }
    }
    check_groups(&mut c, config);
    check_units(&mut c, config, &written);
    if let Some(pf) = platform {
        for (i, n) in section("filesystems").unwrap_or(&[]).iter().enumerate() {
            if let Some(d) = n.get("device") {
                if let Some(m) = d.as_str().and_then(|dev| device_warning(dev, pf)) {
                    c.push(true, format!("$.storage.filesystems.{i}.device"), d, m);
                }
            }
        }
    }
    c.found
}

fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn check_path(c: &mut Checker, kind: &str, p: &str, n: &Node, at: String) {
    let norm = normalize(p);
    // /usr/local is a link to /var/usrlocal: writable.
    let local = norm == "/usr/local" || norm.starts_with("/usr/local/");
    if (norm == "/usr" || norm.starts_with("/usr/")) && !local {
        c.push(
            false,
            format!("{at}.path"),
            n.get("path").unwrap_or(n),
            format!(
                "{p} is under /usr, which is read-only on the deployed system (it is the \
                 image's, from commit {}): put it under /etc or /var",
                short(&c.image.commit)
            ),
        );
        return;
    }
    if kind == "directories" || n.get("overwrite").and_then(Node::as_bool) == Some(true) {
        return;
    }
    if let Some((img, what)) = c.image.resolve(&norm, false) {
        let what = match what {
            Kind::File => "a file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Other => "a special file",
        };
        c.push(
            false,
            format!("{at}.path"),
            n.get("path").unwrap_or(n),
            format!(
                "{p} already exists in the image ({what} at {img} in commit {}); Ignition \
                 stops the first boot unless it has overwrite = true",
                short(&c.image.commit)
            ),
        );
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Group names of the image: kiln's layout keeps /etc/group under /usr/etc; a
/// /usr/lib/group (nss-altfiles layouts) counts too.
fn image_groups(image: &CommitTree) -> (BTreeSet<String>, Vec<String>) {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    for f in ["/etc/group", "/usr/lib/group"] {
        if let Some(b) = image.read(f) {
            files.push(image.resolve(f, true).map(|r| r.0).unwrap_or(f.into()));
            for line in String::from_utf8_lossy(&b).lines() {
                if let Some((name, _)) = line.split_once(':') {
                    names.insert(name.to_string());
                }
            }
        }
    }
    (names, files)
}

fn check_groups(c: &mut Checker, config: &Node) {
    let passwd = config.get("passwd");
    let own: BTreeSet<&str> = passwd
        .and_then(|p| p.get("groups"))
        .map(Node::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|g| g.get("name").and_then(Node::as_str))
        .collect();
    let (image, files) = image_groups(c.image);
    let users = passwd.and_then(|p| p.get("users")).map(Node::as_array);
    for (i, u) in users.unwrap_or(&[]).iter().enumerate() {
        let user = u.get("name").and_then(Node::as_str).unwrap_or("?");
        let mut wanted: Vec<(String, &Node)> = Vec::new();
        if let Some(g) = u.get("primaryGroup") {
            wanted.push((format!("$.passwd.users.{i}.primaryGroup"), g));
        }
        for (j, g) in u
            .get("groups")
            .map(Node::as_array)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            wanted.push((format!("$.passwd.users.{i}.groups.{j}"), g));
        }
        for (at, g) in wanted {
            let Some(name) = g.as_str() else { continue };
            if !own.contains(name) && !image.contains(name) {
                c.push(
                    false,
                    at,
                    g,
                    format!(
                        "user {user}: group {name} is neither in the image ({}, commit {}) \
                         nor in the config's passwd.groups",
                        if files.is_empty() {
                            "it has no /etc/group".to_string()
                        } else {
                            files.join(", ")
                        },
                        short(&c.image.commit)
                    ),
                );
            }
        }
    }
}

const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The unit file that defines `name` (`a@b.service` is defined by `a@.service`).
fn unit_defined(image: &CommitTree, written: &BTreeSet<String>, name: &str) -> bool {
    let mut names = vec![name.to_string()];
    if let (Some((pre, _)), Some((_, ext))) = (name.split_once('@'), name.rsplit_once('.')) {
        names.push(format!("{pre}@.{ext}"));
    }
    names.iter().any(|n| {
        UNIT_DIRS.iter().any(|d| {
            let p = format!("{d}/{n}");
            written.contains(&p) || image.resolve(&p, true).is_some()
        })
    })
}

/// The programs of a unit text's `ExecStart*` lines (prefix characters dropped).
fn exec_programs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            if !k.trim().starts_with("ExecStart") {
                return None;
            }
            let v = v.trim().trim_start_matches(['-', '@', ':', '+', '!']);
            v.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

fn program_present(image: &CommitTree, written: &BTreeSet<String>, prog: &str) -> bool {
    let found = |p: &str| {
        written.contains(&normalize(p)) || matches!(image.resolve(p, true), Some((_, Kind::File)))
    };
    if prog.starts_with('/') {
        return found(prog);
    }
    // systemd's fixed search path for a bare name.
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| found(&format!("{d}/{prog}")))
}

fn check_units(c: &mut Checker, config: &Node, written: &BTreeSet<String>) {
    let units = config
        .get("systemd")
        .and_then(|s| s.get("units"))
        .map(Node::as_array)
        .unwrap_or(&[]);
    for (i, u) in units.iter().enumerate() {
        let Some(name) = u.get("name").and_then(Node::as_str) else {
            continue;
        };
        let at = format!("$.systemd.units.{i}");
        let contents = u.get("contents").and_then(Node::as_str);
        if u.get("enabled").and_then(Node::as_bool) == Some(true)
            && contents.is_none()
            && !unit_defined(c.image, written, name)
        {
            c.push(
                false,
                format!("{at}.enabled"),
                u.get("enabled").unwrap_or(u),
                format!(
                    "unit {name} is enabled, but neither the config (contents) nor the image \
                     (commit {}) defines it",
                    short(&c.image.commit)
                ),
            );
        }
        let mut texts: Vec<(String, &Node, &str)> = Vec::new();
        if let (Some(t), Some(n)) = (contents, u.get("contents")) {
            texts.push((format!("{at}.contents"), n, t));
        }
        let dropins = u.get("dropins").map(Node::as_array).unwrap_or(&[]);
        for (j, d) in dropins.iter().enumerate() {
            if let Some(n) = d.get("contents") {
                if let Some(t) = n.as_str() {
                    texts.push((format!("{at}.dropins.{j}.contents"), n, t));
                }
            }
        }
        for (p, n, text) in texts {
            for prog in exec_programs(text) {
                if !program_present(c.image, written, &prog) {
                    c.push(
                        false,
                        p.clone(),
                        n,
                        format!(
                            "unit {name}: ExecStart runs {prog}, which is not in the image \
                             (commit {}) nor written by the config",
                            short(&c.image.commit)
                        ),
                    );
                }
            }
        }
    }
}

/// How a platform's disks are named; `None` when any name may do (bare metal).
fn platform_disks(platform: &str) -> Option<&'static [&'static str]> {
    Some(match platform {
        "qemu" | "openstack" => &["/dev/vd"],
        "aws" => &["/dev/nvme", "/dev/xvd"],
        "gcp" => &["/dev/sd", "/dev/nvme"],
        "azure" | "vmware" => &["/dev/sd"],
        _ => return None,
    })
}

fn device_warning(dev: &str, platform: &str) -> Option<String> {
    let kinds = platform_disks(platform)?;
    let raw = ["/dev/vd", "/dev/sd", "/dev/nvme", "/dev/xvd", "/dev/hd"];
    if !raw.iter().any(|r| dev.starts_with(r)) || kinds.iter().any(|k| dev.starts_with(k)) {
        return None;
    }
    Some(format!(
        "{dev}: disks on platform {platform} are {}; name the device by \
         /dev/disk/by-id, by-label or by-partlabel",
        kinds
            .iter()
            .map(|k| format!("{k}*"))
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_programs_drop_prefixes() {
        let t = "[Service]\nExecStartPre=-/usr/bin/true\nExecStart=@/bin/sh sh -c x\nExecStop=/x\n";
        assert_eq!(exec_programs(t), vec!["/usr/bin/true", "/bin/sh"]);
    }

    #[test]
    fn devices_are_checked_against_the_platform() {
        assert!(device_warning("/dev/sdb", "qemu").is_some());
        assert!(device_warning("/dev/vdb", "qemu").is_none());
        assert!(device_warning("/dev/disk/by-label/x", "qemu").is_none());
        assert!(device_warning("/dev/sdb", "metal").is_none());
        assert!(device_warning("/dev/vdb", "aws").is_some());
    }
}
