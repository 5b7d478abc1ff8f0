//! Template hygiene: an image is a template that many machines are made from, so nothing
//! that belongs to one machine may be in it.
//!
//! [`check_sysroot`] runs on every image's sysroot before the filesystems are made and
//! refuses the build when it finds, in the deployment's `/etc` (and `/usr/etc`, its
//! source), the stateroot's `/var`, or the factory copies tmpfiles.d restores into `/var`
//! (`/usr/share/factory/var`):
//! - a machine-id (`/etc/machine-id` must be empty: systemd makes one on first boot;
//!   `/var/lib/dbus/machine-id` must not be a file of its own);
//! - SSH host keys (`/etc/ssh/ssh_host_*`: made on first boot by `kiln-ssh-keygen.service`);
//! - a `resolv.conf` with content (a symlink to systemd-resolved's stub is fine);
//! - DHCP leases (`/var/lib/dhcp`, `/var/lib/dhclient`, `/var/lib/NetworkManager`,
//!   `/var/lib/systemd/network`);
//! - apt's package lists (`/var/lib/apt/lists`);
//! - a random seed (`/var/lib/systemd/random-seed`, `/var/lib/urandom/random-seed`) or
//!   systemd's credential secret.
//!
//! What a clone changes on its own first boot (machine-id, host keys, disk GUIDs and
//! filesystem UUIDs, root grown to the disk) is described in docs/cloud.md.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// One piece of machine-specific state found in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path as the machine would see it (e.g. `/etc/machine-id`), with where it was found.
    pub path: String,
    pub what: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

fn is_nonempty_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.is_file() && m.len() > 0)
        .unwrap_or(false)
}

/// Regular files below `dir` (recursively), skipping `skip` names.
fn files_below(dir: &Path, skip: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if skip.iter().any(|s| name.to_str() == Some(s)) {
            continue;
        }
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => out.extend(files_below(&p, skip)),
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Machine-specific state in an `/etc` directory; `shown` is how paths are reported
/// (e.g. `/etc` or `/usr/etc`).
pub fn scan_etc(etc: &Path, shown: &str) -> Vec<Finding> {
    let mut f = Vec::new();
    let mid = etc.join("machine-id");
    if let Ok(text) = std::fs::read_to_string(&mid) {
        let t = text.trim();
        if !t.is_empty() && t != "uninitialized" {
            f.push(Finding {
                path: format!("{shown}/machine-id"),
                what: "a machine-id (every machine must make its own: leave the file empty)",
            });
        }
    }
    if let Ok(rd) = std::fs::read_dir(etc.join("ssh")) {
        let mut keys: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        keys.sort();
        for k in keys {
            f.push(Finding {
                path: format!("{shown}/ssh/{k}"),
                what: "an SSH host key (every machine must make its own on first boot)",
            });
        }
    }
    if is_nonempty_file(&etc.join("resolv.conf")) {
        f.push(Finding {
            path: format!("{shown}/resolv.conf"),
            what: "the build host's DNS settings (make it a symlink to systemd-resolved's stub, or leave it out)",
        });
    }
    f
}

/// Machine-specific state in a `/var` directory; `shown` is how paths are reported.
pub fn scan_var(var: &Path, shown: &str) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut push = |p: &Path, what: &'static str| {
        let rel = p.strip_prefix(var).unwrap_or(p);
        f.push(Finding {
            path: format!("{shown}/{}", rel.display()),
            what,
        });
    };
    for p in [
        "lib/systemd/random-seed",
        "lib/urandom/random-seed",
        "lib/systemd/credential.secret",
    ] {
        if is_nonempty_file(&var.join(p)) {
            push(&var.join(p), "a random seed or secret (made per machine)");
        }
    }
    if is_nonempty_file(&var.join("lib/dbus/machine-id")) {
        push(
            &var.join("lib/dbus/machine-id"),
            "a machine-id (D-Bus's must be a symlink to /etc/machine-id or absent)",
        );
    }
    for d in [
        "lib/dhcp",
        "lib/dhclient",
        "lib/NetworkManager",
        "lib/systemd/network",
    ] {
        for p in files_below(&var.join(d), &[]) {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.contains("lease") || d == "lib/systemd/network" {
                push(&p, "a DHCP lease from the build");
            }
        }
    }
    for p in files_below(&var.join("lib/apt/lists"), &["lock", "partial"]) {
        push(&p, "apt's package lists from the build");
    }
    f
}

/// Every finding in an image's sysroot: the deployment's `/etc` and `/usr/etc`, the
/// factory `/var`, the stateroot's `/var`.
pub fn scan_sysroot(sysroot: &Path, os: &str, deployment: &Path) -> Vec<Finding> {
    let mut f = scan_etc(&deployment.join("etc"), "/etc");
    f.extend(scan_etc(&deployment.join("usr/etc"), "/usr/etc"));
    f.extend(scan_var(
        &deployment.join("usr/share/factory/var"),
        "/usr/share/factory/var",
    ));
    f.extend(scan_var(
        &sysroot.join("ostree/deploy").join(os).join("var"),
        "/var",
    ));
    f
}

/// Refuses a sysroot with machine-specific state in it (see the module docs).
pub fn check_sysroot(sysroot: &Path, os: &str, deployment: &Path) -> Result<()> {
    let f = scan_sysroot(sysroot, os, deployment);
    if f.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = f.iter().map(|x| format!("  {x}")).collect();
    bail!(
        "the commit carries machine-specific state; every machine made from this image \
         would share it:\n{}\nremove it in the recipe (remove-files) and compose again \
         (docs/cloud.md, \"Templates\")",
        list.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_clean_tree_passes() {
        let td = tempfile::tempdir().unwrap();
        let dep = td.path().join("ostree/deploy/kiln/deploy/abc.0");
        write(&dep.join("etc/machine-id"), "");
        write(&dep.join("usr/etc/machine-id"), "");
        write(&dep.join("etc/ssh/sshd_config"), "x");
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            dep.join("etc/resolv.conf"),
        )
        .unwrap();
        let var = td.path().join("ostree/deploy/kiln/var");
        write(&var.join("lib/apt/lists/lock"), "");
        std::fs::create_dir_all(var.join("lib/apt/lists/partial")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", {
            std::fs::create_dir_all(var.join("lib/dbus")).unwrap();
            var.join("lib/dbus/machine-id")
        })
        .unwrap();
        check_sysroot(td.path(), "kiln", &dep).unwrap();
    }

    #[test]
    fn every_kind_of_state_is_found() {
        let td = tempfile::tempdir().unwrap();
        let dep = td.path().join("ostree/deploy/kiln/deploy/abc.0");
        write(
            &dep.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        );
        write(&dep.join("usr/etc/machine-id"), "");
        write(&dep.join("etc/ssh/ssh_host_ed25519_key"), "k");
        write(&dep.join("etc/ssh/ssh_host_rsa_key.pub"), "k");
        write(&dep.join("etc/resolv.conf"), "nameserver 10.0.2.3\n");
        write(
            &dep.join("usr/share/factory/var/lib/systemd/random-seed"),
            "seed",
        );
        let var = td.path().join("ostree/deploy/kiln/var");
        write(&var.join("lib/dhcp/dhclient.eth0.leases"), "lease {}");
        write(
            &var.join("lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"),
            "x",
        );
        write(&var.join("lib/dbus/machine-id"), "0123\n");
        let f = scan_sysroot(td.path(), "kiln", &dep);
        let paths: Vec<&str> = f.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/etc/machine-id",
                "/etc/ssh/ssh_host_ed25519_key",
                "/etc/ssh/ssh_host_rsa_key.pub",
                "/etc/resolv.conf",
                "/usr/share/factory/var/lib/systemd/random-seed",
                "/var/lib/dbus/machine-id",
                "/var/lib/dhcp/dhclient.eth0.leases",
                "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            ]
        );
        let err = check_sysroot(td.path(), "kiln", &dep)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/ssh/ssh_host_ed25519_key"), "{err}");
        assert!(err.contains("remove-files"), "{err}");
    }
}
