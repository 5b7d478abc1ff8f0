//! The software bill of materials of a composed tree: an SPDX 2.3 JSON document listing
//! every installed Debian package with its version, architecture, source package, the
//! licenses its `/usr/share/doc/PKG/copyright` declares (when that file is in Debian's
//! machine-readable format), the sha256 of the `.deb` it came from (from compose's cache)
//! and its purl (`pkg:deb/debian/NAME@VERSION?arch=ARCH`).
//!
//! It goes into the tree as [`TREE_PATH`], so every commit carries it and every image built
//! from the commit can copy it beside itself. Deterministic: packages sorted, the creation
//! time is the build epoch (SOURCE_DATE_EPOCH), the namespace is derived from the content.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// Where the SBOM sits in the tree (and so in the commit and the deployed system).
pub const TREE_PATH: &str = "usr/share/kiln/sbom.spdx.json";

/// One installed package as dpkg records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source: String,
    pub source_version: String,
}

/// The installed packages of the dpkg database at `admindir`, sorted by name and arch.
pub fn packages(admindir: &Path) -> Result<Vec<Package>> {
    let out = crate::cmd::Cmd::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n",
        ])
        .read()
        .context("listing the tree's installed packages")?;
    let mut v: Vec<Package> = out
        .lines()
        .filter(|l| l.starts_with("ii"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 6).then(|| Package {
                name: f[1].into(),
                version: f[2].into(),
                arch: f[3].into(),
                source: f[4].into(),
                source_version: f[5].into(),
            })
        })
        .collect();
    v.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    v.dedup();
    Ok(v)
}

/// Debian's short license names as SPDX ids, where they differ or are certain.
fn spdx_id(name: &str) -> Option<&'static str> {
    const MAP: &[(&str, &str)] = &[
        ("GPL-1", "GPL-1.0-only"),
        ("GPL-1+", "GPL-1.0-or-later"),
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-3", "GPL-3.0-only"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("LGPL-2", "LGPL-2.0-only"),
        ("LGPL-2+", "LGPL-2.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("LGPL-3", "LGPL-3.0-only"),
        ("LGPL-3+", "LGPL-3.0-or-later"),
        ("AGPL-3", "AGPL-3.0-only"),
        ("AGPL-3+", "AGPL-3.0-or-later"),
        ("BSD-2-clause", "BSD-2-Clause"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("BSD-4-clause", "BSD-4-Clause"),
        ("Expat", "MIT"),
        ("MIT", "MIT"),
        ("ISC", "ISC"),
        ("Apache-2.0", "Apache-2.0"),
        ("Zlib", "Zlib"),
        ("MPL-1.1", "MPL-1.1"),
        ("MPL-2.0", "MPL-2.0"),
        ("CC0-1.0", "CC0-1.0"),
        ("BSL-1.0", "BSL-1.0"),
        ("OpenSSL", "OpenSSL"),
        ("curl", "curl"),
        ("0BSD", "0BSD"),
        ("X11", "X11"),
        ("Unlicense", "Unlicense"),
    ];
    MAP.iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(name))
        .map(|(_, s)| *s)
}

/// The license names of a DEP-5 copyright file's `License:` fields (first lines only:
/// `A or B`, `A and B`, `A, B` split; `with … exception` dropped); empty when the file is
/// not machine-readable.
pub fn declared_licenses(copyright: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !copyright.starts_with("Format:") {
        return out;
    }
    for line in copyright.lines() {
        let Some(v) = line.strip_prefix("License:") else {
            continue;
        };
        let v = v.split(" with ").next().unwrap_or("");
        for part in v
            .split([',', '|'])
            .flat_map(|p| p.split(" or "))
            .flat_map(|p| p.split(" and "))
        {
            let n = part.trim();
            if !n.is_empty() && !n.contains(char::is_whitespace) {
                out.insert(n.to_string());
            }
        }
    }
    out
}

/// An SPDX license reference id for a Debian name with no SPDX id.
fn license_ref(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("LicenseRef-Debian-{s}")
}

fn spdx_ref(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The `.deb` file name apt gives `p` in its cache (an epoch's `:` as `%3a`).
pub fn deb_file_name(p: &Package) -> String {
    format!(
        "{}_{}_{}.deb",
        p.name,
        p.version.replace(':', "%3a"),
        p.arch
    )
}

/// The purl of a Debian package.
pub fn purl(p: &Package) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        p.name,
        p.version.replace(':', "%3A"),
        p.arch
    )
}

fn sha256_of(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(hex::encode(Sha256::digest(&bytes)))
}

/// What the SBOM describes.
pub struct Subject<'a> {
    /// The OS: the recipe's name and ref.
    pub name: &'a str,
    pub ref_: &'a str,
    /// Seconds since the epoch: the document's creation time.
    pub epoch: u64,
    pub kiln_version: &'a str,
}

/// The SPDX 2.3 document of `tree` (a Debian root, its dpkg database at
/// `var/lib/dpkg`), with `.deb` checksums from `debs` (compose's cache).
pub fn document(tree: &Path, debs: &Path, s: &Subject) -> Result<Value> {
    let pkgs = packages(&tree.join("var/lib/dpkg"))?;
    let mut refs: BTreeSet<String> = BTreeSet::new();
    let mut list = Vec::new();
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-OS",
    })];
    for p in &pkgs {
        let id = format!(
            "SPDXRef-Package-deb-{}-{}",
            spdx_ref(&p.name),
            spdx_ref(&p.arch)
        );
        let doc = tree.join("usr/share/doc").join(&p.name).join("copyright");
        let names = match std::fs::symlink_metadata(tree.join("usr/share/doc").join(&p.name)) {
            // Never follow an absolute link out of the tree.
            Ok(m)
                if m.file_type().is_symlink()
                    && std::fs::read_link(tree.join("usr/share/doc").join(&p.name))
                        .map(|t| t.is_absolute())
                        .unwrap_or(true) =>
            {
                BTreeSet::new()
            }
            _ => std::fs::read_to_string(&doc)
                .map(|t| declared_licenses(&t))
                .unwrap_or_default(),
        };
        let ids: BTreeSet<String> = names
            .iter()
            .map(|n| match spdx_id(n) {
                Some(id) => id.to_string(),
                None => {
                    let r = license_ref(n);
                    refs.insert(r.clone());
                    r
                }
            })
            .collect();
        let declared = if ids.is_empty() {
            "NOASSERTION".to_string()
        } else {
            ids.into_iter().collect::<Vec<_>>().join(" AND ")
        };
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("built from Debian source package {} {}", p.source, p.source_version),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p),
            }],
        });
        if let Some(sum) = sha256_of(&debs.join(deb_file_name(p))) {
            pkg["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sum}]);
        }
        rels.push(json!({
            "spdxElementId": "SPDXRef-OS",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        list.push(pkg);
    }
    let os = json!({
        "SPDXID": "SPDXRef-OS",
        "name": s.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("OSTree ref {}", s.ref_),
    });
    list.insert(0, os);
    let extracted: Vec<Value> = refs
        .iter()
        .map(|r| {
            let name = r.trim_start_matches("LicenseRef-Debian-");
            json!({
                "licenseId": r,
                "name": name,
                "extractedText": format!("The license Debian's machine-readable copyright files call {name}; see /usr/share/doc/PACKAGE/copyright."),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} ({})", s.name, s.ref_),
        "documentNamespace": "",
        "creationInfo": {
            "created": rfc3339(s.epoch),
            "creators": [format!("Tool: kiln-{}", s.kiln_version)],
        },
        "packages": list,
        "relationships": rels,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = json!(extracted);
    }
    // A namespace unique to this content, and the same for the same content.
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(&doc).context("encoding the SBOM")?,
    ));
    doc["documentNamespace"] = json!(format!(
        "https://kiln.invalid/spdx/{}/{}",
        spdx_ref(s.ref_),
        digest
    ));
    Ok(doc)
}

/// `YYYY-MM-DDThh:mm:ssZ` of `epoch`.
fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86400;
    let secs = epoch % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Writes the SBOM of `tree` into it at [`TREE_PATH`].
pub fn write_into(tree: &Path, debs: &Path, s: &Subject) -> Result<()> {
    let doc = document(tree, debs, s)?;
    let path = tree.join(TREE_PATH);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&doc).context("encoding the SBOM")?;
    text.push('\n');
    // Never write into an existing file: it may be a hard link into the tree cache.
    super::overlay::remove_any(&path)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_of_machine_readable_copyright_files() {
        let t = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                 Files: *\nLicense: GPL-2+\n\nFiles: lib/*\nLicense: LGPL-2.1+ or BSD-3-clause\n\
                 \nLicense: GPL-2+\n On Debian systems...\nLicense: GPL-3+ with OpenSSL exception\n";
        let l = declared_licenses(t);
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            vec!["BSD-3-clause", "GPL-2+", "GPL-3+", "LGPL-2.1+"]
        );
        assert!(declared_licenses("This is the Debian package of foo.\nLicense: GPL\n").is_empty());
        assert_eq!(spdx_id("gpl-2+"), Some("GPL-2.0-or-later"));
        assert_eq!(
            license_ref("public domain"),
            "LicenseRef-Debian-public-domain"
        );
    }

    #[test]
    fn purls_and_deb_names_encode_epochs() {
        let p = Package {
            name: "iproute2".into(),
            version: "1:6.1.0-3".into(),
            arch: "amd64".into(),
            source: "iproute2".into(),
            source_version: "1:6.1.0-3".into(),
        };
        assert_eq!(purl(&p), "pkg:deb/debian/iproute2@1%3A6.1.0-3?arch=amd64");
        assert_eq!(deb_file_name(&p), "iproute2_1%3a6.1.0-3_amd64.deb");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
