//! `kiln publish --oci DEST`: a commit encapsulated as an ostree-container image
//! (`crate::repo::oci` describes the format) and written to an OCI layout (`oci:DIR:TAG`),
//! an archive (`oci-archive:FILE:TAG`) or pushed to a registry (`docker://HOST/REPO:TAG`
//! or `HOST/REPO:TAG`) through skopeo, which uses the registry's usual auth
//! (containers-auth.json) and signs when a key is given. A registry push uploads only the
//! layers the registry lacks.

pub mod chunk;
pub mod export;
pub mod varview;

use crate::repo::oci::layout::{
    ContainerConfig, Descriptor, ImageConfig, Manifest, OciDir, RootFs,
};
use crate::repo::oci::{labels, transport};
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Layers per image at most (ostree-ext's default).
pub const MAX_LAYERS: usize = 64;

/// Where `--oci` writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Dest {
    Dir(PathBuf, String),
    Archive(PathBuf, String),
    /// `HOST/REPO:TAG` (without `docker://`).
    Registry(String),
}

impl Dest {
    pub fn parse(s: &str) -> Result<Dest, String> {
        let t =
            if s.starts_with("oci:") || s.starts_with("oci-archive:") || s.starts_with("docker://")
            {
                s.to_string()
            } else {
                format!("docker://{s}")
            };
        crate::validate::image_transport(&t)?;
        let split = |r: &str| match r.rsplit_once(':') {
            Some((p, tag)) if !tag.contains('/') && !tag.is_empty() => {
                (PathBuf::from(p), tag.to_string())
            }
            _ => (PathBuf::from(r), "latest".to_string()),
        };
        Ok(if let Some(r) = t.strip_prefix("oci:") {
            let (p, tag) = split(r);
            Dest::Dir(p, tag)
        } else if let Some(r) = t.strip_prefix("oci-archive:") {
            let (p, tag) = split(r);
            Dest::Archive(p, tag)
        } else {
            Dest::Registry(t.trim_start_matches("docker://").to_string())
        })
    }
}

/// Options of [`publish_oci`].
#[derive(Debug, Clone, Default)]
pub struct OciOptions {
    pub repo: PathBuf,
    /// Ref or checksum; `None`: the repo's only ref.
    pub rev: Option<String>,
    pub max_layers: usize,
    pub push: transport::PushOptions,
    pub quiet: bool,
}

/// What a publish to OCI did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciReport {
    pub destination: String,
    pub commit: String,
    pub version: Option<String>,
    pub manifest_digest: String,
    pub layers: Vec<LayerReport>,
    /// Sum of the compressed layer sizes.
    pub image_bytes: u64,
    pub signed: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    pub digest: String,
    pub bytes: u64,
    pub name: String,
    pub packages: usize,
}

/// Publishes one commit of `opts.repo` to `dest`.
pub fn publish_oci(dest: &Dest, opts: &OciOptions) -> Result<OciReport> {
    let src = crate::deploy::open_source_repo(&opts.repo)?;
    let rev = match &opts.rev {
        Some(r) => r.clone(),
        None => only_ref(&src, &opts.repo)?,
    };
    let commit = crate::repo::resolve(&src, &rev)?.ok_or_else(|| {
        anyhow!(
            "no ref or commit {rev:?} in the repo {}",
            opts.repo.display()
        )
    })?;
    if let Dest::Registry(_) = dest {
        crate::cmd::require_tools(&[("skopeo", "skopeo")])?;
    }
    let mut progress = crate::progress::Progress::new(opts.quiet);
    let (dir, tag, _tmp) = match dest {
        Dest::Dir(p, t) => (OciDir::create(p)?, t.clone(), None),
        _ => {
            let parent = match dest {
                Dest::Archive(p, _) => p
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
                _ => std::env::temp_dir(),
            };
            let tmp = crate::cleanup::TempDir::new_in(&parent, "kiln-oci")?;
            (OciDir::create(tmp.path())?, "latest".to_string(), Some(tmp))
        }
    };
    let stage = progress.stage("encapsulating the commit as OCI layers");
    let (desc, manifest, info) = encapsulate(&src, &commit, &dir, &tag, opts.max_layers)?;
    stage.done();
    let mut signed = false;
    match dest {
        Dest::Dir(..) => {}
        Dest::Archive(p, t) => {
            let stage = progress.stage("writing the OCI archive");
            write_archive(&dir.path, &tag, p, t)?;
            stage.done();
        }
        Dest::Registry(r) => {
            let stage = progress.stage(&format!("pushing to {r}"));
            signed = transport::push(&dir.path, &tag, r, &opts.push)?;
            stage.done();
        }
    }
    let names: Vec<String> = manifest
        .layers
        .iter()
        .map(|l| {
            l.annotations
                .get(labels::COMPONENTS)
                .cloned()
                .unwrap_or_else(|| "(commit)".into())
        })
        .collect();
    Ok(OciReport {
        destination: match dest {
            Dest::Dir(p, t) => format!("oci:{}:{t}", p.display()),
            Dest::Archive(p, t) => format!("oci-archive:{}:{t}", p.display()),
            Dest::Registry(r) => format!("docker://{r}"),
        },
        commit,
        version: info.version,
        manifest_digest: desc.digest,
        image_bytes: manifest.layers.iter().map(|l| l.size).sum(),
        layers: manifest
            .layers
            .iter()
            .zip(names)
            .map(|(l, n)| LayerReport {
                digest: l.digest.clone(),
                bytes: l.size,
                packages: if n.starts_with('(') {
                    0
                } else {
                    n.split(',').count()
                },
                name: n,
            })
            .collect(),
        signed,
    })
}

fn only_ref(repo: &ostree::Repo, path: &Path) -> Result<String> {
    let refs = repo
        .list_refs(None, gio::Cancellable::NONE)
        .with_context(|| format!("listing the refs of {}", path.display()))?;
    let mut names: Vec<String> = refs.keys().map(|k| k.to_string()).collect();
    names.sort();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => bail!("the repo {} has no refs", path.display()),
        _ => Err(crate::error::InputError::new(
            "command line",
            format!(
                "the repo has {} refs ({}): name one with --ref",
                names.len(),
                names.join(", ")
            ),
        )
        .key("--ref")
        .into()),
    }
}

/// Package ownership read from the commit's dpkg database: tree path → package, and
/// package → source package.
fn ownership(
    repo: &ostree::Repo,
    w: &export::Walk,
) -> Result<(HashMap<String, String>, HashMap<String, String>)> {
    let read = |c: &str| -> Result<String> {
        let (input, _, _) = repo.load_file(c, gio::Cancellable::NONE)?;
        let mut s = String::new();
        if let Some(i) = input {
            std::io::Read::read_to_string(&mut i.into_read(), &mut s)
                .context("reading a dpkg file")?;
        }
        Ok(s)
    };
    let mut owners = HashMap::new();
    let mut src = HashMap::new();
    let info = format!("{}/info/", chunk::DPKG_DB);
    let status = format!("{}/status", chunk::DPKG_DB);
    for c in &w.content.order {
        for p in &w.content.objects[c].1 {
            if let Some(name) = p.strip_prefix(&info).and_then(|n| n.strip_suffix(".list")) {
                let pkg = name.split(':').next().unwrap_or(name).to_string();
                for l in read(c)?.lines().filter(|l| !l.is_empty()) {
                    owners
                        .entry(chunk::tree_path(l))
                        .or_insert_with(|| pkg.clone());
                }
            } else if *p == status {
                src = chunk::sources(&read(c)?);
            }
        }
    }
    Ok((owners, src))
}

/// Writes the image of `commit` into `dir` under `tag`.
pub fn encapsulate(
    repo: &ostree::Repo,
    commit: &str,
    dir: &OciDir,
    tag: &str,
    max_layers: usize,
) -> Result<(Descriptor, Manifest, crate::repo::CommitInfo)> {
    let info = crate::repo::read_commit(repo, commit)?;
    let w = export::walk(repo, commit)?;
    let (owners, src) = ownership(repo, &w)?;
    let chunks = chunk::split(&w.content, &owners, &src, max_layers.clamp(4, 128) - 1);
    let mut layers = vec![export::commit_layer(dir, repo, commit, &w)?];
    for c in &chunks {
        let mut l = export::chunk_layer(dir, repo, &w, c)?;
        let comps = if c.components.is_empty() {
            c.name.clone()
        } else {
            c.components.join(",")
        };
        l.descriptor
            .annotations
            .insert(labels::COMPONENTS.into(), comps);
        layers.push(l);
    }
    let mut lab = BTreeMap::new();
    lab.insert(labels::COMMIT.to_string(), commit.to_string());
    lab.insert(labels::BOOTABLE.to_string(), "true".to_string());
    lab.insert(labels::BOOTC.to_string(), "1".to_string());
    if let Some(v) = &info.version {
        lab.insert(labels::VERSION.to_string(), v.clone());
        lab.insert("version".to_string(), v.clone());
    }
    let pkgs = info.meta_list(crate::repo::keys::PACKAGES);
    if !pkgs.is_empty() {
        lab.insert(labels::PACKAGES.to_string(), pkgs.join(" "));
    }
    if let Some(k) = w
        .content
        .objects
        .values()
        .flat_map(|(_, ps)| ps)
        .find_map(|p| {
            p.strip_prefix("usr/lib/modules/")
                .and_then(|r| r.strip_suffix("/vmlinuz"))
        })
    {
        lab.insert(labels::LINUX.to_string(), k.to_string());
    }
    if let Some(l) = layers.last() {
        lab.insert(labels::FINAL_DIFFID.to_string(), l.diff_id.clone());
    }
    let created = crate::deploy::status::format_utc(info.timestamp)
        .replacen(' ', "T", 1)
        .replace(" UTC", "Z");
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: "amd64".into(),
        os: "linux".into(),
        config: ContainerConfig {
            labels: lab.clone(),
            cmd: vec!["/bin/sh".into()],
        },
        rootfs: RootFs {
            type_: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
        history: layers
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let by = if i == 0 {
                    "kiln: ostree commit".to_string()
                } else {
                    format!("kiln: {}", chunks[i - 1].name)
                };
                serde_json::json!({"created": created, "created_by": by})
            })
            .collect(),
    };
    let cfg = serde_json::to_vec(&config).context("serializing the image config")?;
    let cfg_desc = dir.write_blob(crate::repo::oci::layout::MEDIA_CONFIG, &cfg)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(crate::repo::oci::layout::MEDIA_MANIFEST.into()),
        config: cfg_desc,
        layers: layers.into_iter().map(|l| l.descriptor).collect(),
        annotations: lab,
    };
    let desc = dir.set_manifest(tag, &manifest)?;
    Ok((desc, manifest, info))
}

/// An `oci-archive:` file: the layout as a tar, written to a temp name and renamed.
fn write_archive(layout: &Path, tag: &str, file: &Path, file_tag: &str) -> Result<()> {
    let dir = OciDir::open(layout)?;
    let (_, m) = dir.manifest(tag)?;
    let out = OciDir::create(&layout.with_extension("archive"))?;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        let src = dir.blob_path(&d.digest)?;
        let dst = out.blob_path(&d.digest)?;
        std::fs::hard_link(&src, &dst)
            .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    out.set_manifest(file_tag, &m)?;
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("creating a temp file in {}", parent.display()))?;
    let mut b = tar::Builder::new(tmp.reopen().context("reopening the archive temp file")?);
    b.append_dir_all(".", &out.path)
        .with_context(|| format!("writing {}", file.display()))?;
    b.into_inner()
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::remove_dir_all(&out.path)
        .with_context(|| format!("removing {}", out.path.display()))?;
    tmp.persist(file)
        .with_context(|| format!("renaming into {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            Dest::parse("127.0.0.1:5000/os/base:v1").unwrap(),
            Dest::Registry("127.0.0.1:5000/os/base:v1".into())
        );
        assert_eq!(
            Dest::parse("oci:/tmp/x:v2").unwrap(),
            Dest::Dir("/tmp/x".into(), "v2".into())
        );
        assert_eq!(
            Dest::parse("oci:/tmp/x").unwrap(),
            Dest::Dir("/tmp/x".into(), "latest".into())
        );
        assert!(matches!(
            Dest::parse("oci-archive:a.tar:v1").unwrap(),
            Dest::Archive(_, _)
        ));
        assert!(Dest::parse("host/Upper:1").is_err());
        assert!(Dest::parse("host-only").is_err());
    }
}
