//! `kiln diff`: packages added, removed and changed between two commits (their
//! `kiln.packages` metadata).

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Packages added, removed and changed between two commits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageDiff {
    pub from: CommitRef,
    pub to: CommitRef,
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<PackageChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitRef {
    pub rev: String,
    pub checksum: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PackageChange {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// Parses a `kiln.packages` list (`name=version` strings) into a sorted map.
pub fn parse_packages(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for item in list {
        let (n, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("malformed package entry {item:?} (expected name=version)"))?;
        m.insert(n.to_string(), v.to_string());
    }
    Ok(m)
}

/// Compares two package maps.
pub fn diff_packages(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> (Vec<Package>, Vec<Package>, Vec<PackageChange>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for (n, v) in b {
        match a.get(n) {
            None => added.push(Package {
                name: n.clone(),
                version: v.clone(),
            }),
            Some(old) if old != v => changed.push(PackageChange {
                name: n.clone(),
                from: old.clone(),
                to: v.clone(),
            }),
            _ => {}
        }
    }
    for (n, v) in a {
        if !b.contains_key(n) {
            removed.push(Package {
                name: n.clone(),
                version: v.clone(),
            });
        }
    }
    (added, removed, changed)
}

/// Packages added, removed and changed, without the commits (an update preview).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PackageChanges {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<PackageChange>,
}

/// The package changes from commit `a` to commit `b`; `None` when either has no
/// `kiln.packages` list (not made by kiln compose) or an unreadable one.
pub fn changes(a: &super::CommitInfo, b: &super::CommitInfo) -> Option<PackageChanges> {
    let list = |c: &super::CommitInfo| {
        if !c.metadata.contains_key(super::keys::PACKAGES) {
            return None;
        }
        parse_packages(&c.meta_list(super::keys::PACKAGES)).ok()
    };
    let (added, removed, changed) = diff_packages(&list(a)?, &list(b)?);
    Some(PackageChanges {
        added,
        removed,
        changed,
    })
}

/// The package difference between revs `from` and `to` of `repo`.
pub fn diff(repo: &ostree::Repo, repo_name: &str, from: &str, to: &str) -> Result<PackageDiff> {
    let load = |rev: &str| -> Result<(CommitRef, BTreeMap<String, String>)> {
        let c = super::resolve(repo, rev)?
            .ok_or_else(|| anyhow!("no ref or commit {rev:?} in {repo_name}"))?;
        let info = super::read_commit(repo, &c)?;
        if !info.metadata.contains_key(super::keys::PACKAGES) {
            bail!(
                "commit {c} ({rev}) has no {} metadata: it was not made by kiln compose",
                super::keys::PACKAGES
            );
        }
        let pk = parse_packages(&info.meta_list(super::keys::PACKAGES))
            .with_context(|| format!("reading the package list of {rev}"))?;
        Ok((
            CommitRef {
                rev: rev.to_string(),
                checksum: c,
                version: info.version,
            },
            pk,
        ))
    };
    let (fa, pa) = load(from)?;
    let (fb, pb) = load(to)?;
    let (added, removed, changed) = diff_packages(&pa, &pb);
    Ok(PackageDiff {
        from: fa,
        to: fb,
        added,
        removed,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(items: &[&str]) -> BTreeMap<String, String> {
        parse_packages(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn package_diff() {
        let (a, r, c) = diff_packages(&m(&["a=1", "b=2", "c=3"]), &m(&["b=2", "c=4", "d=1"]));
        assert_eq!(
            a,
            vec![Package {
                name: "d".into(),
                version: "1".into()
            }]
        );
        assert_eq!(
            r,
            vec![Package {
                name: "a".into(),
                version: "1".into()
            }]
        );
        assert_eq!(
            c,
            vec![PackageChange {
                name: "c".into(),
                from: "3".into(),
                to: "4".into()
            }]
        );
        assert!(parse_packages(&["nover".to_string()]).is_err());
    }
}
