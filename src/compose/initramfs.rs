//! Kernel and initramfs where libostree looks for them:
//! `usr/lib/modules/$kver/{vmlinuz,initramfs.img}`.
//!
//! dracut runs in the tree (chroot, no network) with `--no-hostonly --reproducible` and
//! the `ostree` module plus the recipe's extra modules; `SOURCE_DATE_EPOCH` fixes the
//! timestamps inside the image. dracut writes the archive uncompressed; the host's `zstd`
//! ([`COMPRESS`]) compresses it on every core. A kept image is reused while everything
//! dracut read or looked for is unchanged ([`super::initramfs_cache`]).

use super::initramfs_cache as cache;
use super::{chroot, dracut_trace};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Finds the one kernel in the tree: a `usr/lib/modules/$kver` directory with a matching
/// `boot/vmlinuz-$kver` (or already a `usr/lib/modules/$kver/vmlinuz`).
pub fn find_kernel(tree: &Path) -> Result<String> {
    let mods = tree.join("usr/lib/modules");
    let mut found = Vec::new();
    if mods.is_dir() {
        for e in std::fs::read_dir(&mods).with_context(|| format!("listing {}", mods.display()))? {
            let e = e.with_context(|| format!("listing {}", mods.display()))?;
            let k = e.file_name().to_string_lossy().into_owned();
            if tree.join("boot").join(format!("vmlinuz-{k}")).exists()
                || mods.join(&k).join("vmlinuz").exists()
            {
                found.push(k);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no kernel in the tree (no usr/lib/modules/$kver with boot/vmlinuz-$kver): add a \
             kernel package such as linux-image-cloud-amd64 to the recipe's packages"
        ),
        _ => bail!(
            "more than one kernel in the tree ({}): an OSTree commit carries exactly one",
            found.join(", ")
        ),
    }
}

/// The compressor, run on the host: zstd level 3 on all cores. Its output does not depend
/// on the number of threads (`-T0` and `-T1` give the same bytes; `--single-thread` would
/// not), nor on the time or the file name; the kernel (`CONFIG_RD_ZSTD`) unpacks it. In
/// the record's key with zstd's version, which fixes its bytes. gzip -6 in the tree took
/// 6 s of one core for the base image's 163 MB, zstd -3 0.7 s for a 3 % smaller image.
pub const COMPRESS: &[&str] = &["zstd", "-q", "-f", "-T0", "-3"];

/// Host tools this stage runs (program, Debian package): checked before a compose starts.
pub const HOST_TOOLS: &[(&str, &str)] = &[("zstd", "zstd")];

/// How the initramfs stage went.
#[derive(Debug, Clone)]
pub struct Built {
    pub kver: String,
    /// The image was copied from the cache ([`super::initramfs_cache`]).
    pub reused: bool,
    /// When a record for the same options was kept but not used: the first recorded
    /// input found changed (tree path).
    pub changed: Option<String>,
    /// Why it was (or was not) reused, for the progress line.
    pub note: String,
}

/// What the initramfs stage needs besides the tree.
pub struct Request<'a> {
    pub extra_modules: &'a [String],
    pub kernel_args: &'a [String],
    pub epoch: u64,
    /// The compose cache (`CACHE/initramfs`); `None` builds without it.
    pub cache_dir: Option<&'a Path>,
    /// Scratch space for the trace.
    pub work: &'a Path,
    pub log: &'a Path,
}

/// Builds the initramfs (or reuses a kept one whose inputs are all unchanged) and puts
/// the kernel next to it.
pub fn build(tree: &Path, req: &Request) -> Result<Built> {
    let kver = find_kernel(tree)?;
    let moddir = tree.join("usr/lib/modules").join(&kver);
    let vmlinuz = moddir.join("vmlinuz");
    let boot_k = tree.join("boot").join(format!("vmlinuz-{kver}"));
    if !vmlinuz.exists() {
        super::overlay::remove_any(&vmlinuz)?;
        std::fs::copy(&boot_k, &vmlinuz)
            .with_context(|| format!("copying {} to {}", boot_k.display(), vmlinuz.display()))?;
    }
    if !tree.join("usr/bin/dracut").exists() {
        bail!("dracut is not installed in the tree: add `dracut` to the recipe's packages");
    }
    let mut modules = vec!["ostree".to_string()];
    for m in req.extra_modules {
        if !modules.contains(m) {
            modules.push(m.clone());
        }
    }
    let add = modules.join(" ");
    let out = format!("/usr/lib/modules/{kver}/initramfs.img");
    let argv = [
        "dracut",
        "--no-hostonly",
        "--reproducible",
        "--no-hostonly-cmdline",
        // Compressed afterwards on the host (COMPRESS).
        "--no-compress",
        "--add",
        &add,
        "-f",
        &out,
        &kver,
    ];
    let env = [("SOURCE_DATE_EPOCH", req.epoch.to_string())];
    let zstd = crate::cmd::Cmd::new("zstd")
        .arg("--version")
        .read()
        .context("asking zstd for its version")?;
    let key = cache::key(&argv, &env, req.kernel_args, &[COMPRESS.join(" "), zstd]);
    let store = match req.cache_dir {
        Some(c) => Some(cache::Store::open(c)?),
        None => None,
    };
    let tree =
        std::fs::canonicalize(tree).with_context(|| format!("resolving {}", tree.display()))?;
    let mut why = "no cache".to_string();
    let mut changed = None;
    if let Some(s) = &store {
        match s.lookup(&key, &tree, &out)? {
            cache::Lookup::Reused => {
                return Ok(Built {
                    kver,
                    reused: true,
                    changed: None,
                    note: "initramfs: reused (every file dracut read or looked for is \
                           unchanged)"
                        .into(),
                })
            }
            cache::Lookup::Changed(p) => {
                why = format!("{p} changed since the kept image was built");
                changed = Some(p);
            }
            cache::Lookup::Miss(w) => why = w,
        }
    }
    let trace = req.work.join("dracut.trace");
    let traced = store.is_some() && crate::cmd::have("strace");
    let cmd = if traced {
        chroot::traced(&tree, &argv, &env, dracut_trace::STRACE_ARGS, &trace)
    } else {
        chroot::command(&tree, &argv, &env)
    };
    cmd.run_logged(req.log)
        .with_context(|| format!("building the initramfs with dracut (modules: {add})"))?;
    check_modules(&tree, &out, &modules, req.log)?;
    compress(&tree.join(out.trim_start_matches('/')))?;
    let mut note = format!("initramfs: built ({why})");
    if let (Some(s), true) = (&store, traced) {
        match record(&tree, &trace, &out, &key)? {
            Ok(m) => {
                s.save(&m, &tree.join(out.trim_start_matches('/')))?;
                let _ = std::fs::remove_file(&trace);
            }
            Err(e) => {
                // Kept beside the log for a look at what was not understood.
                let keep = req.log.with_extension("dracut-trace");
                let _ = std::fs::rename(&trace, &keep);
                note.push_str(&format!("; not kept: {e} (trace: {})", keep.display()));
            }
        }
    } else if store.is_some() {
        note.push_str("; not kept: strace is not installed (make deps)");
    }
    // Debian's kernel/initramfs in /boot are not used by OSTree (the layout empties /boot).
    Ok(Built {
        kver,
        reused: false,
        changed,
        note,
    })
}

/// Compresses the archive dracut wrote, in place (temporary name, then renamed).
fn compress(img: &Path) -> Result<()> {
    let tmp = img.with_extension("img.zst-new");
    crate::cmd::Cmd::new(COMPRESS[0])
        .args(&COMPRESS[1..])
        .arg(img)
        .arg("-o")
        .arg(&tmp)
        .run()
        .with_context(|| format!("compressing {}", img.display()))?;
    let mode = std::fs::metadata(img)
        .with_context(|| format!("reading {}", img.display()))?
        .permissions();
    std::fs::set_permissions(&tmp, mode)
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, img).with_context(|| format!("renaming to {}", img.display()))
}

/// The manifest of a traced dracut run, or why it cannot be kept.
fn record(
    tree: &Path,
    trace: &Path,
    out: &str,
    key: &str,
) -> Result<std::result::Result<cache::Manifest, String>> {
    let text = std::fs::read(trace).with_context(|| format!("reading {}", trace.display()))?;
    let text = String::from_utf8_lossy(&text);
    let host = tree.to_string_lossy();
    let touched = match dracut_trace::parse(&text, &host) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    cache::manifest(tree, &touched, out, key)
}

/// dracut skips a module it cannot install with only a warning; a missing module must
/// not go unnoticed. The modules dracut installed are listed in the image's
/// `usr/lib/dracut/modules.txt` (what `lsinitrd -m` prints), read here from the archive
/// dracut wrote uncompressed.
fn check_modules(tree: &Path, out: &str, modules: &[String], log: &Path) -> Result<()> {
    let img = tree.join(out.trim_start_matches('/'));
    let listing = cpio_member(&img, "usr/lib/dracut/modules.txt")?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no usr/lib/dracut/modules.txt: not an image dracut made",
            img.display()
        )
    })?;
    let listing = String::from_utf8_lossy(&listing);
    let have: Vec<&str> = listing.lines().map(str::trim).collect();
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !have.contains(&m.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "dracut left out module(s) {} (see the dracut output in {}); a module usually \
             needs packages in the tree (e.g. ignition needs dracut-network and curl)",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            log.display()
        );
    }
    Ok(())
}

/// The bytes of member `name` of an uncompressed `newc` cpio archive (or of several such
/// archives one after the other, as dracut writes them), `None` when it has none.
pub fn cpio_member(archive: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use std::io::{BufReader, Read};
    let f =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    let mut r = BufReader::new(f);
    let mut pos: u64 = 0;
    let bad = |pos: u64, what: &str| {
        anyhow::anyhow!(
            "{} is not an uncompressed newc cpio archive ({what} at byte {pos})",
            archive.display()
        )
    };
    while len - pos >= 6 {
        let mut magic = [0u8; 6];
        r.read_exact(&mut magic[..4])
            .with_context(|| format!("reading {}", archive.display()))?;
        if magic[..4] == [0u8; 4] {
            // Padding after an archive's trailer (headers start on 4-byte boundaries).
            pos += 4;
            continue;
        }
        r.read_exact(&mut magic[4..])
            .with_context(|| format!("reading {}", archive.display()))?;
        if &magic != b"070701" && &magic != b"070702" {
            return Err(bad(pos, "no cpio header"));
        }
        let mut head = [0u8; 104];
        r.read_exact(&mut head)
            .with_context(|| format!("reading {}", archive.display()))?;
        let field = |i: usize| -> Result<u64> {
            let s =
                std::str::from_utf8(&head[i * 8..i * 8 + 8]).map_err(|_| bad(pos, "bad header"))?;
            u64::from_str_radix(s, 16).map_err(|_| bad(pos, "bad header"))
        };
        let size = field(6)?;
        let namesize = field(11)?;
        if namesize == 0 || namesize > 4096 {
            return Err(bad(pos, "bad name size"));
        }
        let mut n = vec![0u8; namesize as usize];
        r.read_exact(&mut n)
            .with_context(|| format!("reading {}", archive.display()))?;
        let member = &n[..n.len() - 1];
        let after_name = pos + 110 + namesize;
        let data_start = after_name.div_ceil(4) * 4;
        r.seek_relative((data_start - after_name) as i64)
            .with_context(|| format!("reading {}", archive.display()))?;
        let next = (data_start + size).div_ceil(4) * 4;
        if next > len + 3 {
            return Err(bad(pos, "member runs past the end"));
        }
        if member == name.as_bytes() {
            let mut data = vec![0u8; size as usize];
            r.read_exact(&mut data)
                .with_context(|| format!("reading {}", archive.display()))?;
            return Ok(Some(data));
        }
        if next >= len {
            break;
        }
        r.seek_relative((next - data_start) as i64)
            .with_context(|| format!("reading {}", archive.display()))?;
        pos = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc member as cpio writes it.
    fn member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        let fields = [
            1,
            0o100644,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }

    #[test]
    fn reads_a_member_of_concatenated_cpio_archives() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Vec::new();
        member(&mut a, "early/x", b"12345");
        member(&mut a, "TRAILER!!!", b"");
        a.resize(512, 0);
        member(&mut a, ".", b"");
        member(&mut a, "usr/lib/dracut/modules.txt", b"systemd\nostree\n");
        member(&mut a, "usr/bin/y", &[7u8; 1000]);
        member(&mut a, "TRAILER!!!", b"");
        a.resize(a.len().div_ceil(512) * 512, 0);
        let f = d.path().join("img");
        std::fs::write(&f, &a).unwrap();
        assert_eq!(
            cpio_member(&f, "usr/lib/dracut/modules.txt")
                .unwrap()
                .as_deref(),
            Some(&b"systemd\nostree\n"[..])
        );
        assert_eq!(cpio_member(&f, "usr/bin/y").unwrap(), Some(vec![7u8; 1000]));
        assert_eq!(
            cpio_member(&f, "early/x").unwrap().as_deref(),
            Some(&b"12345"[..])
        );
        assert_eq!(cpio_member(&f, "usr/lib/nothing").unwrap(), None);
        // A compressed (or any other) file is refused, not read as an empty archive.
        std::fs::write(&f, b"\x28\xb5\x2f\xfd0000000000").unwrap();
        let e = cpio_member(&f, "x").unwrap_err();
        assert!(
            format!("{e:#}").contains("not an uncompressed newc cpio"),
            "{e:#}"
        );
    }
}
