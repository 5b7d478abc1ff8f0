//! The initramfs cache: an image is reused only while everything dracut touched when it
//! was built is unchanged in the new tree.
//!
//! dracut runs once under strace ([`super::dracut_trace`]); every path it opened,
//! stat'ed, executed or looked for without finding, and every directory it listed, is
//! then observed in the tree: the symlinks met on the way (path and target), and the
//! object at the end — absent, a file (mode, owner, size, sha256), a directory (mode,
//! owner, and its entries when dracut listed it) or something else. Executed files add
//! what the kernel reads without a system call: a script's `#!` interpreter and an ELF
//! program's loader. The image and that manifest are kept under `CACHE/initramfs/KEY`,
//! KEY a sha256 over dracut's argv and environment, the kernel version (in the argv),
//! the recipe's kernel arguments and kiln's trace options.
//!
//! A later compose with the same KEY observes the same paths in its own tree: all equal →
//! the image is copied in; any difference → dracut runs again and its record replaces the
//! old one. `/proc`, `/sys` and `/dev` (the chroot's virtual file systems), dracut's
//! temporary directory and the output itself are not inputs. A run that wrote anywhere
//! else in the tree, or a trace that could not be fully understood, is not kept: the next
//! compose runs dracut again rather than trust a partial record.

use super::cachelock::CacheLock;
use super::dracut_trace::Touched;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FORMAT: &str = "kiln-initramfs-2";
/// Records kept (least recently used beyond this are removed).
const KEEP: usize = 4;

/// What is at the end of a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum State {
    Missing,
    /// Under `/proc`, `/sys`, `/dev`, dracut's temporary directory, or the output.
    NotAnInput,
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        sha256: String,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        /// `TYPE NAME` per entry, sorted, when dracut listed the directory.
        entries: Option<Vec<String>>,
    },
    Other {
        mode: u32,
        rdev: u64,
    },
}

/// One path as dracut saw it: the symlinks followed (path, target) and the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub links: Vec<(String, String)>,
    pub state: State,
}

/// A kept initramfs's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub key: String,
    pub image_mode: u32,
    pub image_sha256: String,
    /// `(path, listed)` → what was there.
    pub inputs: BTreeMap<String, (bool, Observation)>,
}

/// The key of a dracut run: everything about it that is not a file in the tree.
/// `post` names what turns dracut's output into the image (the compressor and its
/// version).
pub fn key(
    argv: &[&str],
    env: &[(&str, String)],
    kernel_args: &[String],
    post: &[String],
) -> String {
    let v = serde_json::json!({
        "format": FORMAT,
        "argv": argv,
        "env": env,
        "kernel-args": kernel_args,
        "post": post,
        "trace": super::dracut_trace::STRACE_ARGS,
    });
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// Paths that are never inputs: the chroot's virtual file systems, dracut's temporary
/// directory, the output image.
struct Excluded<'a> {
    out: &'a str,
}

impl Excluded<'_> {
    fn covers(&self, p: &str) -> bool {
        let under = |d: &str| p == d || p.starts_with(&format!("{d}/"));
        under("/proc")
            || under("/sys")
            || under("/dev")
            || p.starts_with("/var/tmp/dracut.")
            || p == self.out
    }
}

/// Follows `path` inside `tree` the way the kernel would with the tree as root (symlinks
/// resolved against the tree, `..` never above it). Returns the observation and the real
/// path reached.
pub fn observe(tree: &Path, path: &str, list: bool) -> Result<(Observation, String)> {
    let mut links = Vec::new();
    let mut real: Vec<String> = Vec::new();
    let mut todo: std::collections::VecDeque<String> = path.split('/').map(String::from).collect();
    let mut hops = 0;
    let join = |r: &[String]| format!("/{}", r.join("/"));
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                real.pop();
                continue;
            }
            _ => {}
        }
        real.push(c);
        let here = join(&real);
        let md = match std::fs::symlink_metadata(tree.join(&here[1..])) {
            Ok(m) => m,
            Err(e) if gone(&e) => return Ok((missing(links), here)),
            Err(e) => return Err(e).with_context(|| format!("looking at {here} in the tree")),
        };
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Ok((missing(links), here));
            }
            let target = std::fs::read_link(tree.join(&here[1..]))
                .with_context(|| format!("reading the link {here}"))?;
            let target = target.to_string_lossy().into_owned();
            links.push((here, target.clone()));
            real.pop();
            if target.starts_with('/') {
                real.clear();
            }
            for (i, t) in target.split('/').enumerate() {
                todo.insert(i, t.to_string());
            }
        } else if !todo.iter().all(|c| c.is_empty() || c == ".") && !md.is_dir() {
            // A later component under a non-directory: ENOTDIR.
            return Ok((missing(links), here));
        }
    }
    let here = join(&real);
    let md = std::fs::symlink_metadata(tree.join(&here[1..]))
        .with_context(|| format!("looking at {here} in the tree"))?;
    let state = if md.is_file() {
        State::File {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.len(),
            sha256: sha256_file(&tree.join(&here[1..]))?,
        }
    } else if md.is_dir() {
        State::Dir {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            entries: if list {
                Some(entries(&tree.join(&here[1..]))?)
            } else {
                None
            },
        }
    } else {
        State::Other {
            mode: md.mode(),
            rdev: md.rdev(),
        }
    };
    Ok((Observation { links, state }, here))
}

fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn missing(links: Vec<(String, String)>) -> Observation {
    Observation {
        links,
        state: State::Missing,
    }
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let t = e
            .file_type()
            .with_context(|| format!("listing {}", dir.display()))?;
        let k = if t.is_dir() {
            'd'
        } else if t.is_symlink() {
            'l'
        } else if t.is_file() {
            'f'
        } else {
            'o'
        };
        v.push(format!("{k} {}", e.file_name().to_string_lossy()));
    }
    v.sort();
    Ok(v)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// What the kernel reads to start `file` without a system call strace sees: a script's
/// `#!` interpreter, an ELF program's loader (`PT_INTERP`).
fn implicit_inputs(file: &Path) -> Vec<String> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    head.truncate(n);
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let s = String::from_utf8_lossy(line);
        return s
            .split_whitespace()
            .next()
            .map(String::from)
            .into_iter()
            .collect();
    }
    elf_interp(&head).into_iter().collect()
}

/// `PT_INTERP` of a little-endian ELF64 program whose program headers are in `head`.
fn elf_interp(head: &[u8]) -> Option<String> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16at = |o: usize| Some(u16::from_le_bytes(head.get(o..o + 2)?.try_into().ok()?));
    let u64at = |o: usize| Some(u64::from_le_bytes(head.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64at(0x20)? as usize;
    let phentsize = u16at(0x36)? as usize;
    for i in 0..u16at(0x38)? as usize {
        let ph = phoff + i * phentsize;
        if head.get(ph..ph + 4)? == 3u32.to_le_bytes() {
            let off = u64at(ph + 8)? as usize;
            let len = u64at(ph + 0x20)? as usize;
            let s = head.get(off..off + len)?;
            return Some(String::from_utf8_lossy(s.split(|b| *b == 0).next()?).into_owned());
        }
    }
    None
}

/// Builds the manifest of a finished run, or says why the run cannot be kept.
pub fn manifest(
    tree: &Path,
    touched: &Touched,
    out: &str,
    key: &str,
) -> Result<std::result::Result<Manifest, String>> {
    let ex = Excluded { out };
    if !touched.executed.iter().any(|p| p.ends_with("/dracut")) {
        return Ok(Err("the trace shows no dracut run".into()));
    }
    for w in &touched.written {
        if ex.covers(w) {
            continue;
        }
        let (_, real) = observe(tree, w, false)?;
        if !ex.covers(&real) {
            return Ok(Err(format!("dracut wrote {w} in the tree")));
        }
    }
    let mut inputs = BTreeMap::new();
    let mut todo: Vec<(String, bool)> = touched
        .paths
        .iter()
        .map(|p| (p.clone(), touched.listed.contains(p)))
        .collect();
    let mut executed: Vec<String> = touched.executed.iter().cloned().collect();
    while let Some(e) = executed.pop() {
        let (o, real) = observe(tree, &e, false)?;
        if let State::File { .. } = o.state {
            for i in implicit_inputs(&tree.join(&real[1..])) {
                if !todo.iter().any(|(p, _)| *p == i) {
                    todo.push((i.clone(), false));
                    executed.push(i);
                }
            }
        }
    }
    for (p, list) in todo {
        if ex.covers(&p) {
            continue;
        }
        let (mut o, real) = observe(tree, &p, list)?;
        if ex.covers(&real) {
            o.state = State::NotAnInput;
        }
        inputs.insert(p, (list, o));
    }
    let img = tree.join(out.trim_start_matches('/'));
    let md = std::fs::metadata(&img).with_context(|| format!("reading {}", img.display()))?;
    Ok(Ok(Manifest {
        format: FORMAT.into(),
        key: key.into(),
        image_mode: md.mode() & 0o7777,
        image_sha256: sha256_file(&img)?,
        inputs,
    }))
}

/// The first input that is not as recorded, or `None` when all are.
pub fn first_change(tree: &Path, m: &Manifest, out: &str) -> Result<Option<String>> {
    let ex = Excluded { out };
    for (p, (list, rec)) in &m.inputs {
        let (mut o, real) = observe(tree, p, *list)?;
        if ex.covers(&real) {
            o.state = State::NotAnInput;
        }
        if o != *rec {
            return Ok(Some(p.clone()));
        }
    }
    Ok(None)
}

/// `CACHE/initramfs`.
pub struct Store {
    dir: PathBuf,
    _lock: CacheLock,
}

/// What a lookup found.
pub enum Lookup {
    /// The image was copied to the output.
    Reused,
    /// A record was kept, but this input (tree path) is not as recorded.
    Changed(String),
    /// No usable record: why.
    Miss(String),
}

impl Store {
    /// Opens (creating) the store and locks it for this compose.
    pub fn open(cache_dir: &Path) -> Result<Store> {
        let dir = cache_dir.join("initramfs");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = CacheLock::acquire(&dir.join(".lock"))?;
        Ok(Store { dir, _lock: lock })
    }

    /// Copies the kept image for `key` to `out` (tree path) when every input is as
    /// recorded.
    pub fn lookup(&self, key: &str, tree: &Path, out: &str) -> Result<Lookup> {
        let entry = self.dir.join(key);
        let mpath = entry.join("manifest.json");
        let Ok(text) = std::fs::read(&mpath) else {
            return Ok(Lookup::Miss(
                "no initramfs built with these options yet".into(),
            ));
        };
        let m: Manifest = match serde_json::from_slice(&text) {
            Ok(m) => m,
            Err(_) => return Ok(Lookup::Miss("the kept record is unreadable".into())),
        };
        if m.format != FORMAT || m.key != key {
            return Ok(Lookup::Miss("the kept record is of another format".into()));
        }
        if let Some(p) = first_change(tree, &m, out)? {
            return Ok(Lookup::Changed(p));
        }
        let dst = tree.join(out.trim_start_matches('/'));
        let src = entry.join("initramfs.img");
        super::overlay::remove_any(&dst)?;
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(m.image_mode))
            .with_context(|| format!("setting the mode of {}", dst.display()))?;
        if sha256_file(&dst)? != m.image_sha256 {
            std::fs::remove_file(&dst).with_context(|| format!("removing {}", dst.display()))?;
            return Ok(Lookup::Miss(
                "the kept image does not match its record".into(),
            ));
        }
        let _ = filetime_touch(&entry);
        Ok(Lookup::Reused)
    }

    /// Keeps `image` (a file in the tree) with its manifest, replacing the record for the
    /// same key; written under a temporary name and renamed, so an interrupted compose
    /// leaves no half record.
    pub fn save(&self, m: &Manifest, image: &Path) -> Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.dir)
            .with_context(|| format!("creating a temporary dir in {}", self.dir.display()))?;
        std::fs::copy(image, tmp.path().join("initramfs.img"))
            .with_context(|| format!("keeping {}", image.display()))?;
        let text = serde_json::to_vec(m).context("encoding the initramfs record")?;
        std::fs::write(tmp.path().join("manifest.json"), text)
            .context("writing the initramfs record")?;
        let dst = self.dir.join(&m.key);
        if dst.exists() {
            let old = self.dir.join(format!(".old-{}", m.key));
            super::overlay::remove_any(&old)?;
            std::fs::rename(&dst, &old).with_context(|| format!("moving {}", dst.display()))?;
            super::overlay::remove_any(&old)?;
        }
        let kept = tmp.keep();
        std::fs::rename(&kept, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
        self.prune()
    }

    fn prune(&self) -> Result<()> {
        let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("listing {}", self.dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        v.sort();
        v.reverse();
        for (_, old) in v.into_iter().skip(KEEP) {
            super::overlay::remove_any(&old)?;
        }
        Ok(())
    }
}

/// Marks a record as just used (its directory's mtime orders pruning).
fn filetime_touch(p: &Path) -> Result<()> {
    let now = std::time::SystemTime::now();
    std::fs::File::open(p)
        .and_then(|f| f.set_modified(now))
        .with_context(|| format!("touching {}", p.display()))
}

/// Fails unless `m` matches `tree` (tests use it to show a record is still valid).
pub fn check(tree: &Path, m: &Manifest, out: &str) -> Result<()> {
    if let Some(p) = first_change(tree, m, out)? {
        bail!("{p} changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn observes_through_links_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("usr/lib/x")).unwrap();
        std::fs::write(t.join("usr/lib/x/a"), "A").unwrap();
        symlink("usr/lib", t.join("lib")).unwrap();
        // An absolute link resolves in the tree, never on the host.
        symlink("/usr/lib/x/a", t.join("usr/lib/abs")).unwrap();
        let (o, real) = observe(t, "/lib/abs", false).unwrap();
        assert_eq!(real, "/usr/lib/x/a");
        assert_eq!(
            o.links,
            [
                ("/lib".to_string(), "usr/lib".to_string()),
                ("/usr/lib/abs".to_string(), "/usr/lib/x/a".to_string())
            ]
        );
        assert!(matches!(o.state, State::File { size: 1, .. }));
        let (o, _) = observe(t, "/lib/x/a/under-a-file", false).unwrap();
        assert_eq!(o.state, State::Missing);
        let (o, _) = observe(t, "/../../lib/nope", false).unwrap();
        assert_eq!(o.state, State::Missing);
        let (o, _) = observe(t, "/usr/lib/x", true).unwrap();
        match o.state {
            State::Dir { entries, .. } => assert_eq!(entries.unwrap(), ["f a"]),
            s => panic!("{s:?}"),
        }
        symlink("loop", t.join("loop")).unwrap();
        assert_eq!(observe(t, "/loop", false).unwrap().0.state, State::Missing);
    }

    #[test]
    fn a_record_notices_content_absence_listing_and_link_changes() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("usr/lib/dracut/modules.d/90x")).unwrap();
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/lib/dracut/modules.d/90x/module-setup.sh"), "a").unwrap();
        std::fs::write(t.join("usr/bin/dracut"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(t.join("boot")).unwrap();
        std::fs::write(t.join("boot/out.img"), "IMG").unwrap();
        let mut touched = Touched::default();
        for p in [
            "/usr/lib/dracut/modules.d/90x/module-setup.sh",
            "/usr/sbin/cryptsetup",
            "/usr/lib/dracut/modules.d",
            "/proc/cmdline",
        ] {
            touched.paths.insert(p.into());
        }
        touched.listed.insert("/usr/lib/dracut/modules.d".into());
        touched.executed.insert("/usr/bin/dracut".into());
        touched.written.insert("/boot/out.img".into());
        let m = manifest(t, &touched, "/boot/out.img", "k")
            .unwrap()
            .unwrap();
        // The interpreter of the executed script is an input too.
        assert!(m.inputs.contains_key("/bin/sh"), "{:?}", m.inputs.keys());
        assert!(!m.inputs.contains_key("/proc/cmdline"));
        check(t, &m, "/boot/out.img").unwrap();
        let changed = |f: &dyn Fn()| {
            f();
            let r = first_change(t, &m, "/boot/out.img").unwrap();
            assert!(r.is_some());
            r.unwrap()
        };
        let ms = t.join("usr/lib/dracut/modules.d/90x/module-setup.sh");
        assert_eq!(
            changed(&|| std::fs::write(&ms, "b").unwrap()),
            "/usr/lib/dracut/modules.d/90x/module-setup.sh"
        );
        std::fs::write(&ms, "a").unwrap();
        check(t, &m, "/boot/out.img").unwrap();
        std::fs::create_dir_all(t.join("usr/sbin")).unwrap();
        let cs = t.join("usr/sbin/cryptsetup");
        assert_eq!(
            changed(&|| std::fs::write(&cs, "").unwrap()),
            "/usr/sbin/cryptsetup"
        );
        std::fs::remove_file(&cs).unwrap();
        let nd = t.join("usr/lib/dracut/modules.d/95new");
        assert_eq!(
            changed(&|| std::fs::create_dir(&nd).unwrap()),
            "/usr/lib/dracut/modules.d"
        );
        std::fs::remove_dir(&nd).unwrap();
        check(t, &m, "/boot/out.img").unwrap();
        // A write elsewhere in the tree means the run cannot be kept.
        touched.written.insert("/etc/ld.so.cache".into());
        let e = manifest(t, &touched, "/boot/out.img", "k").unwrap();
        assert!(e.unwrap_err().contains("/etc/ld.so.cache"));
    }

    #[test]
    fn store_saves_reuses_and_refuses_a_damaged_image() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::write(t.join("usr/bin/dracut"), "x").unwrap();
        std::fs::write(t.join("out.img"), "IMG").unwrap();
        let mut touched = Touched::default();
        touched.executed.insert("/usr/bin/dracut".into());
        touched.paths.insert("/usr/bin/dracut".into());
        let m = manifest(&t, &touched, "/out.img", "k1").unwrap().unwrap();
        let s = Store::open(&d.path().join("cache")).unwrap();
        s.save(&m, &t.join("out.img")).unwrap();
        std::fs::remove_file(t.join("out.img")).unwrap();
        assert!(matches!(
            s.lookup("k1", &t, "/out.img").unwrap(),
            Lookup::Reused
        ));
        assert_eq!(std::fs::read(t.join("out.img")).unwrap(), b"IMG");
        assert!(matches!(
            s.lookup("k2", &t, "/out.img").unwrap(),
            Lookup::Miss(_)
        ));
        std::fs::write(t.join("usr/bin/dracut"), "y").unwrap();
        match s.lookup("k1", &t, "/out.img").unwrap() {
            Lookup::Changed(p) => assert_eq!(p, "/usr/bin/dracut"),
            Lookup::Reused => panic!("reused a stale image"),
            Lookup::Miss(why) => panic!("{why}"),
        }
        std::fs::write(t.join("usr/bin/dracut"), "x").unwrap();
        std::fs::write(d.path().join("cache/initramfs/k1/initramfs.img"), "BAD").unwrap();
        assert!(matches!(
            s.lookup("k1", &t, "/out.img").unwrap(),
            Lookup::Miss(_)
        ));
        assert!(!t.join("out.img").exists());
    }
}
