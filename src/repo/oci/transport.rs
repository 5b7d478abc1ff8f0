//! Registries through skopeo: `push` (with GPG simple signing or a sigstore key) and
//! `pull` into a local OCI layout, which fetches only the layers the layout lacks,
//! checks every blob's digest and enforces a containers signature policy before any
//! layer is copied. A machine's containers configuration is a directory laid out like
//! `/etc/containers` (`policy.json`, `registries.d/`, `certs.d/HOST:PORT/`,
//! `registries.conf` for mirrors) plus a pull secret (`/etc/ostree/auth.json`, where
//! bootc keeps it).

use super::{ImageRef, Verify};
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How to reach and authenticate to a registry when pushing.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// containers-auth.json (default: skopeo's, `$XDG_RUNTIME_DIR/containers/auth.json`).
    pub authfile: Option<PathBuf>,
    /// A directory of CA certificates (`*.crt`) for the registry's TLS.
    pub cert_dir: Option<PathBuf>,
    /// GPG key (fingerprint) to sign with (simple signing); stored where
    /// `registries_d` says (`lookaside-staging`).
    pub sign_by: Option<String>,
    pub gpg_homedir: Option<PathBuf>,
    /// A sigstore private key to sign with (attached to the registry when its
    /// registries.d says `use-sigstore-attachments: true`).
    pub sigstore_key: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
    pub registries_d: Option<PathBuf>,
}

/// Pushes the image tagged `tag` in the layout `layout` to `HOST/REPO:TAG`; returns
/// whether it was signed.
pub fn push(layout: &Path, tag: &str, dest: &str, o: &PushOptions) -> Result<bool> {
    let mut c = Cmd::new("skopeo");
    if let Some(d) = &o.registries_d {
        c = c.arg("--registries.d").arg(d);
    }
    // The source is our own layout: no policy applies to reading it.
    c = c
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--retry-times")
        .arg("2");
    if let Some(a) = &o.authfile {
        c = c.arg("--dest-authfile").arg(a);
    }
    if let Some(d) = &o.cert_dir {
        c = c.arg("--dest-cert-dir").arg(d);
    }
    if let Some(k) = &o.sign_by {
        c = c.arg("--sign-by").arg(k);
    }
    if let Some(h) = &o.gpg_homedir {
        c = c.env("GNUPGHOME", h);
    }
    if let Some(k) = &o.sigstore_key {
        c = c.arg("--sign-by-sigstore-private-key").arg(k);
    }
    if let Some(p) = &o.passphrase_file {
        c = c.arg("--sign-passphrase-file").arg(p);
    }
    let src = format!("oci:{}:{tag}", layout.display());
    c.arg(src)
        .arg(format!("docker://{dest}"))
        .run()
        .with_context(|| format!("pushing the image to {dest}"))?;
    Ok(o.sign_by.is_some() || o.sigstore_key.is_some())
}

/// A machine's containers configuration.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Laid out like /etc/containers.
    pub containers: PathBuf,
    /// The pull secret, when there is one.
    pub authfile: Option<PathBuf>,
}

impl MachineConfig {
    /// The configuration under an `/etc` directory (a deployment's, or the host's).
    pub fn from_etc(etc: &Path) -> MachineConfig {
        let auth = etc.join("ostree/auth.json");
        MachineConfig {
            containers: etc.join("containers"),
            authfile: auth.is_file().then_some(auth),
        }
    }

    pub fn policy(&self) -> PathBuf {
        self.containers.join("policy.json")
    }

    /// skopeo's global options and environment for this configuration.
    fn apply(&self, mut c: Cmd, img: &ImageRef, policy: &Path) -> Cmd {
        c = c.arg("--policy").arg(policy);
        let rd = self.containers.join("registries.d");
        if rd.is_dir() {
            c = c.arg("--registries.d").arg(rd);
        }
        let conf = self.containers.join("registries.conf");
        if conf.is_file() {
            c = c.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        let _ = img;
        c
    }

    fn cert_dir(&self, img: &ImageRef) -> Option<PathBuf> {
        let d = self.containers.join("certs.d").join(img.registry()?);
        d.is_dir().then_some(d)
    }
}

/// The requirements `policy.json` applies to a docker reference (containers-policy.json's
/// scope rules: the most specific of `HOST/REPO:TAG`, `HOST/REPO`, its namespaces,
/// `HOST`, the transport's `""`, then `default`).
pub fn requirements(policy: &serde_json::Value, docker: &str) -> Vec<serde_json::Value> {
    let mut scopes = vec![docker.to_string()];
    let name = docker.split('@').next().unwrap_or(docker);
    let name = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => n,
        _ => name,
    };
    let mut cur = name.to_string();
    loop {
        scopes.push(cur.clone());
        match cur.rsplit_once('/') {
            Some((p, _)) => cur = p.to_string(),
            None => break,
        }
    }
    scopes.push(String::new());
    let docker_scopes = &policy["transports"]["docker"];
    for s in scopes {
        if let Some(r) = docker_scopes.get(&s).and_then(|v| v.as_array()) {
            return r.clone();
        }
    }
    policy["default"].as_array().cloned().unwrap_or_default()
}

/// Refuses a signed reference whose policy would accept an unsigned image.
fn check_policy_requires_signature(cfg: &MachineConfig, img: &ImageRef) -> Result<()> {
    let p = cfg.policy();
    let data = std::fs::read(&p).with_context(|| {
        format!(
            "reading the containers policy {} (an ostree-image-signed: image needs one that \
             requires a signature)",
            p.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))?;
    let docker = img.docker().unwrap_or(&img.transport);
    let reqs = requirements(&v, docker);
    let signed = reqs.iter().any(|r| {
        matches!(
            r["type"].as_str(),
            Some("signedBy") | Some("sigstoreSigned")
        )
    });
    if !signed {
        bail!(
            "the containers policy {} does not require a signature for {docker}; an \
             ostree-image-signed: image is only pulled under a policy with a signedBy or \
             sigstoreSigned requirement for it (docs/updating.md, \"Signing\"), or name it \
             ostree-unverified-registry: to accept it unsigned",
            p.display()
        );
    }
    Ok(())
}

/// The tag a pulled image gets in the machine's layout.
pub const PULL_TAG: &str = "kiln-pull";

/// Copies `img` into the layout `cache` (tag [`PULL_TAG`]); blobs already there are not
/// fetched again. The signature policy is checked by skopeo before any layer is copied.
pub fn pull(img: &ImageRef, cache: &Path, cfg: &MachineConfig) -> Result<()> {
    crate::cmd::require_tools(&[("skopeo", "skopeo")])?;
    let _tmp;
    let policy = match img.verify {
        Verify::Signed => {
            check_policy_requires_signature(cfg, img)?;
            cfg.policy()
        }
        Verify::Unverified => {
            let t = tempfile::NamedTempFile::new().context("creating a temp policy file")?;
            std::fs::write(
                t.path(),
                br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
            )
            .context("writing a temp policy file")?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut c = cfg.apply(Cmd::new("skopeo"), img, &policy);
    c = c.arg("copy").arg("--remove-signatures");
    if let Some(a) = &cfg.authfile {
        c = c.arg("--src-authfile").arg(a);
    }
    if let Some(d) = cfg.cert_dir(img) {
        c = c.arg("--src-cert-dir").arg(d);
    }
    c.arg(&img.transport)
        .arg(format!("oci:{}:{PULL_TAG}", cache.display()))
        .run()
        .map_err(|e| {
            let why = pull_failure(&format!("{e:#}"));
            e.context(format!("pulling {}{why}", img.transport))
        })?;
    Ok(())
}

/// What a skopeo pull error means, in a few words (empty when unknown).
fn pull_failure(err: &str) -> &'static str {
    if err.contains("Digest did not match") {
        ": a layer's content does not match its digest (tampered or corrupted); nothing was deployed"
    } else if err.contains("signature") || err.contains("Signature") {
        ": refused by the machine's containers signature policy; nothing was deployed"
    } else if err.contains("connection refused")
        || err.contains("EOF")
        || err.contains("connection reset")
    {
        ": the registry went away; layers already downloaded are kept and the next run resumes"
    } else {
        ""
    }
}

/// What the registry says about an image without downloading layers (`skopeo inspect`:
/// manifest and config only; no signature check, so use it only to decide that nothing
/// needs doing).
#[derive(Debug, Clone)]
pub struct Remote {
    pub digest: String,
    /// (digest, compressed size) of every layer.
    pub layers: Vec<(String, u64)>,
    pub labels: std::collections::BTreeMap<String, String>,
}

pub fn inspect(img: &ImageRef, cfg: &MachineConfig) -> Result<Remote> {
    crate::cmd::require_tools(&[("skopeo", "skopeo")])?;
    let run = |raw: bool| -> Result<serde_json::Value> {
        let mut c = Cmd::new("skopeo");
        let conf = cfg.containers.join("registries.conf");
        if conf.is_file() {
            c = c.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        c = c.arg("inspect");
        c = if raw {
            c.arg("--raw")
        } else {
            c.arg("--no-tags")
        };
        if let Some(a) = &cfg.authfile {
            c = c.arg("--authfile").arg(a);
        }
        if let Some(d) = cfg.cert_dir(img) {
            c = c.arg("--cert-dir").arg(d);
        }
        let out = c
            .arg(&img.transport)
            .read()
            .with_context(|| format!("inspecting {}", img.transport))?;
        serde_json::from_str(&out).context("parsing skopeo inspect")
    };
    let v = run(false)?;
    // The manifest (skopeo 1.9 has no LayersData): layer digests and sizes.
    let m = run(true)?;
    let layers = m["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| Some((l["digest"].as_str()?.to_string(), l["size"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let labels = v["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Remote {
        layers,
        digest: v["Digest"].as_str().unwrap_or_default().to_string(),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_scopes_pick_the_most_specific() {
        let p = serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {
                "reg:5000/os": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}],
                "reg:5000": [{"type": "insecureAcceptAnything"}]
            }}
        });
        assert_eq!(
            requirements(&p, "reg:5000/os/base:v1")[0]["type"],
            "signedBy"
        );
        assert_eq!(
            requirements(&p, "reg:5000/other:v1")[0]["type"],
            "insecureAcceptAnything"
        );
        assert_eq!(requirements(&p, "elsewhere/x:1")[0]["type"], "reject");
    }
}
