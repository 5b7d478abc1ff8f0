//! The `storage` section. Files, directories and links (the nodes) are checked here;
//! disks, filesystems, LUKS volumes and RAID arrays each in a file of their own.

mod disks;
mod filesystems;
mod luks;
mod raid;

use super::{arr, boolean, int, non_empty, st, Validator, P};
use crate::ignition::json::Node;

/// Go's path.Clean for the cases Ignition cares about.
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn path_error(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("path not specified")
    } else if !p.starts_with('/') {
        Some("path not absolute")
    } else if clean_path(p) != p {
        Some("path is not fully simplified")
    } else {
        None
    }
}

impl Validator<'_> {
    pub(super) fn storage(&mut self, root: &Node, s: &Node, p: &P) {
        self.nodes(root, s, p);

        let disks = arr(s, "disks");
        for (i, d) in disks.iter().enumerate() {
            self.disk(root, d, &p.k("disks").i(i));
        }
        self.dups(root, &[(p.k("disks"), disks)], |n| {
            st(n, "device").unwrap_or("").to_string()
        });

        let fss = arr(s, "filesystems");
        for (i, f) in fss.iter().enumerate() {
            self.filesystem(root, f, &p.k("filesystems").i(i));
        }
        self.dups(root, &[(p.k("filesystems"), fss)], |n| {
            st(n, "device").unwrap_or("").to_string()
        });

        // Keys a config's version does not have were reported as unused; they get no
        // semantic checks, as in Ignition.
        let luks = if self.minor >= 2 { arr(s, "luks") } else { &[] };
        for (i, l) in luks.iter().enumerate() {
            self.luks(root, l, &p.k("luks").i(i));
        }
        self.dups(root, &[(p.k("luks"), luks)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });

        self.raids(root, s, p);
    }

    /// Files, directories and links: paths, modes, owners, and the rules between them
    /// (nothing written through a link, no two nodes at one path).
    fn nodes(&mut self, root: &Node, s: &Node, p: &P) {
        let files = arr(s, "files");
        let dirs = arr(s, "directories");
        let links = arr(s, "links");
        for (i, f) in files.iter().enumerate() {
            let pf = p.k("files").i(i);
            self.node(root, f, &pf);
            self.mode(root, f, &pf);
            let contents = f.get("contents");
            if boolean(f, "overwrite") == Some(true)
                && contents.and_then(|c| st(c, "source")).is_none()
            {
                self.err(
                    root,
                    &pf.k("overwrite"),
                    "overwrite must be false if source is unspecified",
                );
            }
            if let Some(c) = contents {
                self.resource(root, c, &pf.k("contents"), true);
            }
            for (j, a) in arr(f, "append").iter().enumerate() {
                self.resource(root, a, &pf.k("append").i(j), true);
            }
        }
        for (i, d) in dirs.iter().enumerate() {
            let pd = p.k("directories").i(i);
            self.node(root, d, &pd);
            self.mode(root, d, &pd);
        }
        for (i, l) in links.iter().enumerate() {
            self.node(root, l, &p.k("links").i(i));
        }
        // Nothing may be written through a link the config creates.
        let link_paths: Vec<&str> = links.iter().filter_map(|l| st(l, "path")).collect();
        let under_link = |path: Option<&str>| {
            path.is_some_and(|x| link_paths.iter().any(|l| x.starts_with(&format!("{l}/"))))
        };
        for (list, key, what) in [(dirs, "directories", "directory"), (files, "files", "file")] {
            for (i, n) in list.iter().enumerate() {
                if under_link(st(n, "path")) {
                    self.err(
                        root,
                        &p.k(key).i(i),
                        format!("{what} path includes link in config"),
                    );
                }
            }
        }
        let dir_paths: Vec<&str> = dirs.iter().filter_map(|d| st(d, "path")).collect();
        for (i, l) in links.iter().enumerate() {
            let pl = p.k("links").i(i);
            if under_link(st(l, "path")) {
                self.err(root, &pl, "link path includes link in config");
            }
            let target = st(l, "target").unwrap_or("");
            if target.is_empty() && self.minor >= 3 {
                self.err(root, &pl.k("target"), "link target is required");
                continue;
            }
            if boolean(l, "hard") == Some(true) {
                let mut t = clean_path(target);
                if !t.starts_with('/') {
                    t = clean_path(&format!("{}/{}", st(l, "path").unwrap_or(""), target));
                }
                if dir_paths.contains(&t.as_str()) {
                    self.err(root, &pl, "hard link target is a directory");
                }
            }
        }
        self.dups(
            root,
            &[
                (p.k("directories"), dirs),
                (p.k("files"), files),
                (p.k("links"), links),
            ],
            |n| st(n, "path").unwrap_or("").to_string(),
        );
    }

    fn mode(&mut self, root: &Node, n: &Node, p: &P) {
        if let Some(m) = int(n, "mode") {
            if !(0..=0o7777).contains(&m) {
                self.err(
                    root,
                    &p.k("mode"),
                    format!("illegal file mode {m} (modes are decimal in JSON: 0644 is 420)"),
                );
            } else if m & 0o7000 != 0 {
                self.warn(
                    root,
                    &p.k("mode"),
                    "setuid/setgid/sticky bits are not supported in spec versions older than 3.4.0",
                );
            }
        }
    }

    fn node(&mut self, root: &Node, n: &Node, p: &P) {
        match st(n, "path") {
            Some(path) => {
                if let Some(e) = path_error(path) {
                    self.err(root, &p.k("path"), e);
                }
            }
            None => self.err(root, &p.k("path"), "path not specified"),
        }
        for k in ["user", "group"] {
            if let Some(o) = n.get(k) {
                if int(o, "id").is_some() && non_empty(st(o, "name")) {
                    self.err(root, &p.k(k), "cannot set both id and name");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_like_go() {
        assert_eq!(clean_path("/a/b/../c/"), "/a/c");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("/.."), "/");
        assert_eq!(path_error("/etc//x"), Some("path is not fully simplified"));
    }
}
