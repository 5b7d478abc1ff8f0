//! Source -> Ignition spec 3.3.0, through the `ignition-config` crate's types.

use super::source::*;
use ignition_config::v3_3 as ign;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// A transpile error at a key path of the (merged) source.
#[derive(Debug)]
pub struct TErr {
    pub key: KeyPath,
    pub message: String,
}

type R<T> = Result<T, TErr>;

fn terr(key: &KeyPath, m: impl Into<String>) -> TErr {
    TErr {
        key: key.clone(),
        message: m.into(),
    }
}

pub struct Ctx<'a> {
    /// Base directory of `local` references.
    pub files_dir: &'a Path,
}

/// The largest local file a config embeds: the whole config must fit in memory, in an
/// ISO's Ignition area or a cloud's user-data.
pub const LOCAL_MAX: u64 = 64 * 1024 * 1024;

impl Ctx<'_> {
    /// Resolves a `local` reference to a host path inside files_dir after every symlink is
    /// followed ([`crate::validate::path_in_dir`]): a link out of the files directory
    /// (`key -> /etc/shadow`) is refused, never read.
    fn local_path(&self, rel: &str, key: &KeyPath) -> R<PathBuf> {
        crate::validate::path_in_dir(self.files_dir, rel).map_err(|m| {
            terr(
                key,
                format!(
                    "local path {rel:?}: {m} (a local path must name a file inside the files \
                     directory and stay inside it; set the directory with --files-dir)"
                ),
            )
        })
    }

    /// Reads a `local` file: inside files_dir, a regular file (a FIFO, socket or device is
    /// refused without blocking on it), at most [`LOCAL_MAX`] bytes.
    fn read_local(&self, rel: &str, key: &KeyPath) -> R<Vec<u8>> {
        let p = self.local_path(rel, key)?;
        crate::validate::read_regular_file(&p, LOCAL_MAX)
            .map_err(|m| terr(key, format!("cannot read local file {rel:?}: {m}")))
    }

    fn read_local_text(&self, rel: &str, key: &KeyPath) -> R<String> {
        let b = self.read_local(rel, key)?;
        String::from_utf8(b).map_err(|_| terr(key, format!("local file {rel:?} is not UTF-8 text")))
    }
}

/// Percent-encodes everything but unreserved characters and a few that are safe in a
/// data URL's data part.
fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~/:=,@!".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(b);
    e.finish().unwrap_or_default()
}

/// A `data:` URL for `b`; when `allow_gzip`, gzip+base64 if that is shorter. Returns the
/// URL and the compression to declare.
pub fn data_url(b: &[u8], allow_gzip: bool) -> (String, Option<String>) {
    use base64::Engine;
    let plain = format!("data:,{}", percent_encode(b));
    if allow_gzip {
        let gz = format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(gzip(b))
        );
        if gz.len() < plain.len() {
            return (gz, Some("gzip".into()));
        }
    }
    (plain, None)
}

fn check_hash(h: &str, key: &KeyPath) -> R<()> {
    let ok = match h.split_once('-') {
        Some(("sha512", s)) => s.len() == 128,
        Some(("sha256", s)) => s.len() == 64,
        _ => false,
    } && h
        .split_once('-')
        .is_some_and(|(_, s)| s.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(terr(
            key,
            format!("hash {h:?} is not sha512-<128 hex digits> or sha256-<64 hex digits>"),
        ))
    }
}

fn resource(ctx: &Ctx, r: &ResourceSrc, key: &KeyPath, allow_gzip: bool) -> R<ign::Resource> {
    let given: Vec<&str> = [
        r.inline.as_ref().map(|_| "inline"),
        r.local.as_ref().map(|_| "local"),
        r.source.as_ref().map(|_| "source"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        return Err(terr(
            key,
            format!(
                "give exactly one of inline, local or source (found {})",
                if given.is_empty() {
                    "none".to_string()
                } else {
                    given.join(", ")
                }
            ),
        ));
    }
    let mut out = ign::Resource::default();
    if let Some(src) = &r.source {
        out.source = Some(src.clone());
        out.compression = r.compression.clone();
        if let Some(h) = r.verification.as_ref().and_then(|v| v.hash.as_ref()) {
            check_hash(h, &key.k("verification").k("hash"))?;
            out.verification = Some(ign::Verification {
                hash: Some(h.clone()),
            });
        }
        if !r.http_headers.is_empty() {
            out.http_headers = Some(
                r.http_headers
                    .iter()
                    .map(|h| ign::HttpHeadersItem {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
            );
        }
        return Ok(out);
    }
    for (set, what) in [
        (r.compression.is_some(), "compression"),
        (r.verification.is_some(), "verification"),
        (!r.http_headers.is_empty(), "http_headers"),
    ] {
        if set {
            return Err(terr(
                &key.k(what),
                format!("{what} applies to remote sources only (inline and local contents are embedded, compressed when that is smaller)"),
            ));
        }
    }
    let bytes = match (&r.inline, &r.local) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (_, Some(l)) => ctx.read_local(l, &key.k("local"))?,
        _ => unreachable!("checked above"),
    };
    let (url, comp) = data_url(&bytes, allow_gzip);
    out.source = Some(url);
    out.compression = comp;
    Ok(out)
}

fn owner_user(o: &Option<OwnerSrc>) -> Option<ign::NodeUser> {
    o.as_ref().map(|o| ign::NodeUser {
        id: o.id,
        name: o.name.clone(),
    })
}

fn owner_group(o: &Option<OwnerSrc>) -> Option<ign::NodeGroup> {
    o.as_ref().map(|o| ign::NodeGroup {
        id: o.id,
        name: o.name.clone(),
    })
}

fn opt_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

/// systemd's path escaping (`systemd-escape --path`).
pub fn systemd_escape_path(p: &str) -> String {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    let parts: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            let keep = b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && j > 0) || b == b':';
            if keep {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

fn mount_unit(fs: &FilesystemSrc, key: &KeyPath) -> R<ign::Unit> {
    let format = fs
        .format
        .as_deref()
        .ok_or_else(|| terr(&key.k("format"), "with_mount_unit needs a format"))?;
    let dev_unit = format!("{}.device", systemd_escape_path(&fs.device));
    if format == "swap" {
        let name = format!("{}.swap", systemd_escape_path(&fs.device));
        let mut c = format!(
            "[Unit]\nRequires={dev_unit}\nAfter={dev_unit}\n\n[Swap]\nWhat={}\n",
            fs.device
        );
        if !fs.mount_options.is_empty() {
            c.push_str(&format!("Options={}\n", fs.mount_options.join(",")));
        }
        c.push_str("\n[Install]\nRequiredBy=swap.target\n");
        return Ok(ign::Unit {
            contents: Some(c),
            enabled: Some(true),
            ..ign::Unit::new(name)
        });
    }
    let path = fs.path.as_deref().ok_or_else(|| {
        terr(
            &key.k("path"),
            "with_mount_unit needs the mount point in path",
        )
    })?;
    let name = format!("{}.mount", systemd_escape_path(path));
    let fsck = format!("systemd-fsck@{}.service", systemd_escape_path(&fs.device));
    let mut c = format!(
        "# Generated by kiln from storage.filesystems ({})\n[Unit]\nRequires={fsck}\nAfter={fsck}\nBefore=local-fs.target\n\n[Mount]\nWhere={path}\nWhat={}\nType={format}\n",
        fs.device, fs.device
    );
    if !fs.mount_options.is_empty() {
        c.push_str(&format!("Options={}\n", fs.mount_options.join(",")));
    }
    c.push_str("\n[Install]\nRequiredBy=local-fs.target\n");
    Ok(ign::Unit {
        contents: Some(c),
        enabled: Some(true),
        ..ign::Unit::new(name)
    })
}

/// Where a tree's symlink `link` (relative to the tree root) with target `target` points,
/// relative to the tree root, or `None` when it leaves the tree (absolute, or more `..`
/// than it is deep).
fn link_in_tree(link: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<std::ffi::OsString> = link
        .parent()
        .map(|d| {
            d.components()
                .map(|c| c.as_os_str().to_os_string())
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// A local directory copied in. The walk never follows a symlink: the root must lie inside
/// the files directory ([`crate::validate::path_in_dir`]); a symlink inside the tree
/// becomes an Ignition link with the same target, and must point inside the tree (a
/// relative target that stays within it), since a link out of the tree would name a host
/// path outside the files directory (use `[[storage.links]]` for a link to an absolute
/// path on the target). Regular files are read without blocking; FIFOs, sockets and
/// devices are refused.
fn tree(
    ctx: &Ctx,
    t: &TreeSrc,
    key: &KeyPath,
    files: &mut Vec<ign::File>,
    links: &mut Vec<ign::Link>,
) -> R<()> {
    let kl = key.k("local");
    let root = ctx.local_path(&t.local, &kl)?;
    let dest = t.path.clone().unwrap_or_else(|| "/".into());
    if !dest.starts_with('/') {
        return Err(terr(
            &key.k("path"),
            format!("path {dest:?} must be absolute"),
        ));
    }
    let meta = std::fs::symlink_metadata(&root).map_err(|e| {
        terr(
            &kl,
            format!("cannot read local tree {}: {e}", root.display()),
        )
    })?;
    if !meta.is_dir() {
        return Err(terr(&kl, format!("{} is not a directory", root.display())));
    }
    let mut stack = vec![root.clone()];
    let mut entries = Vec::new();
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| terr(&kl, format!("reading {}: {e}", dir.display())))?;
        for e in rd {
            let e = e.map_err(|e| terr(&kl, format!("reading {}: {e}", dir.display())))?;
            let p = e.path();
            // DirEntry::file_type does not follow symlinks.
            let ft = e
                .file_type()
                .map_err(|er| terr(&kl, format!("{}: {er}", p.display())))?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                entries.push((p, ft));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, ft) in entries {
        let rel = p.strip_prefix(&root).unwrap_or(&p);
        let rel_s = rel
            .to_str()
            .ok_or_else(|| terr(&kl, format!("{} is not a UTF-8 path", p.display())))?;
        let target_path = format!("{}/{}", dest.trim_end_matches('/'), rel_s);
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&p).map_err(|e| terr(&kl, format!("{}: {e}", p.display())))?;
            if link_in_tree(rel, &target).is_none() {
                return Err(terr(
                    &kl,
                    format!(
                        "the symlink {rel_s} in the tree points to {}, outside the tree: a \
                         tree's links must stay inside it (for a link to an absolute path on \
                         the target, use [[storage.links]])",
                        target.display()
                    ),
                ));
            }
            let target = target.to_str().ok_or_else(|| {
                terr(
                    &kl,
                    format!("the target of the symlink {rel_s} is not UTF-8"),
                )
            })?;
            links.push(ign::Link {
                target: Some(target.to_string()),
                overwrite: t.overwrite,
                user: owner_user(&t.user),
                group: owner_group(&t.group),
                ..ign::Link::new(target_path)
            });
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let f = crate::validate::open_regular(&p).map_err(|m| terr(&kl, m))?;
            let exec = f
                .metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            drop(f);
            let data =
                crate::validate::read_regular_file(&p, LOCAL_MAX).map_err(|m| terr(&kl, m))?;
            let (url, comp) = data_url(&data, true);
            files.push(ign::File {
                contents: Some(ign::Resource {
                    source: Some(url),
                    compression: comp,
                    ..Default::default()
                }),
                mode: Some(if exec { 0o755 } else { 0o644 }),
                overwrite: t.overwrite,
                user: owner_user(&t.user),
                group: owner_group(&t.group),
                ..ign::File::new(target_path)
            });
        } else {
            return Err(terr(
                &kl,
                format!(
                    "{rel_s} in the tree is {}: a tree holds only files, directories and \
                     symlinks",
                    crate::validate::file_kind(ft)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Values checked at the door: each with the crate's one rule for its kind
// (crate::validate, crate::recipe::validate::unit_name), so a config that Ignition's own
// validation would accept but that fails at first boot (useradd refusing a name, a unit
// written outside /etc/systemd/system, a uid of -1) is refused at build time, located.

fn chk(key: &KeyPath, r: Result<(), String>) -> R<()> {
    r.map_err(|m| terr(key, m))
}

fn chk_owner(o: &Option<OwnerSrc>, key: &KeyPath) -> R<()> {
    if let Some(o) = o {
        if let Some(n) = &o.name {
            chk(&key.k("name"), crate::validate::account_name(n))?;
        }
        if let Some(id) = o.id {
            chk(&key.k("id"), crate::validate::account_id(id))?;
        }
    }
    Ok(())
}

/// An http(s) source or proxy URL goes through [`crate::validate::url`]; other schemes
/// (data, tftp, s3, gs) are left to Ignition's rules in the validator.
fn chk_url(u: &str, key: &KeyPath) -> R<()> {
    let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        chk(key, crate::validate::url(u, crate::validate::Schemes::Http))?;
    }
    Ok(())
}

fn chk_resource(r: &ResourceSrc, key: &KeyPath) -> R<()> {
    if let Some(src) = &r.source {
        chk_url(src, &key.k("source"))?;
    }
    Ok(())
}

fn chk_mib(v: Option<i64>, key: &KeyPath) -> R<()> {
    match v {
        Some(n) if n < 0 => Err(terr(
            key,
            format!("{n} MiB: a size or offset cannot be negative"),
        )),
        _ => Ok(()),
    }
}

/// Checks every value of the source with its kind's rule.
pub fn check_values(s: &Source) -> R<()> {
    use crate::validate::{abs_path, account_id, account_name, kernel_arg, user_kernel_arg};
    let root = KeyPath::default();
    let ki = root.k("ignition");
    if let Some(c) = &s.ignition.config {
        for (i, r) in c.merge.iter().enumerate() {
            chk_resource(r, &ki.k("config").k("merge").i(i))?;
        }
        if let Some(r) = &c.replace {
            chk_resource(r, &ki.k("config").k("replace"))?;
        }
    }
    if let Some(t) = &s.ignition.timeouts {
        for (v, k) in [
            (t.http_response_headers, "http_response_headers"),
            (t.http_total, "http_total"),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(terr(
                    &ki.k("timeouts").k(k),
                    "a timeout cannot be negative (0 means the default)",
                ));
            }
        }
    }
    if let Some(tls) = s.ignition.security.as_ref().and_then(|x| x.tls.as_ref()) {
        for (i, r) in tls.certificate_authorities.iter().enumerate() {
            chk_resource(
                r,
                &ki.k("security").k("tls").k("certificate_authorities").i(i),
            )?;
        }
    }
    if let Some(p) = &s.ignition.proxy {
        let kp = ki.k("proxy");
        for (v, k) in [
            (&p.http_proxy, "http_proxy"),
            (&p.https_proxy, "https_proxy"),
        ] {
            if let Some(u) = v {
                chk(
                    &kp.k(k),
                    crate::validate::url(u, crate::validate::Schemes::Http),
                )?;
            }
        }
    }

    let kp = root.k("passwd");
    for (i, u) in s.passwd.users.iter().enumerate() {
        let ku = kp.k("users").i(i);
        chk(&ku.k("name"), account_name(&u.name))?;
        if let Some(id) = u.uid {
            chk(&ku.k("uid"), account_id(id))?;
        }
        for (j, g) in u.groups.iter().enumerate() {
            chk(&ku.k("groups").i(j), account_name(g))?;
        }
        if let Some(g) = &u.primary_group {
            chk(&ku.k("primary_group"), account_name(g))?;
        }
        if let Some(h) = &u.home_dir {
            chk(&ku.k("home_dir"), abs_path(h))?;
        }
        if let Some(sh) = &u.shell {
            chk(&ku.k("shell"), abs_path(sh))?;
        }
    }
    for (i, g) in s.passwd.groups.iter().enumerate() {
        let kg = kp.k("groups").i(i);
        chk(&kg.k("name"), account_name(&g.name))?;
        if let Some(id) = g.gid {
            chk(&kg.k("gid"), account_id(id))?;
        }
    }

    let ks = root.k("storage");
    let st = &s.storage;
    for (i, f) in st.files.iter().enumerate() {
        let kf = ks.k("files").i(i);
        chk(&kf.k("path"), abs_path(&f.path))?;
        chk_owner(&f.user, &kf.k("user"))?;
        chk_owner(&f.group, &kf.k("group"))?;
        if let Some(c) = &f.contents {
            chk_resource(c, &kf.k("contents"))?;
        }
        for (j, a) in f.append.iter().enumerate() {
            chk_resource(a, &kf.k("append").i(j))?;
        }
    }
    for (i, d) in st.directories.iter().enumerate() {
        let kd = ks.k("directories").i(i);
        chk(&kd.k("path"), abs_path(&d.path))?;
        chk_owner(&d.user, &kd.k("user"))?;
        chk_owner(&d.group, &kd.k("group"))?;
    }
    for (i, l) in st.links.iter().enumerate() {
        let kl = ks.k("links").i(i);
        chk(&kl.k("path"), abs_path(&l.path))?;
        if l.target.is_empty() || l.target.contains('\0') {
            return Err(terr(
                &kl.k("target"),
                "a link needs a target (no NUL bytes)",
            ));
        }
        chk_owner(&l.user, &kl.k("user"))?;
        chk_owner(&l.group, &kl.k("group"))?;
    }
    for (i, t) in st.trees.iter().enumerate() {
        let kt = ks.k("trees").i(i);
        if let Some(p) = &t.path {
            chk(&kt.k("path"), abs_path(p))?;
        }
        chk_owner(&t.user, &kt.k("user"))?;
        chk_owner(&t.group, &kt.k("group"))?;
    }
    for (i, d) in st.disks.iter().enumerate() {
        let kd = ks.k("disks").i(i);
        chk(&kd.k("device"), abs_path(&d.device))?;
        for (j, p) in d.partitions.iter().enumerate() {
            let kp = kd.k("partitions").i(j);
            if let Some(n) = p.number {
                if !(0..=128).contains(&n) {
                    return Err(terr(
                        &kp.k("number"),
                        format!("partition number {n}: GPT numbers partitions 1-128 (0: the next free one)"),
                    ));
                }
            }
            chk_mib(p.size_mib, &kp.k("size_mib"))?;
            chk_mib(p.start_mib, &kp.k("start_mib"))?;
            if let Some(l) = &p.label {
                if l.contains(':') || l.chars().any(char::is_control) {
                    return Err(terr(
                        &kp.k("label"),
                        format!("partition label {l:?} contains ':' or a control character, which sgdisk cannot set"),
                    ));
                }
            }
        }
    }
    for (i, f) in st.filesystems.iter().enumerate() {
        let kf = ks.k("filesystems").i(i);
        chk(&kf.k("device"), abs_path(&f.device))?;
        if let Some(p) = &f.path {
            chk(&kf.k("path"), abs_path(p))?;
        }
    }
    for (i, l) in st.luks.iter().enumerate() {
        let kl = ks.k("luks").i(i);
        chk(&kl.k("device"), abs_path(&l.device))?;
        if let Some(k) = &l.key_file {
            chk_resource(k, &kl.k("key_file"))?;
        }
        if let Some(c) = &l.clevis {
            for (j, t) in c.tang.iter().enumerate() {
                chk(
                    &kl.k("clevis").k("tang").i(j).k("url"),
                    crate::validate::url(&t.url, crate::validate::Schemes::Http),
                )?;
            }
        }
    }
    for (i, r) in st.raid.iter().enumerate() {
        for (j, d) in r.devices.iter().enumerate() {
            chk(&ks.k("raid").i(i).k("devices").i(j), abs_path(d))?;
        }
    }

    let kd = root.k("systemd").k("units");
    for (i, u) in s.systemd.units.iter().enumerate() {
        let ku = kd.i(i);
        chk(&ku.k("name"), crate::recipe::validate::unit_name(&u.name))?;
        for (j, d) in u.dropins.iter().enumerate() {
            let n = &d.name;
            if n.is_empty()
                || n.contains('/')
                || n.starts_with('.')
                || n.chars().any(char::is_control)
            {
                return Err(terr(
                    &ku.k("dropins").i(j).k("name"),
                    format!("drop-in name {n:?} must be a plain file name such as 10-env.conf"),
                ));
            }
        }
    }

    let kk = root.k("kernel_arguments");
    for (i, k) in s.kernel_arguments.should_exist.iter().enumerate() {
        chk(&kk.k("should_exist").i(i), user_kernel_arg(k))?;
    }
    for (i, k) in s.kernel_arguments.should_not_exist.iter().enumerate() {
        chk(&kk.k("should_not_exist").i(i), kernel_arg(k))?;
    }
    Ok(())
}

/// Builds the Ignition config from a merged source.
pub fn transpile(ctx: &Ctx, s: &Source) -> R<ign::Config> {
    check_values(s)?;
    let mut cfg = ign::Config::default();
    let root = KeyPath::default();

    // ignition
    let ki = root.k("ignition");
    if let Some(c) = &s.ignition.config {
        let kc = ki.k("config");
        let mut ic = ign::IgnitionConfig::default();
        let merge: Vec<_> = c
            .merge
            .iter()
            .enumerate()
            .map(|(i, r)| resource(ctx, r, &kc.k("merge").i(i), false))
            .collect::<R<_>>()?;
        ic.merge = opt_vec(merge);
        if let Some(r) = &c.replace {
            ic.replace = Some(resource(ctx, r, &kc.k("replace"), false)?);
        }
        cfg.ignition.config = Some(ic);
    }
    if let Some(t) = &s.ignition.timeouts {
        cfg.ignition.timeouts = Some(ign::Timeouts {
            http_response_headers: t.http_response_headers,
            http_total: t.http_total,
        });
    }
    if let Some(tls) = s.ignition.security.as_ref().and_then(|x| x.tls.as_ref()) {
        let kt = ki.k("security").k("tls").k("certificate_authorities");
        let cas: Vec<_> = tls
            .certificate_authorities
            .iter()
            .enumerate()
            .map(|(i, r)| resource(ctx, r, &kt.i(i), false))
            .collect::<R<_>>()?;
        cfg.ignition.security = Some(ign::Security {
            tls: Some(ign::SecurityTls {
                certificate_authorities: opt_vec(cas),
            }),
        });
    }
    if let Some(p) = &s.ignition.proxy {
        cfg.ignition.proxy = Some(ign::Proxy {
            http_proxy: p.http_proxy.clone(),
            https_proxy: p.https_proxy.clone(),
            no_proxy: opt_vec(p.no_proxy.iter().cloned().map(Some).collect()),
        });
    }

    // passwd
    let kp = root.k("passwd");
    let mut users = Vec::new();
    for (i, u) in s.passwd.users.iter().enumerate() {
        let ku = kp.k("users").i(i);
        let mut keys = u.ssh_authorized_keys.clone();
        for (j, f) in u.ssh_authorized_keys_local.iter().enumerate() {
            let text = ctx.read_local_text(f, &ku.k("ssh_authorized_keys_local").i(j))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        users.push(ign::User {
            uid: u.uid,
            password_hash: u.password_hash.clone(),
            ssh_authorized_keys: opt_vec(keys),
            groups: opt_vec(u.groups.clone()),
            primary_group: u.primary_group.clone(),
            shell: u.shell.clone(),
            home_dir: u.home_dir.clone(),
            gecos: u.gecos.clone(),
            system: u.system,
            no_create_home: u.no_create_home,
            no_user_group: u.no_user_group,
            no_log_init: u.no_log_init,
            should_exist: u.should_exist,
            ..ign::User::new(u.name.clone())
        });
    }
    let groups: Vec<_> = s
        .passwd
        .groups
        .iter()
        .map(|g| ign::Group {
            gid: g.gid,
            password_hash: g.password_hash.clone(),
            system: g.system,
            should_exist: g.should_exist,
            ..ign::Group::new(g.name.clone())
        })
        .collect();
    if !users.is_empty() || !groups.is_empty() {
        cfg.passwd = Some(ign::Passwd {
            users: opt_vec(users),
            groups: opt_vec(groups),
        });
    }

    // storage
    let ks = root.k("storage");
    let st = &s.storage;
    let mut files = Vec::new();
    for (i, f) in st.files.iter().enumerate() {
        let kf = ks.k("files").i(i);
        let contents = f
            .contents
            .as_ref()
            .map(|c| resource(ctx, c, &kf.k("contents"), true))
            .transpose()?;
        let append: Vec<_> = f
            .append
            .iter()
            .enumerate()
            .map(|(j, a)| resource(ctx, a, &kf.k("append").i(j), true))
            .collect::<R<_>>()?;
        files.push(ign::File {
            contents,
            append: opt_vec(append),
            mode: f.mode.map(|m| m.0 as i64),
            overwrite: f.overwrite,
            user: owner_user(&f.user),
            group: owner_group(&f.group),
            ..ign::File::new(f.path.clone())
        });
    }
    let directories: Vec<_> = st
        .directories
        .iter()
        .map(|d| ign::Directory {
            mode: d.mode.map(|m| m.0 as i64),
            overwrite: d.overwrite,
            user: owner_user(&d.user),
            group: owner_group(&d.group),
            ..ign::Directory::new(d.path.clone())
        })
        .collect();
    let mut links: Vec<_> = st
        .links
        .iter()
        .map(|l| ign::Link {
            target: Some(l.target.clone()),
            hard: l.hard,
            overwrite: l.overwrite,
            user: owner_user(&l.user),
            group: owner_group(&l.group),
            ..ign::Link::new(l.path.clone())
        })
        .collect();
    for (i, t) in st.trees.iter().enumerate() {
        tree(ctx, t, &ks.k("trees").i(i), &mut files, &mut links)?;
    }
    let disks: Vec<_> = st
        .disks
        .iter()
        .map(|d| ign::Disk {
            wipe_table: d.wipe_table,
            partitions: opt_vec(
                d.partitions
                    .iter()
                    .map(|p| ign::Partition {
                        label: p.label.clone(),
                        number: p.number,
                        size_mib: p.size_mib,
                        start_mib: p.start_mib,
                        type_guid: p.type_guid.clone(),
                        guid: p.guid.clone(),
                        wipe_partition_entry: p.wipe_partition_entry,
                        should_exist: p.should_exist,
                        resize: p.resize,
                    })
                    .collect(),
            ),
            ..ign::Disk::new(d.device.clone())
        })
        .collect();
    let mut mount_units = Vec::new();
    let mut filesystems = Vec::new();
    for (i, f) in st.filesystems.iter().enumerate() {
        if f.with_mount_unit {
            mount_units.push(mount_unit(f, &ks.k("filesystems").i(i))?);
        }
        filesystems.push(ign::Filesystem {
            format: f.format.clone(),
            path: f.path.clone(),
            label: f.label.clone(),
            uuid: f.uuid.clone(),
            wipe_filesystem: f.wipe_filesystem,
            options: opt_vec(f.options.clone()),
            mount_options: opt_vec(f.mount_options.clone()),
            ..ign::Filesystem::new(f.device.clone())
        });
    }
    let mut luks = Vec::new();
    for (i, l) in st.luks.iter().enumerate() {
        let kl = ks.k("luks").i(i);
        let key_file = l
            .key_file
            .as_ref()
            .map(|k| resource(ctx, k, &kl.k("key_file"), false))
            .transpose()?;
        luks.push(ign::Luks {
            device: Some(l.device.clone()),
            key_file,
            label: l.label.clone(),
            uuid: l.uuid.clone(),
            wipe_volume: l.wipe_volume,
            options: opt_vec(l.options.clone()),
            clevis: l.clevis.as_ref().map(|c| ign::Clevis {
                tpm2: c.tpm2,
                threshold: c.threshold,
                tang: opt_vec(
                    c.tang
                        .iter()
                        .map(|t| ign::Tang {
                            url: Some(t.url.clone()),
                            thumbprint: t.thumbprint.clone(),
                        })
                        .collect(),
                ),
                custom: c.custom.as_ref().map(|cu| ign::ClevisCustom {
                    pin: cu.pin.clone(),
                    config: cu.config.clone(),
                    needs_network: cu.needs_network,
                }),
            }),
            ..ign::Luks::new(l.name.clone())
        });
    }
    let raid: Vec<_> = st
        .raid
        .iter()
        .map(|r| ign::Raid {
            level: Some(r.level.clone()),
            devices: opt_vec(r.devices.clone()),
            spares: r.spares,
            options: opt_vec(r.options.clone()),
            ..ign::Raid::new(r.name.clone())
        })
        .collect();
    let storage = ign::Storage {
        files: opt_vec(files),
        directories: opt_vec(directories),
        links: opt_vec(links),
        disks: opt_vec(disks),
        filesystems: opt_vec(filesystems),
        luks: opt_vec(luks),
        raid: opt_vec(raid),
    };
    if storage != ign::Storage::default() {
        cfg.storage = Some(storage);
    }

    // systemd
    let kd = root.k("systemd").k("units");
    let mut units = Vec::new();
    for (i, u) in s.systemd.units.iter().enumerate() {
        let ku = kd.i(i);
        let contents = match (&u.contents, &u.contents_local) {
            (Some(_), Some(_)) => {
                return Err(terr(
                    &ku.k("contents_local"),
                    "give contents or contents_local, not both",
                ))
            }
            (Some(c), None) => Some(c.clone()),
            (None, Some(l)) => Some(ctx.read_local_text(l, &ku.k("contents_local"))?),
            (None, None) => None,
        };
        let mut dropins = Vec::new();
        for (j, d) in u.dropins.iter().enumerate() {
            let kdj = ku.k("dropins").i(j);
            let c = match (&d.contents, &d.contents_local) {
                (Some(_), Some(_)) => {
                    return Err(terr(
                        &kdj.k("contents_local"),
                        "give contents or contents_local, not both",
                    ))
                }
                (Some(c), None) => Some(c.clone()),
                (None, Some(l)) => Some(ctx.read_local_text(l, &kdj.k("contents_local"))?),
                (None, None) => None,
            };
            dropins.push(ign::Dropin {
                contents: c,
                ..ign::Dropin::new(d.name.clone())
            });
        }
        units.push(ign::Unit {
            contents,
            enabled: u.enabled,
            mask: u.mask,
            dropins: opt_vec(dropins),
            ..ign::Unit::new(u.name.clone())
        });
    }
    for m in mount_units {
        if units.iter().any(|u| u.name == m.name) {
            continue; // the user's own unit of that name wins
        }
        units.push(m);
    }
    if !units.is_empty() {
        cfg.systemd = Some(ign::Systemd { units: Some(units) });
    }

    // kernel arguments
    let k = &s.kernel_arguments;
    if !k.should_exist.is_empty() || !k.should_not_exist.is_empty() {
        cfg.kernel_arguments = Some(ign::KernelArguments {
            should_exist: opt_vec(k.should_exist.clone()),
            should_not_exist: opt_vec(k.should_not_exist.clone()),
        });
    }
    Ok(cfg)
}

/// Serializes without the `null`s the crate's types carry for unset fields.
pub fn to_json(cfg: &ign::Config) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    strip(&mut v);
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(systemd_escape_path("/var/lib/data"), "var-lib-data");
        assert_eq!(
            systemd_escape_path("/dev/disk/by-label/data"),
            "dev-disk-by\\x2dlabel-data"
        );
        assert_eq!(systemd_escape_path("/"), "-");
    }

    #[test]
    fn data_urls_pick_the_shorter() {
        let (u, c) = data_url(b"hello world\n", true);
        assert_eq!(u, "data:,hello%20world%0A");
        assert_eq!(c, None);
        let big = "x".repeat(4096);
        let (u, c) = data_url(big.as_bytes(), true);
        assert!(u.starts_with("data:;base64,"));
        assert_eq!(c.as_deref(), Some("gzip"));
    }
}
