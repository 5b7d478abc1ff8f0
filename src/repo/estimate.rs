//! What pulling a commit object by object would download, before the pull: for
//! `kiln upgrade --check` when the server has no static delta from a commit here.
//!
//! A pull without a delta fetches the commit's directory objects (dirtree, dirmeta) and
//! file objects that the repo lacks, each from `objects/XX/…` of the archive repo. The
//! estimate walks the new commit's tree the same way: a dirtree the repo already has is
//! a subtree it already has (it came with a complete commit); a missing one is fetched
//! (it is small, and needed to see what is below it) and counted; missing file and
//! dirmeta objects are asked for their size (`HEAD`, Content-Length). Nothing is stored.
//! Transfers go through curl, which honours the remote's TLS settings as libostree does.

use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::ObjectType;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Requests curl keeps in flight at once.
const PARALLEL: &str = "8";

/// How the objects are reached: a `file://` repo (of any mode, opened as a repo) or an
/// HTTP(S) one (an archive repo's loose objects).
enum Server {
    Local(ostree::Repo),
    Http {
        base: String,
        curl_opts: Vec<String>,
    },
}

/// Bytes a pull of `commit` from `remote` into `repo` would fetch as loose objects, with
/// the commit object already in `repo` (a commit-only pull). `None` when the remote's
/// objects cannot be reached this way (a mirrorlist, a non-HTTP URL).
pub fn object_download_size(
    repo: &ostree::Repo,
    remote: &str,
    commit: &str,
) -> Result<Option<u64>> {
    let Some(server) = server(repo, remote)? else {
        return Ok(None);
    };
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let commit_v = repo
        .load_variant(ObjectType::Commit, commit)
        .with_context(|| format!("reading commit {commit}"))?;
    // (a{sv} aya(say) s s t ay ay): the root dirtree and dirmeta are the last two.
    let root_tree = hex::encode(commit_v.child_value(6).data_as_bytes());
    let root_meta = hex::encode(commit_v.child_value(7).data_as_bytes());
    let mut total = 0u64;
    let mut sized: Vec<(ObjectType, String)> = Vec::new();
    let mut seen = HashSet::new();
    let mut level = Vec::new();
    let mut want = |kind: ObjectType, c: String, sized: &mut Vec<_>, level: &mut Vec<_>| {
        if seen.insert((kind, c.clone())) && !has(repo, kind, &c)? {
            match kind {
                ObjectType::DirTree => level.push(c),
                _ => sized.push((kind, c)),
            }
        }
        anyhow::Ok(())
    };
    want(ObjectType::DirTree, root_tree, &mut sized, &mut level)?;
    want(ObjectType::DirMeta, root_meta, &mut sized, &mut level)?;
    while !level.is_empty() {
        let fetched = server.fetch(&level, ObjectType::DirTree, tmp.path())?;
        let mut next = Vec::new();
        for (c, data) in fetched {
            total += data.len() as u64;
            let (files, dirs) = parse_dirtree(&c, data)?;
            for f in files {
                want(ObjectType::File, f, &mut sized, &mut next)?;
            }
            for (t, m) in dirs {
                want(ObjectType::DirTree, t, &mut sized, &mut next)?;
                want(ObjectType::DirMeta, m, &mut sized, &mut next)?;
            }
        }
        level = next;
    }
    total += server.sizes(&sized, tmp.path())?;
    Ok(Some(total))
}

fn has(repo: &ostree::Repo, kind: ObjectType, c: &str) -> Result<bool> {
    repo.has_object(kind, c, gio::Cancellable::NONE)
        .with_context(|| format!("looking up object {c} in the repo"))
}

/// The file checksums and (dirtree, dirmeta) pairs of a serialized dirtree
/// `(a(say) a(sayay))`.
type Entries = (Vec<String>, Vec<(String, String)>);

fn parse_dirtree(checksum: &str, data: Vec<u8>) -> Result<Entries> {
    let ty = glib::VariantTy::new("(a(say)a(sayay))").expect("a valid variant type");
    let v = glib::Variant::from_bytes_with_type(&glib::Bytes::from_owned(data), ty);
    let Some((files, dirs)) = v.get::<(Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>, Vec<u8>)>)>()
    else {
        bail!("dirtree object {checksum} from the server is not a dirtree");
    };
    Ok((
        files.into_iter().map(|(_, c)| hex::encode(c)).collect(),
        dirs.into_iter()
            .map(|(_, t, m)| (hex::encode(t), hex::encode(m)))
            .collect(),
    ))
}

/// The loose object path of an archive repo.
fn object_path(kind: ObjectType, c: &str) -> String {
    let ext = match kind {
        ObjectType::DirTree => "dirtree",
        ObjectType::DirMeta => "dirmeta",
        ObjectType::File => "filez",
        _ => "commit",
    };
    format!(
        "objects/{}/{}.{ext}",
        &c[..2.min(c.len())],
        c.get(2..).unwrap_or("")
    )
}

/// Where `remote`'s objects are, from the repo's remote configuration.
fn server(repo: &ostree::Repo, remote: &str) -> Result<Option<Server>> {
    let opt = |k: &str| -> Result<Option<String>> {
        Ok(repo
            .remote_option(remote, k, None)
            .with_context(|| format!("reading option {k} of remote {remote:?}"))?
            .map(|s| s.to_string()))
    };
    let url = match opt("contenturl")? {
        Some(u) => u,
        None => repo
            .remote_get_url(remote)
            .with_context(|| format!("reading the URL of remote {remote:?}"))?
            .to_string(),
    };
    let base = url.trim_end_matches('/').to_string();
    if let Some(dir) = base.strip_prefix("file://") {
        let local = ostree::Repo::new_for_path(dir);
        local
            .open(gio::Cancellable::NONE)
            .with_context(|| format!("opening {dir}, the repo of remote {remote:?}"))?;
        return Ok(Some(Server::Local(local)));
    }
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Ok(None);
    }
    let mut curl_opts = Vec::new();
    for (key, flag) in [
        ("tls-ca-path", "--cacert"),
        ("tls-client-cert-path", "--cert"),
        ("tls-client-key-path", "--key"),
        ("proxy", "--proxy"),
    ] {
        if let Some(v) = opt(key)? {
            curl_opts.push(flag.to_string());
            curl_opts.push(v);
        }
    }
    if repo
        .remote_boolean_option(remote, "tls-permissive", false)
        .with_context(|| format!("reading option tls-permissive of remote {remote:?}"))?
    {
        curl_opts.push("--insecure".into());
    }
    Ok(Some(Server::Http { base, curl_opts }))
}

/// A curl config line's quoted value (curl's config syntax: backslash escapes).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Server {
    fn curl(&self, config: &Path) -> Result<Cmd> {
        let Server::Http { curl_opts, .. } = self else {
            unreachable!("curl is for HTTP servers")
        };
        crate::cmd::require_tools(&[("curl", "curl")])?;
        Ok(Cmd::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--parallel",
                "--parallel-max",
                PARALLEL,
            ])
            .args(curl_opts)
            .arg("--config")
            .arg(config))
    }

    /// The `kind` objects `checksums`, read whole.
    fn fetch(
        &self,
        checksums: &[String],
        kind: ObjectType,
        tmp: &Path,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let base = match self {
            Server::Local(r) => {
                return checksums
                    .iter()
                    .map(|c| {
                        let v = r.load_variant(kind, c).with_context(|| {
                            format!("reading {kind:?} object {c} of the remote")
                        })?;
                        Ok((c.clone(), v.data_as_bytes().to_vec()))
                    })
                    .collect();
            }
            Server::Http { base, .. } => base,
        };
        let mut cfg = String::from("fail\n");
        for c in checksums {
            cfg += &format!(
                "url = {}\noutput = {}\n",
                quoted(&format!("{base}/{}", object_path(kind, c))),
                quoted(&tmp.join(c).to_string_lossy())
            );
        }
        let config = tmp.join("fetch.curl");
        std::fs::write(&config, cfg).context("writing curl's request list")?;
        self.curl(&config)?
            .run()
            .with_context(|| format!("fetching {} {kind:?} objects", checksums.len()))?;
        checksums
            .iter()
            .map(|c| {
                let p = tmp.join(c);
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                let _ = std::fs::remove_file(&p);
                Ok((c.clone(), data))
            })
            .collect()
    }

    /// The summed size of `objects` on the server.
    fn sizes(&self, objects: &[(ObjectType, String)], tmp: &Path) -> Result<u64> {
        match self {
            Server::Local(r) => objects.iter().try_fold(0u64, |n, (k, c)| {
                let size = r
                    .query_object_storage_size(*k, c, gio::Cancellable::NONE)
                    .with_context(|| {
                        format!("reading the size of {k:?} object {c} of the remote")
                    })?;
                Ok(n + size)
            }),
            Server::Http { base, .. } => {
                if objects.is_empty() {
                    return Ok(0);
                }
                let mut cfg = String::from("head\nfail\n");
                cfg += "write-out = \"%{url_effective} %header{content-length}\\n\"\n";
                let mut urls = BTreeMap::new();
                for (k, c) in objects {
                    let u = format!("{base}/{}", object_path(*k, c));
                    cfg += &format!("url = {}\noutput = \"/dev/null\"\n", quoted(&u));
                    urls.insert(u, None::<u64>);
                }
                let config = tmp.join("head.curl");
                std::fs::write(&config, cfg).context("writing curl's request list")?;
                let out = self
                    .curl(&config)?
                    .run()
                    .with_context(|| {
                        format!("asking the server for {} object sizes", objects.len())
                    })?
                    .stdout_str();
                for line in out.lines() {
                    if let Some((u, n)) = line.rsplit_once(' ') {
                        if let (Some(slot), Ok(n)) = (urls.get_mut(u), n.trim().parse()) {
                            *slot = Some(n);
                        }
                    }
                }
                urls.into_iter().try_fold(0u64, |n, (u, s)| match s {
                    Some(s) => Ok(n + s),
                    None => bail!("the server gave no size for {u}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_follow_the_archive_layout() {
        assert_eq!(
            object_path(ObjectType::File, "ab12cd"),
            "objects/ab/12cd.filez"
        );
        assert_eq!(
            object_path(ObjectType::DirTree, "ff00"),
            "objects/ff/00.dirtree"
        );
        assert_eq!(
            object_path(ObjectType::DirMeta, "0a0b"),
            "objects/0a/0b.dirmeta"
        );
    }

    #[test]
    fn curl_config_values_are_quoted() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn a_dirtree_lists_files_and_subdirectories() {
        let v = glib::Variant::from((
            vec![("f".to_string(), vec![0xabu8, 0x01])],
            vec![("d".to_string(), vec![0x02u8], vec![0x03u8])],
        ));
        let (files, dirs) = parse_dirtree("x", v.data().to_vec()).unwrap();
        assert_eq!(files, ["ab01"]);
        assert_eq!(dirs, [("02".to_string(), "03".to_string())]);
    }
}
