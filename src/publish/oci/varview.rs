//! `/var` as a container of the image sees it. A kiln commit's `/var` is empty
//! (deployments share one per stateroot, and `usr/lib/tmpfiles.d/kiln-var.conf` re-creates
//! it at boot), but a container never boots: `podman build` would find no `/var/lib/dpkg`
//! (the link to the database in `/usr/lib/sysimage/dpkg`) and none of apt's directories.
//! The commit layer therefore carries the directories (`d`) and links (`L`) that file
//! declares under `var/`, as a booted system has them; its copied files (`C`) are left
//! out. Importers read only the objects, so the commit itself is unchanged.

use super::chunk::Content;
use anyhow::{Context, Result};
use ostree::gio;
use ostree::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// One entry of the container's `/var` (tar paths, no leading `/`).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Dir { mode: u32, uid: u32, gid: u32 },
    Link(String),
}

/// The text of the file at `path` in the commit, if there is one.
fn read(repo: &ostree::Repo, content: &Content, path: &str) -> Result<Option<String>> {
    let Some(c) = content
        .order
        .iter()
        .find(|c| content.objects[*c].1.iter().any(|p| p == path))
    else {
        return Ok(None);
    };
    let (input, _, _) = repo
        .load_file(c, gio::Cancellable::NONE)
        .with_context(|| format!("reading {path} from the commit"))?;
    let mut s = String::new();
    if let Some(i) = input {
        std::io::Read::read_to_string(&mut i.into_read(), &mut s)
            .with_context(|| format!("reading {path} from the commit"))?;
    }
    Ok(Some(s))
}

/// name → id of a passwd or group file.
fn ids(text: Option<String>) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for l in text.unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if let (Some(n), Some(id)) = (f.first(), f.get(2).and_then(|i| i.parse().ok())) {
            m.entry(n.to_string()).or_insert(id);
        }
    }
    m
}

/// The `/var` entries of the commit's kiln-var.conf, parents first (missing parents as
/// 0755 root directories, as systemd-tmpfiles makes them).
pub fn entries(repo: &ostree::Repo, content: &Content) -> Result<Vec<(String, Entry)>> {
    let Some(conf) = read(repo, content, crate::compose::layout::VAR_TMPFILES)? else {
        return Ok(Vec::new());
    };
    let users = ids(read(repo, content, "usr/etc/passwd")?);
    let groups = ids(read(repo, content, "usr/etc/group")?);
    Ok(parse(&conf, &users, &groups))
}

fn parse(
    conf: &str,
    users: &HashMap<String, u32>,
    groups: &HashMap<String, u32>,
) -> Vec<(String, Entry)> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let id = |m: &HashMap<String, u32>, n: &str| n.parse().ok().or_else(|| m.get(n).copied());
    for l in conf.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(path) = f
            .get(1)
            .and_then(|p| p.strip_prefix("/var/"))
            .filter(|p| !p.split('/').any(|c| c.is_empty() || c == "." || c == ".."))
        else {
            continue;
        };
        let e = match f[0] {
            "d" | "D" => Entry::Dir {
                mode: f
                    .get(2)
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0o755),
                uid: f.get(3).and_then(|u| id(users, u)).unwrap_or(0),
                gid: f.get(4).and_then(|g| id(groups, g)).unwrap_or(0),
            },
            "L" | "L+" => match f.get(6) {
                Some(t) => Entry::Link(t.to_string()),
                None => continue,
            },
            _ => continue,
        };
        let path = format!("var/{path}");
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if p == "var" {
                break;
            }
            out.entry(p.to_string()).or_insert(Entry::Dir {
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent = p;
        }
        out.insert(path, e);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfiles_lines_become_var_entries() {
        let conf = "# x\nd /run/media 0755 root root -\n\
                    d /var/cache/apt/archives/partial 0700 _apt root -\n\
                    L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg\n\
                    C /var/lib/pam/seen - - - - /usr/share/factory/var/lib/pam/seen\n\
                    d /var/../etc 0755 root root -\n";
        let users = HashMap::from([("_apt".to_string(), 42), ("root".to_string(), 0)]);
        let groups = HashMap::from([("root".to_string(), 0)]);
        let e = parse(conf, &users, &groups);
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "var/cache",
                "var/cache/apt",
                "var/cache/apt/archives",
                "var/cache/apt/archives/partial",
                "var/lib",
                "var/lib/dpkg"
            ]
        );
        assert_eq!(
            e[3].1,
            Entry::Dir {
                mode: 0o700,
                uid: 42,
                gid: 0
            }
        );
        assert_eq!(e[5].1, Entry::Link("../../usr/lib/sysimage/dpkg".into()));
    }
}
