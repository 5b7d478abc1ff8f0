//! The GRUB menu of a sysroot: kiln is libostree's `grub2` config generator.
//!
//! Every sysroot kiln creates has `sysroot.bootloader=grub2`. On every deployment change
//! that needs a new boot version (deploy, upgrade, rollback, cleanup, kargs, a staged
//! deployment finalized at shutdown) libostree 2022.7 writes the new boot entries to
//! `boot/loader.N/entries/`, runs `$OSTREE_GRUB2_EXEC -o boot/loader.N/grub.cfg` with
//! `_OSTREE_GRUB2_BOOTVERSION=N` (no chroot: the program is not `grub-mkconfig`), fsyncs
//! the file and only then swaps the `boot/loader` symlink. So the menu GRUB reads,
//! `/loader/grub.cfg` on the boot partition, changes in the same atomic swap as the
//! entries. kiln sets `OSTREE_GRUB2_EXEC` to its own binary ([`set_generator_env`]) for
//! every libostree write it makes, in process or through the `ostree` CLI; `main`
//! recognises libostree's invocation and runs [`generate`].
//!
//! The menu: one entry per BLS entry, default (highest `version`) first, the rollback
//! second; `linux`/`initrd` on BIOS (i386-pc), `linuxefi`/`initrdefi` on UEFI, where the
//! signed GRUB checks the kernel through shim under Secure Boot and starts it through its
//! EFI stub (which hands the firmware's TPM event log to the kernel) with or without it. `fallback=1`: when
//! the default entry's kernel is refused (not signed by a trusted key) or fails to load,
//! GRUB boots the rollback entry. Kernel arguments stay unquoted where they hold a GRUB
//! variable (`$ignition_firstboot`, expanded by GRUB at boot).
//!
//! Sysroots made by older kiln (`sysroot.bootloader=syslinux`, read by `syslinux_source`)
//! keep that backend: kiln never switches an existing sysroot (docs/updating.md).

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable libostree's grub2 backend runs as the config generator.
pub const EXEC_ENV: &str = "OSTREE_GRUB2_EXEC";
/// The boot version libostree passes to the generator.
pub const BOOTVERSION_ENV: &str = "_OSTREE_GRUB2_BOOTVERSION";
/// Seconds GRUB shows the menu before it boots the default entry (Fedora CoreOS: 1).
pub const TIMEOUT_SECS: u32 = 1;

/// One BLS entry (`boot/loader.N/entries/*.conf`), the keys the menu needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    pub file: String,
    pub title: String,
    pub version: String,
    pub linux: String,
    pub initrd: Option<String>,
    pub options: String,
    /// The deployment's boot-counting key ([`super::bootcount::key`]), when known.
    pub key: Option<String>,
}

/// Parses one BLS entry the way libostree's `OstreeBootconfigParser` does: a key, then
/// whitespace, then the rest of the line.
pub fn parse_entry(file: &str, text: &str) -> Result<BlsEntry> {
    let mut e = BlsEntry {
        file: file.to_string(),
        title: String::new(),
        version: String::new(),
        linux: String::new(),
        initrd: None,
        options: String::new(),
        key: None,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        match k {
            "title" => e.title = v.to_string(),
            "version" => e.version = v.to_string(),
            "linux" => e.linux = v.to_string(),
            "initrd" => e.initrd = Some(v.to_string()),
            "options" => e.options = v.to_string(),
            _ => {}
        }
    }
    if e.linux.is_empty() {
        bail!("boot entry {file} has no \"linux\" line");
    }
    if e.title.is_empty() {
        e.title = "(Untitled)".into();
    }
    Ok(e)
}

/// The entries of one boot version's `entries/` directory, default first (libostree's
/// order: `version` descending).
pub fn read_entries(dir: &Path) -> Result<Vec<BlsEntry>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") {
            continue;
        }
        let text = std::fs::read_to_string(e.path())
            .with_context(|| format!("reading {}", e.path().display()))?;
        v.push(parse_entry(&name, &text)?);
    }
    v.sort_by(|a, b| version_order(&b.version, &a.version).then(a.file.cmp(&b.file)));
    Ok(v)
}

/// Numeric versions (what libostree writes) compare as numbers, others as strings.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// A word GRUB's script parser takes literally: single-quoted unless plain.
fn grub_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._,:/=+@%-_".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A kernel argument: literal, except that `$name` expands (double quotes keep GRUB's
/// metacharacters literal and expand variables). Kernel arguments never hold quotes or
/// backslashes ([`crate::validate::kernel_arg`]).
fn grub_karg(k: &str) -> String {
    if k.contains('$') {
        let plain = |c: char| c.is_ascii_alphanumeric() || "._,:/=+@%-_$".contains(c);
        if k.chars().all(plain) {
            k.to_string()
        } else {
            format!("\"{k}\"")
        }
    } else {
        grub_word(k)
    }
}

/// The menu for `entries` (default first).
pub fn render(bootversion: Option<u32>, entries: &[BlsEntry]) -> String {
    let mut s = String::new();
    s.push_str("# Written by kiln as libostree's grub2 config generator");
    if let Some(v) = bootversion {
        s.push_str(&format!(" for boot version {v}"));
    }
    s.push_str(
        ".\n# Rewritten with every deployment change; do not edit. Read by /grub/grub.cfg.\n",
    );
    s.push_str(&format!(
        "set default=0\nset timeout={TIMEOUT_SECS}\nset timeout_style=menu\n"
    ));
    if entries.len() > 1 {
        // The default entry's kernel refused (Secure Boot) or missing: boot the rollback.
        s.push_str("set fallback=1\n");
    }
    let counted = entries.len() > 1;
    if let (true, Some(k)) = (counted, &entries[0].key) {
        s.push_str(&super::bootcount::grub_script_head(k));
    }
    for (i, e) in entries.iter().enumerate() {
        s.push_str(&format!(
            "menuentry {} --id ostree-{i} {{\n",
            grub_word(&e.title)
        ));
        if let (true, 0, Some(k)) = (counted, i, &e.key) {
            s.push_str(&super::bootcount::grub_script_entry(k));
        }
        let mut linux = grub_word(&e.linux);
        for a in e.options.split_whitespace() {
            linux.push(' ');
            linux.push_str(&grub_karg(a));
        }
        if let (true, 0, Some(_)) = (counted, i, &e.key) {
            linux.push_str(&format!(" ${}", super::bootcount::VAR_TRIAL_KARGS));
        }
        // UEFI: `linuxefi` starts the kernel through its EFI stub (the EFI handover), with
        // Secure Boot on or off, so the stub copies the firmware's TPM event log for the
        // kernel and boots the same way in both modes. BIOS GRUB has only `linux`.
        // `initrdefi` after a refused `linuxefi` aborts GRUB (bookworm's 2.06) instead of
        // letting the entry fail over to the fallback entry: only after a loaded kernel.
        s.push_str("  if [ \"$grub_platform\" = efi ]; then\n");
        match &e.initrd {
            Some(i) => s.push_str(&format!(
                "    if linuxefi {linux}; then\n      initrdefi {}\n    fi\n",
                grub_word(i)
            )),
            None => s.push_str(&format!("    linuxefi {linux}\n")),
        }
        s.push_str("  else\n");
        s.push_str(&format!("    linux {linux}\n"));
        if let Some(i) = &e.initrd {
            s.push_str(&format!("    initrd {}\n", grub_word(i)));
        }
        s.push_str("  fi\n}\n");
    }
    s
}

/// Writes the menu for the entries beside `out` (`boot/loader.N/grub.cfg` →
/// `boot/loader.N/entries`) to `out`, synced. What libostree's invocation runs.
pub fn generate(out: &Path) -> Result<()> {
    let dir = out
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", out.display()))?;
    let mut entries = read_entries(&dir.join("entries"))?;
    // boot/loader.N/grub.cfg: the sysroot is three levels up.
    if let Some(sysroot) = dir.parent().and_then(Path::parent) {
        for e in &mut entries {
            e.key = deployment_key(sysroot, &e.options);
        }
    }
    let bootversion = std::env::var(BOOTVERSION_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    super::write_atomic(out, render(bootversion, &entries).as_bytes())
}

/// The boot-counting key of the deployment a boot entry boots: its `ostree=` bootlink
/// (`/ostree/boot.N/OS/BOOTCSUM/SERIAL`, which libostree swaps into place before it runs
/// the generator) points at `deploy/OS/deploy/COMMIT.DEPLOYSERIAL`. `None` when it does not
/// resolve (the entry is then never counted).
pub fn deployment_key(sysroot: &Path, options: &str) -> Option<String> {
    let link = options
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))?;
    let target = std::fs::read_link(sysroot.join(link.trim_start_matches('/'))).ok()?;
    let name = target.file_name()?.to_str()?;
    let (commit, serial) = name.split_once('.')?;
    if !super::is_checksum(commit) {
        return None;
    }
    Some(super::bootcount::key(commit, serial.parse().ok()?))
}

/// When the process was started the way libostree's grub2 backend starts its generator
/// (`PROGRAM -o PATH`, with `_OSTREE_GRUB2_BOOTVERSION` set), the arguments of the
/// hidden `kiln grub2-generate` command that does the work.
pub fn libostree_invocation(args: &[OsString]) -> Option<Vec<OsString>> {
    if std::env::var_os(BOOTVERSION_ENV).is_none() || args.len() != 3 || args[1] != "-o" {
        return None;
    }
    Some(vec![
        args[0].clone(),
        "grub2-generate".into(),
        "-o".into(),
        args[2].clone(),
    ])
}

/// The kiln binary libostree runs as its generator: this process when it is kiln; else
/// (a program linking the library, such as a test or bench under `target/*/deps/`)
/// `kiln` beside it or one directory up; else `kiln` on `PATH`.
pub fn generator_path() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the running program")?;
    if me.file_name().is_some_and(|n| n == "kiln") {
        return Ok(me);
    }
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    for d in [Some(dir.clone()), dir.parent().map(Path::to_path_buf)]
        .into_iter()
        .flatten()
    {
        let k = d.join("kiln");
        if k.is_file() {
            return Ok(k);
        }
    }
    if let Some(p) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&p) {
            let k = d.join("kiln");
            if k.is_file() {
                return Ok(k);
            }
        }
    }
    bail!(
        "the kiln binary (libostree's GRUB config generator) was not found beside {} or on PATH",
        me.display()
    )
}

/// Sets `OSTREE_GRUB2_EXEC` to [`generator_path`] in this process's environment, once;
/// libostree and the `ostree` processes kiln starts inherit it. `main` calls it before any
/// thread exists; library users get it on their first sysroot write.
pub fn set_generator_env() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let p = generator_path().map_err(|e| format!("{e:#}"))?;
        std::env::set_var(EXEC_ENV, p);
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::super::bootcount;
    use super::*;

    const A: &str = "title Debian GNU/Linux 12 (bookworm) (ostree:0)\nversion 2\n\
        options root=LABEL=root rw $ignition_firstboot ostree=/ostree/boot.1/kiln/ab/0\n\
        linux /ostree/kiln-ab/vmlinuz-6.1.0\ninitrd /ostree/kiln-ab/initramfs-6.1.0.img\n";
    const B: &str = "title Debian GNU/Linux 12 (bookworm) (ostree:1)\nversion 1\n\
        options root=LABEL=root rw ostree=/ostree/boot.1/kiln/cd/0 a=x;y\n\
        linux /ostree/kiln-cd/vmlinuz-6.1.0\n";

    #[test]
    fn entries_sort_default_first_and_render_linux_per_platform() {
        let td = tempfile::tempdir().unwrap();
        std::fs::write(td.path().join("ostree-1-kiln.conf"), B).unwrap();
        std::fs::write(td.path().join("ostree-2-kiln.conf"), A).unwrap();
        std::fs::write(td.path().join("README"), "not an entry").unwrap();
        let es = read_entries(td.path()).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].version, "2");
        let cfg = render(Some(1), &es);
        assert!(cfg.contains("set default=0\nset timeout=1\n"), "{cfg}");
        assert!(cfg.contains("set fallback=1\n"), "{cfg}");
        let k = "/ostree/kiln-ab/vmlinuz-6.1.0 root=LABEL=root rw $ignition_firstboot \
                 ostree=/ostree/boot.1/kiln/ab/0";
        let i = "/ostree/kiln-ab/initramfs-6.1.0.img";
        assert!(
            cfg.contains(&format!(
                "menuentry 'Debian GNU/Linux 12 (bookworm) (ostree:0)' --id ostree-0 {{\n  \
                 if [ \"$grub_platform\" = efi ]; then\n    if linuxefi {k}; then\n      \
                 initrdefi {i}\n    fi\n  else\n    linux {k}\n    initrd {i}\n  fi\n}}\n"
            )),
            "{cfg}"
        );
        // GRUB metacharacters in an argument stay literal; no initrd line without one.
        assert!(
            cfg.contains("ostree=/ostree/boot.1/kiln/cd/0 'a=x;y'\n  else\n"),
            "{cfg}"
        );
        assert!(
            cfg.contains("ostree=/ostree/boot.1/kiln/cd/0 'a=x;y'\n  fi\n}\n"),
            "{cfg}"
        );
        assert!(cfg.find("ostree:0").unwrap() < cfg.find("ostree:1").unwrap());
        assert!(!cfg.contains("linux16") && !cfg.contains("syslinux"));
    }

    #[test]
    fn the_default_entry_is_counted_by_its_deployment_key() {
        let td = tempfile::tempdir().unwrap();
        let c = "c".repeat(64);
        let bl = td.path().join("ostree/boot.1/kiln/ab");
        std::fs::create_dir_all(&bl).unwrap();
        std::os::unix::fs::symlink(format!("../../../deploy/kiln/deploy/{c}.2"), bl.join("0"))
            .unwrap();
        let mut a = parse_entry("a.conf", A).unwrap();
        a.key = deployment_key(td.path(), &a.options);
        assert_eq!(a.key.as_deref(), Some(format!("{c}.2").as_str()));
        let b = parse_entry("b.conf", B).unwrap();
        assert_eq!(deployment_key(td.path(), &b.options), None);
        let cfg = render(Some(1), &[a.clone(), b.clone()]);
        let head = cfg
            .find(&format!(
                "if [ \"$kiln_pending\" = \"{c}.2\" ]; then\n  set default=1"
            ))
            .unwrap();
        let entry0 = cfg.find("--id ostree-0").unwrap();
        let save = cfg.find("save_env").unwrap();
        let linux0 = cfg.find("  linux /ostree/kiln-ab").unwrap();
        assert!(cfg.find("set fallback=1").unwrap() < head && head < entry0);
        assert!(entry0 < save && save < linux0, "{cfg}");
        assert!(
            cfg.contains("ostree=/ostree/boot.1/kiln/ab/0 $kiln_trial_kargs\n"),
            "{cfg}"
        );
        // On the `linuxefi` (UEFI) and the `linux` (BIOS) line of the default entry only.
        assert_eq!(cfg.matches("$kiln_trial_kargs").count(), 2, "{cfg}");
        // Only the default entry counts, and only when there is a rollback entry.
        assert_eq!(
            cfg.matches("save_env").count(),
            bootcount::MAX_TRIES as usize
        );
        assert!(!render(None, &[a]).contains("kiln_pending"));
    }

    #[test]
    fn one_entry_has_no_fallback_and_words_are_quoted() {
        let e = parse_entry("x.conf", A).unwrap();
        assert!(!render(None, &[e]).contains("fallback"));
        assert_eq!(grub_word("it's"), r"'it'\''s'");
        assert_eq!(grub_karg("x=$v;1"), "\"x=$v;1\"");
        assert!(parse_entry("y.conf", "title t\n").is_err());
    }

    #[test]
    fn only_libostrees_invocation_is_recognised() {
        let args: Vec<OsString> = ["/usr/bin/kiln", "-o", "/boot/loader.1/grub.cfg"]
            .iter()
            .map(OsString::from)
            .collect();
        // The variable is not set in the test process: a plain `kiln -o X` is not it.
        assert!(std::env::var_os(BOOTVERSION_ENV).is_none());
        assert_eq!(libostree_invocation(&args), None);
    }
}
