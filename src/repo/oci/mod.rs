//! OSTree commits as OCI images, in the ostree-container layout that ostree-ext (rpm-ostree,
//! bootc) reads and writes ("chunked" format version 1): the first layer holds the commit,
//! every dirtree/dirmeta object and the directory skeleton; each further layer holds the
//! content objects of a group of packages, as `sysroot/ostree/repo/objects/XX/….file`
//! entries (a `bare-split-xattrs` repo) hard-linked from their paths in the tree, so the
//! image is also an ordinary container image (`podman run`). Labels carry the commit
//! (`ostree.commit`), `ostree.bootable`/`containers.bootc`, the version and kiln's package
//! list; layer annotations `ostree.components` name each layer's packages.
//!
//! Files: [`layout`] (OCI layout directories), [`import`] (layers → repo objects, verified
//! against the commit's checksums), [`derive`] (layers from `podman build` applied on the
//! base commit), [`transport`] (registries through skopeo: pull into a
//! layout, which fetches only missing layers and enforces the containers signature
//! policy; push, with signing). The writer is `crate::publish::oci`.

pub mod derive;
pub mod import;
pub mod layout;
pub mod transport;

/// Image config labels and layer annotations of the ostree-container format.
/// Where the objects of the OSTree layers already imported are listed, one file per
/// layer digest, in the layout (the machine's layer cache): an upgrade reads only the
/// layers it lacks instead of decompressing every cached one again.
pub const LAYER_INDEX_DIR: &str = "kiln-layer-objects";

pub mod labels {
    pub const COMMIT: &str = "ostree.commit";
    pub const BOOTABLE: &str = "ostree.bootable";
    pub const BOOTC: &str = "containers.bootc";
    pub const LINUX: &str = "ostree.linux";
    pub const FINAL_DIFFID: &str = "ostree.final-diffid";
    pub const VERSION: &str = "org.opencontainers.image.version";
    /// Layer annotation: the packages whose files the layer holds, comma-separated.
    pub const COMPONENTS: &str = "ostree.components";
    /// Layer annotation ostree-ext puts on the commit layer.
    pub const ENCAPSULATED: &str = "ostree.encapsulated";
    /// kiln: the commit's package list (`name=version`, space-separated).
    pub const PACKAGES: &str = "kiln.packages";
}

/// Where the object store sits inside every layer.
pub const OBJECTS_DIR: &str = "sysroot/ostree/repo/objects";

/// The tar path of an object (`suffix`: commit, commitmeta, dirtree, dirmeta, file,
/// file-xattrs, file-xattrs-link).
pub fn object_path(checksum: &str, suffix: &str) -> String {
    format!(
        "{OBJECTS_DIR}/{}/{}.{suffix}",
        &checksum[..2],
        &checksum[2..]
    )
}

/// How a machine verifies an image it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// `ostree-image-signed:`: the machine's containers policy must require and accept a
    /// signature.
    Signed,
    /// `ostree-unverified-registry:` / `ostree-unverified-image:`: TLS and digests only.
    Unverified,
}

/// A parsed `ostree-image-signed:docker://…` style reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub verify: Verify,
    /// The containers-image transport reference (`docker://HOST/REPO:TAG`,
    /// `oci:DIR:TAG`, `oci-archive:FILE:TAG`).
    pub transport: String,
}

impl ImageRef {
    /// Parses a reference; the rule is [`crate::validate::image_ref`].
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        crate::validate::image_ref(s)?;
        let (verify, rest) = if let Some(r) = s.strip_prefix("ostree-image-signed:") {
            (Verify::Signed, r.to_string())
        } else if let Some(r) = s.strip_prefix("ostree-unverified-registry:") {
            (Verify::Unverified, format!("docker://{r}"))
        } else if let Some(r) = s.strip_prefix("ostree-unverified-image:") {
            (Verify::Unverified, r.to_string())
        } else {
            return Err(format!("{s:?} is not an image reference"));
        };
        Ok(ImageRef {
            verify,
            transport: rest,
        })
    }

    /// The canonical spelling, as written to a deployment's origin.
    pub fn canonical(&self) -> String {
        match self.verify {
            Verify::Signed => format!("ostree-image-signed:{}", self.transport),
            Verify::Unverified => format!("ostree-unverified-image:{}", self.transport),
        }
    }

    /// `HOST[:PORT]/REPO[:TAG]` of a `docker://` reference.
    pub fn docker(&self) -> Option<&str> {
        self.transport.strip_prefix("docker://")
    }

    /// The registry host (`HOST[:PORT]`) of a `docker://` reference.
    pub fn registry(&self) -> Option<&str> {
        self.docker().and_then(|d| d.split('/').next())
    }
}

/// True when `s` names an image rather than an OSTree ref.
pub fn is_image_ref(s: &str) -> bool {
    [
        "ostree-image-signed:",
        "ostree-unverified-registry:",
        "ostree-unverified-image:",
    ]
    .iter()
    .any(|p| s.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_are_checked() {
        let r = ImageRef::parse("ostree-image-signed:docker://127.0.0.1:5000/os/base:v1").unwrap();
        assert_eq!(r.verify, Verify::Signed);
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        let u = ImageRef::parse("ostree-unverified-registry:quay.io/x/y:latest").unwrap();
        assert_eq!(u.transport, "docker://quay.io/x/y:latest");
        assert_eq!(
            u.canonical(),
            "ostree-unverified-image:docker://quay.io/x/y:latest"
        );
        for bad in [
            "docker://x/y",
            "ostree-image-signed:docker://",
            "ostree-image-signed:docker://a b/c",
            "ostree-image-signed:ftp://x/y",
            "ostree-image-signed:docker://x/Y",
            "ostree-unverified-registry:x/y\n",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
        assert!(is_image_ref("ostree-unverified-image:oci:/tmp/x:v1"));
        assert!(!is_image_ref("kiln/stable/x86_64/base"));
    }
}
