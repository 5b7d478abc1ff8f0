//! One rule per kind of value that users hand to kiln: kernel arguments, URLs, sizes and
//! paths inside a files directory. Every command that takes such a value (recipe,
//! `deploy`, `kargs`, `image`, `install`, `iso`, Ignition sources) checks it here, at the
//! door, before any work starts. The functions return a plain message; the caller wraps it
//! in an [`InputError`](crate::error::InputError) that names the file, key and line.
//!
//! This module is a leaf: it uses nothing else from the crate.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The longest kernel argument kiln accepts. x86's whole command line is 2048 bytes
/// (`COMMAND_LINE_SIZE`); one argument longer than that can never boot.
pub const KARG_MAX: usize = 2048;

/// Kernel arguments whose value kiln and libostree own. A user setting them would point the
/// boot at another deployment or break the boot entry.
pub const RESERVED_KARGS: &[&str] = &["ostree", "BOOT_IMAGE", "initrd"];

/// One kernel argument (`quiet`, `console=ttyS0,115200n8`, `a.b=c`): non-empty, one word
/// (no whitespace), no control characters, no quotes or backslashes (boot-loader
/// configurations cannot carry them reliably), a non-empty name, at most [`KARG_MAX`]
/// bytes.
pub fn kernel_arg(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("empty kernel argument".into());
    }
    if k.len() > KARG_MAX {
        return Err(format!(
            "kernel argument of {} bytes; the kernel command line holds {KARG_MAX}",
            k.len()
        ));
    }
    if k.chars().any(char::is_whitespace) {
        return Err(format!(
            "kernel argument {k:?} contains whitespace; give one kernel argument per list entry \
             (or per --karg)"
        ));
    }
    if let Some(c) = k.chars().find(|c| c.is_control()) {
        return Err(format!(
            "kernel argument {k:?} contains the control character {c:?}"
        ));
    }
    if let Some(c) = k.chars().find(|c| matches!(c, '\'' | '"' | '\\')) {
        return Err(format!(
            "kernel argument {k:?} contains {c:?}: quotes and backslashes are not supported"
        ));
    }
    if k.starts_with('=') {
        return Err(format!("kernel argument {k:?} has no name before '='"));
    }
    Ok(())
}

/// The name of a kernel argument: `console` for `console=ttyS0`, `quiet` for `quiet`.
pub fn karg_name(k: &str) -> &str {
    k.split_once('=').map_or(k, |(n, _)| n)
}

/// A kernel argument a user may set: [`kernel_arg`], and not one of [`RESERVED_KARGS`].
pub fn user_kernel_arg(k: &str) -> Result<(), String> {
    kernel_arg(k)?;
    let name = karg_name(k);
    if RESERVED_KARGS.contains(&name) {
        return Err(format!(
            "kernel argument {k:?}: {name}= is managed by kiln and libostree and cannot be set by hand"
        ));
    }
    Ok(())
}

/// URL schemes a value may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    /// `http://` and `https://`.
    Http,
    /// `http://`, `https://` and `file:///`.
    HttpOrFile,
}

/// A URL: a supported scheme; for http(s) a host and, if given, a port 1–65535; for file
/// an absolute path; no whitespace, control characters, quotes, `<`, `>`, backslashes or
/// backquotes anywhere.
pub fn url(s: &str, schemes: Schemes) -> Result<(), String> {
    let expected = match schemes {
        Schemes::Http => "http://HOST/PATH or https://HOST/PATH",
        Schemes::HttpOrFile => "http://HOST/PATH, https://HOST/PATH or file:///PATH",
    };
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("{s:?} is not a URL; expected {expected}"));
    };
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'<>\\`".contains(*c))
    {
        return Err(format!(
            "URL {s:?} contains {c:?}, which a URL cannot contain"
        ));
    }
    match scheme {
        "http" | "https" => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let hostport = authority.rsplit('@').next().unwrap_or("");
            let (host, port) = match hostport.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((h, p)) => match p {
                        "" => (h, None),
                        p => match p.strip_prefix(':') {
                            Some(port) => (h, Some(port)),
                            None => return Err(format!("URL {s:?}: junk after ']' in the host")),
                        },
                    },
                    None => {
                        return Err(format!("URL {s:?}: '[' without a closing ']' in the host"))
                    }
                },
                None => match hostport.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hostport, None),
                },
            };
            if host.is_empty() {
                return Err(format!("URL {s:?} has no host name"));
            }
            if let Some(port) = port {
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => {}
                    _ => return Err(format!("URL {s:?} has an invalid port {port:?}")),
                }
            }
            Ok(())
        }
        "file" if schemes == Schemes::HttpOrFile => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "URL {s:?}: a file URL needs an absolute path (file:///srv/mirror)"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "URL {s:?}: scheme {other:?} is not supported; expected {expected}"
        )),
    }
}

/// True for a plain `http://` URL: one whose content anyone on the path can change.
pub fn is_plain_http(s: &str) -> bool {
    s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
}

const MIB: u64 = 1024 * 1024;

/// A size: a byte count with an optional binary unit, `4G`, `4096M`, `512MiB`, `8GB`,
/// `1048576`. Units are powers of 1024. Zero and sizes past `u64` are refused.
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number with an optional unit (K, M, G, T), e.g. 4G"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is too large"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => 1024 * MIB,
        "T" | "TB" | "TIB" => 1024 * 1024 * MIB,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if v == 0 {
        return Err(format!("size {s:?} is zero"));
    }
    Ok(v)
}

/// Resolves `rel`, a path a config names inside its files directory `base`, to a host
/// path that is inside `base` after every symlink is followed. Absolute paths, `..` that
/// leaves `base` and symlinks pointing out of it are refused: a config must never copy a
/// host file (`/etc/shadow`) into an image. The path must exist.
pub fn path_in_dir(base: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Err("empty path".into());
    }
    let relp = Path::new(rel);
    if relp.is_absolute() {
        return Err(format!(
            "{rel:?} is absolute; name a path relative to the files directory {}",
            base.display()
        ));
    }
    if relp.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{rel:?} contains '..'; name a path inside the files directory {}",
            base.display()
        ));
    }
    let real_base = base
        .canonicalize()
        .map_err(|e| format!("files directory {}: {e}", base.display()))?;
    let joined = real_base.join(relp);
    let real = joined
        .canonicalize()
        .map_err(|e| format!("{}: {e}", joined.display()))?;
    if !real.starts_with(&real_base) {
        return Err(format!(
            "{rel:?} leads to {} (through a symlink), outside the files directory {}",
            real.display(),
            real_base.display()
        ));
    }
    Ok(real)
}

/// Reads a regular file of at most `max` bytes without ever blocking on a FIFO or a
/// device: the file is opened with `O_NONBLOCK | O_NOCTTY` and checked with `fstat` before
/// a byte is read. `what` names the file in messages.
pub fn read_regular_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = open_regular(path)?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > max {
        return Err(format!(
            "{} is {len} bytes; at most {max} are accepted",
            path.display()
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if buf.len() as u64 > max {
        return Err(format!(
            "{} grew past {max} bytes while being read",
            path.display()
        ));
    }
    Ok(buf)
}

/// Opens `path` for reading if it is a regular file, refusing FIFOs, sockets and devices
/// without blocking on them (`O_NONBLOCK` for the open, cleared semantics do not matter
/// for regular files).
pub fn open_regular(path: &Path) -> Result<File, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let ft = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .file_type();
    if !ft.is_file() {
        return Err(format!(
            "{} is {}, not a regular file",
            path.display(),
            file_kind(ft)
        ));
    }
    Ok(f)
}

/// "a directory", "a FIFO", … for messages.
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "a regular file"
    }
}

/// An OSTree remote name (`origin`, `fleet-1`): letters, digits, `-`, `_` and `.`, not
/// starting with `-` or `.` (it appears in origins as `NAME:REF`).
pub fn remote_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.starts_with(['-', '.'])
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "remote name {s:?}: use letters, digits, '-', '_' and '.' (it appears in \
             origins as NAME:REF)"
        ));
    }
    Ok(())
}

/// A stateroot (OS) name (`kiln`, `debian-12`): letters, digits, `-`, `_` and `.`, not
/// starting with `-` or `.`; it names a directory under `ostree/deploy`.
pub fn os_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.starts_with(['-', '.'])
        || s.len() > 255
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "invalid stateroot name {s:?}: use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// A FleetLock group (`default`, `workers`, `zone-a.db`): 1–63 letters, digits, `-`, `_`
/// and `.`, not starting with `-` or `.`. The agent sends it, the server keys its
/// semaphore in etcd by it.
pub fn lock_group(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 63
        || s.starts_with(['-', '.'])
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "FleetLock group {s:?}: 1-63 letters, digits, '-', '_' and '.', not starting \
             with '-' or '.'"
        ));
    }
    Ok(())
}

/// A FleetLock client id as a request carries it: 1–256 printable ASCII characters
/// (Zincati and kiln send 32 hex digits; other clients may send other names).
pub fn lock_holder_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "FleetLock client id {s:?}: 1-256 printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// A 64-character hex string: an OSTree commit checksum.
pub fn is_commit_checksum(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An OSTree ref (`kiln/stable/x86_64/base`), libostree's rule: `/`-separated parts,
/// each starting with a letter, digit or `_` and going on with those or `-` and `.`.
pub fn ostree_ref(s: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        let mut b = p.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphanumeric() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
    };
    if s.is_empty() || !s.split('/').all(part_ok) {
        return Err(format!(
            "invalid ref {s:?}: a ref is parts separated by '/', each of letters, digits, \
             '_', '-' and '.' (not starting with '-' or '.'), e.g. kiln/stable/x86_64/base"
        ));
    }
    Ok(())
}

/// A container image a machine follows or kiln publishes to: `ostree-image-signed:T`,
/// `ostree-unverified-image:T` with T one of `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`,
/// `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, or `ostree-unverified-registry:HOST/REPO…`;
/// a bare transport reference (`docker://…`, `oci:…`, `oci-archive:…`) is accepted by
/// [`image_transport`].
pub fn image_ref(s: &str) -> Result<(), String> {
    let t = if let Some(r) = s.strip_prefix("ostree-unverified-registry:") {
        format!("docker://{r}")
    } else if let Some(r) = s
        .strip_prefix("ostree-image-signed:")
        .or_else(|| s.strip_prefix("ostree-unverified-image:"))
    {
        r.to_string()
    } else {
        return Err(format!(
            "{s:?} is not an image reference: use ostree-image-signed:docker://HOST/REPO:TAG \
             (or ostree-unverified-registry:HOST/REPO:TAG when no signature is required)"
        ));
    };
    image_transport(&t).map_err(|m| format!("{s:?}: {m}"))
}

/// A containers-image transport reference: `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`
/// (lower-case repository path of letters, digits, `.`, `_`, `-`, `/`), `oci:DIR[:TAG]`
/// or `oci-archive:FILE[:TAG]` (absolute or relative paths without control characters).
pub fn image_transport(t: &str) -> Result<(), String> {
    if t.len() > 1024 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(
            "an image reference has no spaces or control characters and is at most 1024 bytes"
                .into(),
        );
    }
    if let Some(d) = t.strip_prefix("docker://") {
        let (name, tag) = match d.split_once('@') {
            Some((n, dg)) => {
                let ok = dg.strip_prefix("sha256:").is_some_and(|h| {
                    h.len() == 64
                        && h.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
                if !ok {
                    return Err(format!("{dg:?} is not a sha256:HEX digest"));
                }
                (n, None)
            }
            None => match d.rsplit_once(':') {
                Some((n, tag)) if !tag.contains('/') => (n, Some(tag)),
                _ => (d, None),
            },
        };
        let (host, repo) = name
            .split_once('/')
            .ok_or("docker://HOST/REPO: name the registry host and the repository")?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        let tag_ok = tag.is_none_or(|t| {
            !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !host_ok || !repo_ok || !tag_ok {
            return Err(format!(
                "{d:?} is not HOST[:PORT]/REPO[:TAG]: the repository is lower-case letters, \
                 digits, '.', '_', '-' and '/', the tag letters, digits, '.', '_' and '-'"
            ));
        }
        return Ok(());
    }
    for p in ["oci:", "oci-archive:"] {
        if let Some(rest) = t.strip_prefix(p) {
            if rest.is_empty() || rest.starts_with(':') {
                return Err(format!("{p}PATH[:TAG]: name the path"));
            }
            return Ok(());
        }
    }
    Err(format!(
        "{t:?}: the image transport is one of docker://HOST/REPO:TAG, oci:DIR:TAG, oci-archive:FILE:TAG"
    ))
}

/// What to deploy: a commit checksum, a ref, or `REMOTE:REF`.
pub fn rev(s: &str) -> Result<(), String> {
    if is_commit_checksum(s) {
        return Ok(());
    }
    match s.split_once(':') {
        Some((remote, r)) => {
            remote_name(remote)?;
            ostree_ref(r)
        }
        None => ostree_ref(s),
    }
}

/// A user or group name, as `useradd`/`groupadd` and systemd accept everywhere: 1–32
/// characters, a letter or `_` first, then letters, digits, `_`, `.` and `-`, optionally
/// ending in `$` (Samba machine accounts).
pub fn account_name(s: &str) -> Result<(), String> {
    let body = s.strip_suffix('$').unwrap_or(s);
    let ok = !body.is_empty()
        && s.len() <= 32
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid user or group name: 1-32 characters, a letter or '_' \
             first, then letters, digits, '_', '.' or '-'"
        ))
    }
}

/// A numeric user or group id: 0–4294967294, not 65535 (the 16-bit "nobody" that
/// systemd and many tools treat as invalid) nor 4294967295 (`(uid_t)-1`).
pub fn account_id(n: i64) -> Result<(), String> {
    if !(0..=4_294_967_294).contains(&n) || n == 65535 {
        return Err(format!(
            "{n} is not a valid user or group id: use 0-4294967294, except 65535"
        ));
    }
    Ok(())
}

/// A path on the target machine: absolute, normalized (no empty, `.` or `..`
/// components, no trailing `/`), no control characters.
pub fn abs_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("path {s:?} contains the control character {c:?}"));
    }
    if s != "/"
        && s[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "path {s:?} is not normalized (no '//', '.', '..' or trailing '/')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_groups_and_ids() {
        for ok in ["default", "workers", "zone-a.db", "A_1"] {
            assert!(lock_group(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"g".repeat(64)] {
            assert!(lock_group(bad).is_err(), "{bad:?}");
        }
        assert!(lock_holder_id("0123abcd").is_ok());
        for bad in ["", "a b", "a\n", &"x".repeat(257)] {
            assert!(lock_holder_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kernel_args() {
        for ok in [
            "quiet",
            "console=ttyS0,115200n8",
            "a.b=c",
            "x=",
            "root=LABEL=root",
        ] {
            assert!(kernel_arg(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "a b",
            "a=b\nc",
            "\t",
            "a='b'",
            "a=\"b c\"",
            "x\\y",
            "=v",
            "a\u{7}",
        ] {
            assert!(kernel_arg(bad).is_err(), "{bad:?} accepted");
        }
        assert!(kernel_arg(&"a".repeat(KARG_MAX + 1)).is_err());
        assert!(user_kernel_arg("ostree=/x").is_err());
        assert!(user_kernel_arg("BOOT_IMAGE=/x").is_err());
        assert!(user_kernel_arg("ostreex=1").is_ok());
    }

    #[test]
    fn urls() {
        for ok in [
            "http://deb.debian.org/debian",
            "https://h:8443/x?y#z",
            "http://[::1]:8080/",
            "http://user@host/",
        ] {
            assert!(url(ok, Schemes::Http).is_ok(), "{ok:?} refused");
        }
        assert!(url("file:///srv/m", Schemes::HttpOrFile).is_ok());
        for bad in [
            "",
            "deb.debian.org",
            "ftp://h/",
            "file:///srv",
            "http:///x",
            "http://h:0/",
            "http://h:99999/",
            "http://h x/",
            "http://h/\n",
            "http://[::1/",
            "http://[::1]x/",
        ] {
            assert!(url(bad, Schemes::Http).is_err(), "{bad:?} accepted");
        }
        assert!(url("file://relative", Schemes::HttpOrFile).is_err());
        assert!(is_plain_http("HTTP://h/"));
        assert!(!is_plain_http("https://h/"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size("4G").unwrap(), 4096 * MIB);
        assert_eq!(size("4096M").unwrap(), 4096 * MIB);
        assert_eq!(size("2GiB").unwrap(), 2048 * MIB);
        assert_eq!(size("1048576").unwrap(), MIB);
        for bad in [
            "G",
            "4X",
            "",
            "0",
            "0M",
            "99999999999999999999",
            "17179869184T",
            "-1",
        ] {
            assert!(size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_stay_in_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("files");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("sub/a"), b"a").unwrap();
        std::os::unix::fs::symlink("sub/a", base.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", base.join("up")).unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        assert!(path_in_dir(&base, "sub/a").is_ok());
        assert!(path_in_dir(&base, "inside").is_ok());
        for bad in ["out", "up", "../secret", "/etc/passwd", "", "missing"] {
            assert!(path_in_dir(&base, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular_file(&fifo, 10).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        std::fs::write(d.path().join("big"), vec![0u8; 11]).unwrap();
        assert!(read_regular_file(&d.path().join("big"), 10).is_err());
        assert_eq!(
            read_regular_file(&d.path().join("big"), 11).unwrap().len(),
            11
        );
    }

    #[test]
    fn names_and_refs() {
        for ok in ["kiln", "debian-12", "a_b.c"] {
            assert!(os_name(ok).is_ok(), "{ok:?}");
            assert!(remote_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", "a\nb", "a:b"] {
            assert!(os_name(bad).is_err(), "{bad:?}");
            assert!(remote_name(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "kiln/stable/x86_64/base",
            "x",
            "_a/b-c.d",
            "origin:kiln/x",
            &"a".repeat(64),
            &"0123456789abcdef".repeat(4),
        ] {
            assert!(rev(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "", "/x", "x/", "a//b", "-x", "a/.b", "a b", "a\nb", ":x", "o:", "o:/x", "a:b:c", "x*",
            "../x",
        ] {
            assert!(rev(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accounts_units_and_paths() {
        for ok in ["core", "_apt", "a.b-c", "host$", "A1"] {
            assert!(account_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "1abc",
            "-x",
            "a b",
            "a:b",
            "a/b",
            "$",
            &"a".repeat(33),
            "ü",
        ] {
            assert!(account_name(bad).is_err(), "{bad:?}");
        }
        for ok in [0, 1000, 65534, 65536, 4_294_967_294] {
            assert!(account_id(ok).is_ok(), "{ok}");
        }
        for bad in [-1, 65535, 4_294_967_295, i64::MAX] {
            assert!(account_id(bad).is_err(), "{bad}");
        }
        for ok in ["/", "/var/home/core", "/bin/bash"] {
            assert!(abs_path(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "home", "/a//b", "/a/./b", "/a/../b", "/a/", "/a\nb"] {
            assert!(abs_path(bad).is_err(), "{bad:?}");
        }
    }
}
