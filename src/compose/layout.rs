//! The OSTree layout: a Debian root becomes a tree libostree can deploy.
//!
//! - `/etc` moves to `/usr/etc` (libostree's three-way merge base); `etc/fstab` mounts
//!   `LABEL=boot` on `/boot`; `etc/machine-id` is empty (made on first boot).
//! - `/var` is emptied: deployments share one `/var` per stateroot, so content in the
//!   commit would never be seen. What was there is re-created at boot by
//!   `usr/lib/tmpfiles.d/kiln-var.conf`: `d` for directories (mode, owner), `L` for
//!   symlinks, and `C` for regular files, whose content is kept under
//!   `usr/share/factory/var/`. Paths another tmpfiles.d file already declares are left to
//!   it. Logs and apt's lists and caches are dropped.
//! - The dpkg database moves to `usr/lib/sysimage/dpkg` (it describes `/usr`, so it must
//!   change with it) and `/var/lib/dpkg` becomes a symlink to it via tmpfiles, so
//!   `dpkg -l` works on the booted system.
//! - `home root opt srv mnt media usr/local` become the symlinks an OSTree system expects
//!   (into `/var`, `media` into `/run`); their content moves along first.
//! - `sysroot/` (empty), `ostree -> sysroot/ostree`; empty `dev proc sys run tmp boot`.
//! - Hygiene: no SSH host keys (a unit makes them on first boot), no build host
//!   `resolv.conf`/`hostname`, no apt lists or caches, and (checked by the caller) no build
//!   paths anywhere in the tree.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the dpkg database lives in the commit.
pub const DPKG_DB: &str = "usr/lib/sysimage/dpkg";
/// The generated tmpfiles.d file.
pub const VAR_TMPFILES: &str = "usr/lib/tmpfiles.d/kiln-var.conf";
/// Factory copies of `/var`'s regular files.
pub const VAR_FACTORY: &str = "usr/share/factory/var";
const FSTAB: &str = "# Written by kiln. / is mounted by the initramfs (ostree-prepare-root).\n\
LABEL=boot /boot ext4 defaults 0 2\n";

const SSH_KEYGEN_UNIT: &str = "usr/lib/systemd/system/kiln-ssh-keygen.service";
const SSH_KEYGEN: &str = "[Unit]\n\
Description=Generate SSH host keys (kiln images ship none)\n\
Before=ssh.service\n\
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\
\n\
[Service]\n\
Type=oneshot\n\
ExecStart=/usr/bin/ssh-keygen -A\n\
RemainAfterExit=yes\n";

/// The symlinks (path, target) of the OSTree layout and the `/var` directory each needs.
const VAR_LINKS: &[(&str, &str, &str, u32)] = &[
    ("home", "var/home", "var/home", 0o755),
    ("root", "var/roothome", "var/roothome", 0o700),
    ("opt", "var/opt", "var/opt", 0o755),
    ("srv", "var/srv", "var/srv", 0o755),
    ("mnt", "var/mnt", "var/mnt", 0o755),
    ("usr/local", "../var/usrlocal", "var/usrlocal", 0o755),
];

/// What the layout stage did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct LayoutReport {
    pub tmpfiles_entries: usize,
    pub var_files_kept: usize,
    pub var_files_dropped: Vec<String>,
}

/// Converts `tree` in place.
pub fn convert(tree: &Path, host_hostname: Option<&str>) -> Result<LayoutReport> {
    let mut rep = LayoutReport::default();
    if !tree.join("etc").is_dir() {
        bail!(
            "{}: no etc/ directory (layout already converted?)",
            tree.display()
        );
    }
    if !tree.join("usr/lib/os-release").exists() {
        bail!("the tree has no usr/lib/os-release (base-files missing?)");
    }
    hygiene_etc(tree, host_hostname)?;

    // Content of the dirs that become links moves into /var first.
    for (link, _target, var_dir, mode) in VAR_LINKS {
        move_into_var(tree, link, var_dir, *mode)?;
    }
    std::fs::create_dir_all(tree.join("run/media")).ok();
    drop_path(&tree.join("media"))?;

    // dpkg database into /usr.
    let dpkg_src = tree.join("var/lib/dpkg");
    let dpkg_dst = tree.join(DPKG_DB);
    if dpkg_src.is_dir() {
        std::fs::create_dir_all(dpkg_dst.parent().unwrap_or(tree))
            .context("creating usr/lib/sysimage")?;
        std::fs::rename(&dpkg_src, &dpkg_dst)
            .with_context(|| format!("moving the dpkg database to {DPKG_DB}"))?;
    }
    // dpkg's backups hold the database before its last run: they depend on the order
    // packages were installed in, not on what is installed.
    for f in ["status-old", "diversions-old", "statoverride-old"] {
        drop_path(&dpkg_dst.join(f))?;
    }
    // Drop what must not ship: logs, apt lists and caches, lock files.
    for p in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/log",
        "var/cache/ldconfig/aux-cache",
        "var/lib/dbus/machine-id",
        "var/lib/systemd/random-seed",
    ] {
        let full = tree.join(p);
        if full.is_dir() {
            // Keep the directory itself (and its subdirectories), not the files.
            drop_files_below(&full)?;
        } else {
            drop_path(&full)?;
        }
    }

    sort_extended_states(&tree.join("var/lib/apt/extended_states"))?;

    // /etc -> /usr/etc (tmpfiles.d under etc is read from there below).
    std::fs::rename(tree.join("etc"), tree.join("usr/etc")).context("moving etc to usr/etc")?;

    let declared = declared_tmpfiles_paths(tree)?;
    let names = IdNames::read(&tree.join("usr/etc"));
    let mut lines: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    walk_var(
        tree,
        Path::new("var"),
        &declared,
        &names,
        &mut lines,
        &mut seen,
        &mut rep,
    )?;
    for (_link, _t, var_dir, mode) in VAR_LINKS {
        let p = format!("/{var_dir}");
        if !declared.contains(&p) && seen.insert(p.clone()) {
            lines.push(format!("d {p} {mode:04o} root root -"));
        }
    }
    if !declared.contains("/var/lib/dpkg") && tree.join(DPKG_DB).is_dir() {
        if !declared.contains("/var/lib") && seen.insert("/var/lib".into()) {
            lines.push("d /var/lib 0755 root root -".into());
        }
        lines.push(format!("L /var/lib/dpkg - - - - ../../{DPKG_DB}"));
    }
    if !declared.contains("/run/media") {
        lines.push("d /run/media 0755 root root -".into());
    }
    lines.sort_by_key(|l| tmpfiles_key(l));
    rep.tmpfiles_entries = lines.len();
    let mut text = String::from(
        "# Written by kiln: /var as the composed tree had it. /var is not part of an OSTree\n\
         # commit; systemd-tmpfiles re-creates it on each boot where it is missing.\n",
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    write_file(&tree.join(VAR_TMPFILES), text.as_bytes(), 0o644)?;

    // Empty /var, then the OSTree links and mount points.
    drop_path(&tree.join("var"))?;
    make_dir(&tree.join("var"), 0o755)?;
    for (link, target, _v, _m) in VAR_LINKS {
        drop_path(&tree.join(link))?;
        symlink(target, &tree.join(link))?;
    }
    drop_path(&tree.join("media"))?;
    symlink("run/media", &tree.join("media"))?;
    for d in ["dev", "proc", "sys", "run", "tmp", "boot", "sysroot"] {
        drop_path(&tree.join(d))?;
        make_dir(&tree.join(d), if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    drop_path(&tree.join("ostree"))?;
    symlink("sysroot/ostree", &tree.join("ostree"))?;
    // Debian's /vmlinuz and /initrd.img convenience links point into the emptied /boot.
    for e in std::fs::read_dir(tree).context("listing the tree root")? {
        let e = e.context("listing the tree root")?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("vmlinuz") || n.starts_with("initrd.img") {
            drop_path(&e.path())?;
        }
    }
    check(tree)?;
    Ok(rep)
}

fn hygiene_etc(tree: &Path, host_hostname: Option<&str>) -> Result<()> {
    let etc = tree.join("etc");
    write_file(&etc.join("machine-id"), b"", 0o444)?;
    write_file(&etc.join("fstab"), FSTAB.as_bytes(), 0o644)?;
    // mmdebstrap copies the build host's resolv.conf and hostname in.
    let rc = etc.join("resolv.conf");
    if std::fs::symlink_metadata(&rc)
        .map(|m| m.is_file())
        .unwrap_or(false)
    {
        drop_path(&rc)?;
    }
    if let Some(h) = host_hostname {
        let hp = etc.join("hostname");
        if std::fs::read_to_string(&hp)
            .map(|s| s.trim() == h.trim())
            .unwrap_or(false)
        {
            drop_path(&hp)?;
        }
    }
    // SSH host keys: generated per machine on first boot.
    let ssh = etc.join("ssh");
    if ssh.is_dir() {
        for e in std::fs::read_dir(&ssh).context("listing etc/ssh")? {
            let e = e.context("listing etc/ssh")?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                drop_path(&e.path())?;
            }
        }
    }
    if tree.join("usr/sbin/sshd").exists() {
        write_file(&tree.join(SSH_KEYGEN_UNIT), SSH_KEYGEN.as_bytes(), 0o644)?;
        let wants = tree.join("usr/lib/systemd/system/ssh.service.wants");
        std::fs::create_dir_all(&wants).context("creating ssh.service.wants")?;
        let l = wants.join("kiln-ssh-keygen.service");
        drop_path(&l)?;
        symlink("../kiln-ssh-keygen.service", &l)?;
    }
    Ok(())
}

fn move_into_var(tree: &Path, link: &str, var_dir: &str, mode: u32) -> Result<()> {
    let src = tree.join(link);
    let dst = tree.join(var_dir);
    let md = match std::fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !md.is_dir() {
        return drop_path(&src);
    }
    if dst.is_dir() {
        // Debian ships some of these (var/opt): merge the entries over.
        for e in std::fs::read_dir(&src).with_context(|| format!("listing {link}"))? {
            let e = e.with_context(|| format!("listing {link}"))?;
            let to = dst.join(e.file_name());
            if std::fs::symlink_metadata(&to).is_ok() {
                bail!(
                    "both /{link} and /{var_dir} have {:?}; cannot merge them",
                    e.file_name()
                );
            }
            std::fs::rename(e.path(), &to)
                .with_context(|| format!("moving {} to {}", e.path().display(), to.display()))?;
        }
        drop_path(&src)?;
        return std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", dst.display()));
    }
    std::fs::create_dir_all(dst.parent().unwrap_or(tree))
        .with_context(|| format!("creating the parent of {}", dst.display()))?;
    std::fs::rename(&src, &dst).with_context(|| format!("moving {link} to {var_dir}"))?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", dst.display()))
}

/// Paths declared by the tree's tmpfiles.d files (other than ours).
fn declared_tmpfiles_paths(tree: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for d in ["usr/lib/tmpfiles.d", "usr/etc/tmpfiles.d"] {
        let dir = tree.join(d);
        if !dir.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("conf")
                || p.ends_with("kiln-var.conf")
            {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            for l in text.lines() {
                let l = l.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                let mut w = l.split_whitespace();
                if let (Some(_t), Some(path)) = (w.next(), w.next()) {
                    out.insert(path.trim_end_matches('/').to_string());
                }
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walk_var(
    tree: &Path,
    rel: &Path,
    declared: &BTreeSet<String>,
    names: &IdNames,
    lines: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
    rep: &mut LayoutReport,
) -> Result<()> {
    let full = tree.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&full)
        .with_context(|| format!("listing {}", full.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", full.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let p = e.path();
        let abs = format!("/{}", r.display());
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let is_declared = declared.contains(&abs);
        if md.is_dir() {
            if !is_declared && seen.insert(abs.clone()) {
                lines.push(format!(
                    "d {} {:04o} {} {} -",
                    tmpfiles_escape(&abs),
                    md.mode() & 0o7777,
                    names.user(md.uid()),
                    names.group(md.gid())
                ));
            }
            walk_var(tree, &r, declared, names, lines, seen, rep)?;
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).with_context(|| format!("readlink {}", p.display()))?;
            if !is_declared {
                lines.push(format!(
                    "L {} - - - - {}",
                    tmpfiles_escape(&abs),
                    tmpfiles_escape(&t.to_string_lossy())
                ));
            }
        } else if md.is_file() {
            if is_declared {
                continue;
            }
            let factory = tree
                .join(VAR_FACTORY)
                .join(r.strip_prefix("var").unwrap_or(&r));
            std::fs::create_dir_all(factory.parent().unwrap_or(tree))
                .with_context(|| format!("creating {}", factory.display()))?;
            std::fs::rename(&p, &factory)
                .with_context(|| format!("moving {} to {}", p.display(), factory.display()))?;
            lines.push(format!(
                "C {} - - - - /{}",
                tmpfiles_escape(&abs),
                tmpfiles_escape(
                    &factory
                        .strip_prefix(tree)
                        .unwrap_or(&factory)
                        .to_string_lossy()
                )
            ));
            rep.var_files_kept += 1;
        } else {
            // Sockets, fifos, device nodes: nothing to keep.
            rep.var_files_dropped.push(abs);
        }
    }
    Ok(())
}

/// Sort key: the path, so parents come before children and the file is stable.
fn tmpfiles_key(line: &str) -> (String, String) {
    let mut w = line.split_whitespace();
    let t = w.next().unwrap_or("").to_string();
    let p = w.next().unwrap_or("").to_string();
    (p, t)
}

/// tmpfiles.d fields are whitespace separated; C-style escapes are understood.
fn tmpfiles_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            ' ' => o.push_str("\\x20"),
            '\t' => o.push_str("\\x09"),
            '\\' => o.push_str("\\\\"),
            c => o.push(c),
        }
    }
    o
}

/// uid/gid → names from the tree's passwd/group (names survive renumbering).
struct IdNames {
    users: BTreeMap<u32, String>,
    groups: BTreeMap<u32, String>,
}

impl IdNames {
    fn read(etc: &Path) -> Self {
        let parse = |f: &str| {
            let mut m = BTreeMap::new();
            if let Ok(t) = std::fs::read_to_string(etc.join(f)) {
                for l in t.lines() {
                    let v: Vec<&str> = l.split(':').collect();
                    if v.len() > 2 {
                        if let Ok(id) = v[2].parse::<u32>() {
                            m.entry(id).or_insert_with(|| v[0].to_string());
                        }
                    }
                }
            }
            m
        };
        IdNames {
            users: parse("passwd"),
            groups: parse("group"),
        }
    }
    fn user(&self, id: u32) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
    fn group(&self, id: u32) -> String {
        self.groups
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

/// Verifies the invariants libostree and kiln's users rely on.
pub fn check(tree: &Path) -> Result<()> {
    let must = [
        "usr/etc",
        "usr/lib/os-release",
        "usr/etc/machine-id",
        "usr/etc/fstab",
        VAR_TMPFILES,
    ];
    for m in must {
        if std::fs::symlink_metadata(tree.join(m)).is_err() {
            bail!("layout check: {m} is missing");
        }
    }
    if std::fs::symlink_metadata(tree.join("etc")).is_ok() {
        bail!("layout check: /etc still exists next to /usr/etc");
    }
    if std::fs::metadata(tree.join("usr/etc/machine-id"))?.len() != 0 {
        bail!("layout check: usr/etc/machine-id is not empty");
    }
    for d in ["var", "dev", "proc", "sys", "run", "tmp", "boot", "sysroot"] {
        let p = tree.join(d);
        if std::fs::read_dir(&p)
            .with_context(|| format!("layout check: listing {d}"))?
            .next()
            .is_some()
        {
            bail!("layout check: /{d} is not empty");
        }
    }
    Ok(())
}

fn drop_files_below(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        if std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            drop_files_below(&p)?;
        } else {
            drop_path(&p)?;
        }
    }
    Ok(())
}

/// apt's `extended_states` (the automatically-installed marks) with its stanzas sorted:
/// apt keeps the stanzas of earlier runs in their place and appends new ones, so the file
/// would otherwise depend on the order packages were installed in, not on the marks.
fn sort_extended_states(p: &Path) -> Result<()> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let mut stanzas: Vec<String> = text
        .split("\n\n")
        .map(|s| s.trim_matches('\n'))
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}\n"))
        .collect();
    stanzas.sort();
    let sorted: String = stanzas.iter().map(|s| format!("{s}\n")).collect();
    if sorted != text {
        let mode = std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .with_context(|| format!("stat {}", p.display()))?;
        write_file(p, sorted.as_bytes(), mode)?;
    }
    Ok(())
}

fn drop_path(p: &Path) -> Result<()> {
    super::overlay::remove_any(p)
}

fn make_dir(p: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

fn symlink(target: &str, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at)
        .with_context(|| format!("creating symlink {} -> {target}", at.display()))
}

pub(crate) fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    super::overlay::remove_any(p)?;
    std::fs::write(p, data).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Every path of the tree (relative), for tests and diagnostics.
pub fn list_tree(tree: &Path) -> Result<Vec<PathBuf>> {
    fn rec(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let full = base.join(rel);
        for e in std::fs::read_dir(&full).with_context(|| format!("listing {}", full.display()))? {
            let e = e.with_context(|| format!("listing {}", full.display()))?;
            let r = rel.join(e.file_name());
            out.push(r.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rec(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    rec(tree, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian_like(t: &Path) {
        for d in [
            "etc/ssh",
            "etc/systemd/system",
            "usr/lib/tmpfiles.d",
            "usr/sbin",
            "usr/local/bin",
            "var/lib/dpkg/info",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives",
            "var/log/apt",
            "var/spool",
            "var/tmp",
            "var/opt",
            "opt/vendor",
            "root",
            "home",
            "boot",
            "dev",
            "proc",
            "tmp",
            "run/lock",
        ] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::write(t.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        std::fs::write(t.join("etc/machine-id"), "0123\n").unwrap();
        std::fs::write(t.join("etc/hostname"), "buildhost\n").unwrap();
        std::fs::write(t.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        std::fs::write(t.join("etc/ssh/sshd_config"), "x").unwrap();
        std::fs::write(t.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(t.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        std::fs::write(t.join("usr/sbin/sshd"), "").unwrap();
        std::fs::write(t.join("var/lib/dpkg/status"), "Package: x\n").unwrap();
        std::fs::write(t.join("var/lib/apt/lists/x_InRelease"), "x").unwrap();
        std::fs::write(t.join("var/cache/apt/archives/a.deb"), "x").unwrap();
        std::fs::write(t.join("var/log/dpkg.log"), "x").unwrap();
        std::fs::write(t.join("root/.profile"), "# profile\n").unwrap();
        std::fs::write(t.join("boot/vmlinuz-6"), "k").unwrap();
        std::fs::write(
            t.join("usr/lib/tmpfiles.d/debian.conf"),
            "d /var/spool 0755 - - -\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/run/lock", t.join("var/lock")).unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6", t.join("vmlinuz")).unwrap();
        std::fs::set_permissions(t.join("var/tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
        std::os::unix::fs::chown(t.join("usr/local/bin"), None, Some(50)).unwrap();
    }

    #[test]
    fn extended_states_are_sorted_whatever_order_apt_wrote_them_in() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("extended_states");
        let a = "Package: libb\nArchitecture: amd64\nAuto-Installed: 1\n\n";
        let b = "Package: liba\nArchitecture: amd64\nAuto-Installed: 1\n\n";
        std::fs::write(&p, format!("{a}{b}")).unwrap();
        sort_extended_states(&p).unwrap();
        let one = std::fs::read_to_string(&p).unwrap();
        assert_eq!(one, format!("{b}{a}"));
        std::fs::write(&p, format!("{b}{a}")).unwrap();
        sort_extended_states(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), one);
        sort_extended_states(&d.path().join("absent")).unwrap();
    }

    #[test]
    fn converts_a_debian_like_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        debian_like(t);
        let rep = convert(t, Some("buildhost")).unwrap();
        assert!(rep.tmpfiles_entries > 5);
        let conf = std::fs::read_to_string(t.join(VAR_TMPFILES)).unwrap();
        assert!(conf.contains("d /var/tmp 1777 root root -"), "{conf}");
        assert!(conf.contains("L /var/lock - - - - /run/lock"), "{conf}");
        assert!(
            conf.contains("L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg"),
            "{conf}"
        );
        assert!(conf.contains("d /var/roothome 0700 root root -"), "{conf}");
        assert!(
            conf.contains("d /var/usrlocal/bin 0755 root staff -"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "C /var/roothome/.profile - - - - /usr/share/factory/var/roothome/.profile"
            ),
            "{conf}"
        );
        assert!(!conf.contains("/var/spool "), "declared elsewhere: {conf}");
        assert!(!conf.contains("apt/lists/x"), "{conf}");
        assert!(!conf.contains("dpkg.log"), "{conf}");
        assert!(t.join("usr/lib/sysimage/dpkg/status").is_file());
        assert_eq!(std::fs::read(t.join("usr/etc/machine-id")).unwrap(), b"");
        assert!(!t.join("usr/etc/resolv.conf").exists());
        assert!(!t.join("usr/etc/hostname").exists());
        assert!(!t.join("usr/etc/ssh/ssh_host_ed25519_key").exists());
        assert!(t.join("usr/etc/ssh/sshd_config").exists());
        assert!(t.join(SSH_KEYGEN_UNIT).exists());
        assert!(std::fs::read_to_string(t.join("usr/etc/fstab"))
            .unwrap()
            .contains("LABEL=boot /boot ext4"));
        assert_eq!(
            std::fs::read_link(t.join("root")).unwrap(),
            Path::new("var/roothome")
        );
        assert_eq!(
            std::fs::read_link(t.join("usr/local")).unwrap(),
            Path::new("../var/usrlocal")
        );
        assert_eq!(
            std::fs::read_link(t.join("media")).unwrap(),
            Path::new("run/media")
        );
        assert_eq!(
            std::fs::read_link(t.join("ostree")).unwrap(),
            Path::new("sysroot/ostree")
        );
        assert!(std::fs::symlink_metadata(t.join("vmlinuz")).is_err());
        for e in ["var", "boot", "dev", "proc", "sys", "run", "tmp", "sysroot"] {
            assert_eq!(std::fs::read_dir(t.join(e)).unwrap().count(), 0, "{e}");
        }
        assert!(!t.join("etc").exists());
    }
}
