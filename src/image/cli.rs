//! The commands that make and change images: `kiln image` ([`ImageArgs`], [`cmd_image`])
//! and `kiln iso ignition|kargs` ([`IsoCommand`], [`cmd_iso`]). Handlers turn arguments into
//! the library's options, call it and print the result.

use super::disk::Size;
use super::iso::{
    self, areas, ignition_embed, ignition_remove, ignition_show, kargs_modify, kargs_show,
};
use super::{
    artifact_path, live, read_ignition_config, resolve_format, Firmware, Format, ImageOptions,
    ImageRemote, LiveFs, Platform, DEFAULT_OS,
};
use crate::error::InputError;
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// OSTree repository holding the commit.
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// Ref or commit checksum to put in the image.
    #[arg(
        long = "ref",
        required_unless_present = "from_oci",
        conflicts_with = "from_oci"
    )]
    pub ref_: Option<String>,
    /// Build from a container image instead (`ostree-image-signed:docker://HOST/REPO:TAG`,
    /// `ostree-unverified-registry:…`, `ostree-unverified-image:oci:DIR:TAG`), pulled with
    /// this host's containers configuration; the machine follows that image (`kiln
    /// upgrade` pulls its new versions).
    #[arg(long, value_parser = parse_image_ref, conflicts_with = "remote")]
    pub from_oci: Option<crate::repo::oci::ImageRef>,
    /// --from-oci: the containers configuration to pull with (default: /etc/containers).
    #[arg(long, requires = "from_oci")]
    pub containers_dir: Option<PathBuf>,
    /// Output format (default: from the output's extension, else the platform's first
    /// format, else qcow2). docs/cloud.md lists which formats each platform takes.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Disk size (K, M, G, T suffixes).
    #[arg(long, default_value = "4G")]
    pub size: Size,
    /// Firmware the image boots on (default: hybrid, both BIOS and UEFI).
    #[arg(long, value_enum, conflicts_with_all = ["bios", "uefi", "hybrid"])]
    pub firmware: Option<Firmware>,
    /// Same as --firmware bios (kept for scripts).
    #[arg(long, hide = true, conflicts_with_all = ["uefi", "hybrid"])]
    pub bios: bool,
    /// Same as --firmware uefi (kept for scripts).
    #[arg(long, hide = true, conflicts_with_all = ["bios", "hybrid"])]
    pub uefi: bool,
    /// Same as --firmware hybrid (kept for scripts).
    #[arg(long, hide = true, conflicts_with_all = ["bios", "uefi"])]
    pub hybrid: bool,
    /// Where to write the image; `manifest.json` is updated beside it. A directory (an
    /// existing one, or a path ending in `/`) gets `<name>-<platform>.<extension>`, where
    /// name is the ref's last component (`base` for `kiln/bookworm/x86_64/base`).
    #[arg(long)]
    pub output: PathBuf,
    /// Stateroot (OS name) of the deployment.
    #[arg(long, default_value = DEFAULT_OS)]
    pub os: String,
    /// Extra kernel argument for the image's deployment (repeatable).
    #[arg(long = "karg")]
    pub kargs: Vec<String>,
    /// Ignition config to embed as /boot/ignition/config.ign (bare-metal provisioning;
    /// platform `metal`). It is checked against the commit's tree first (as `kiln
    /// ignition build --against` does).
    #[arg(long)]
    pub ignition: Option<PathBuf>,
    /// Do not check --ignition's config against the commit's tree.
    #[arg(long, requires = "ignition")]
    pub no_check_against: bool,
    /// Platform the image is for: sets `ignition.platform.id` (where Ignition finds the
    /// machine's config: fw_cfg for `qemu`, the cloud's metadata for `aws`, `gcp`,
    /// `azure`, `openstack`, guestinfo for `vmware`, /boot/ignition/config.ign or
    /// `ignition.config.url=` for `metal`), the console arguments, and the default format
    /// (docs/cloud.md). Default: `metal` with --ignition, else `qemu`.
    #[arg(long, value_enum)]
    pub platform: Option<Platform>,
    /// Update server the machine follows, as NAME=URL: the image's repo gets the remote and
    /// the deployment's origin becomes NAME:REF, so `kiln upgrade` and automatic updates
    /// pull from it out of the box. Needs --ref to name a ref, not a checksum.
    #[arg(long, value_name = "NAME=URL")]
    pub remote: Option<ImageRemote>,
    /// GPG public key (armored or binary) trusted for --remote's commits (repeatable).
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub remote_gpg_key: Vec<PathBuf>,
    /// Do not verify --remote's signatures (default: verify, with --remote-gpg-key's keys
    /// and those in the image's /usr/share/ostree/trusted.gpg.d).
    #[arg(long, requires = "remote", conflicts_with = "remote_gpg_key")]
    pub remote_no_gpg_verify: bool,
    /// Root image filesystem of a live ISO or PXE system.
    #[arg(long, value_enum, default_value_t = LiveFs::Squashfs)]
    pub live_fs: LiveFs,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ImageArgs {
    /// `--firmware`, or the old `--bios`/`--uefi`/`--hybrid` flags; hybrid by default.
    pub fn firmware(&self) -> Firmware {
        match (self.firmware, self.bios, self.uefi) {
            (Some(f), _, _) => f,
            (None, true, _) => Firmware::Bios,
            (None, _, true) => Firmware::Uefi,
            _ => Firmware::Hybrid,
        }
    }
}

fn parse_image_ref(s: &str) -> Result<crate::repo::oci::ImageRef, String> {
    crate::repo::oci::ImageRef::parse(s)
}

/// Checks the values of `kiln image` (disk, ISO and PXE alike) before any work: every
/// `--karg` by the shared kernel-argument rule, the stateroot name, the Ignition config
/// (read and validated now, not after the deploy), and the GPG key files (regular files,
/// never a FIFO to block on).
fn check_args(a: &ImageArgs) -> Result<()> {
    let bad = |key: &str, m: String| crate::error::InputError::new("command line", m).key(key);
    for k in &a.kargs {
        crate::validate::user_kernel_arg(k).map_err(|m| bad("--karg", m))?;
    }
    crate::validate::os_name(&a.os).map_err(|m| bad("--os", m))?;
    if let Some(ign) = &a.ignition {
        crate::validate::open_regular(ign).map_err(|m| bad("--ignition", m))?;
        let text = read_ignition_config(ign)?;
        if !a.no_check_against {
            let image = crate::ignition::cli::open_image(&a.repo, a.rev(), "--ref")?;
            let platform = a.platform.unwrap_or(Platform::Metal).id();
            let against = crate::ignition::Against {
                image: &image,
                platform: Some(platform),
            };
            for w in crate::ignition::check_json_against(ign, &text, &against)? {
                eprintln!("kiln: {w}");
            }
        }
    }
    for k in &a.remote_gpg_key {
        crate::validate::open_regular(k).map_err(|m| bad("--remote-gpg-key", m))?;
    }
    Ok(())
}

/// `kiln image`.
impl ImageArgs {
    fn rev(&self) -> &str {
        self.ref_.as_deref().unwrap_or_default()
    }
}

pub fn cmd_image(mut a: ImageArgs) -> Result<()> {
    // --from-oci: the image's commit, imported into a repo of its own.
    let _oci_repo = match &a.from_oci {
        Some(img) => {
            let tmp = crate::cleanup::TempDir::new("kiln-from-oci")?;
            let repo = tmp.path().join("repo");
            let imported =
                crate::deploy::image::fetch_to_repo(img, &repo, a.containers_dir.as_deref())?;
            a.repo = repo;
            a.ref_ = Some(imported.commit);
            Some(tmp)
        }
        None => None,
    };
    check_args(&a)?;
    let output = artifact_path(
        &a.output,
        a.rev(),
        a.format,
        a.platform,
        a.ignition.is_some(),
    );
    let format = resolve_format(a.format, a.platform, &output)?;
    let rev = a.rev().to_string();
    let opts = ImageOptions {
        firmware: a.firmware(),
        repo: a.repo,
        rev,
        format,
        size: a.size.bytes(),
        output,
        os: a.os,
        extra_kargs: a.kargs,
        ignition: a.ignition,
        platform: a.platform,
        epoch: None,
        remote: a.remote.map(|mut r| {
            r.gpg_keys = a.remote_gpg_key;
            r.gpg_verify = !a.remote_no_gpg_verify;
            r
        }),
        live_fs: a.live_fs,
        follow_image: a.from_oci.as_ref().map(|i| i.canonical()),
    };
    let mut p = Progress::new(false);
    if format.is_live() {
        let r = live::build(&opts, &mut p)?;
        return crate::output::emit(a.json, &r, |r| {
            eprintln!(
                "kiln: wrote {} ({}, root image {} {} bytes) with commit {}{}",
                r.output.display(),
                r.format.name(),
                r.root_fs.name(),
                r.root_image_size,
                r.commit,
                version_note(r.version.as_deref())
            )
        });
    }
    let r = super::build(&opts, &mut p)?;
    crate::output::emit(a.json, &r, |r| {
        eprintln!(
            "kiln: wrote {} ({} for {}, {}, {} bytes, sha256 {}) with commit {}{}",
            r.output.display(),
            r.format.name(),
            r.platform.id(),
            format!("{:?}", r.firmware).to_lowercase(),
            r.size,
            r.sha256,
            r.commit,
            version_note(r.version.as_deref())
        )
    })
}

/// ` (version V)` when the commit has a version.
fn version_note(v: Option<&str>) -> String {
    v.map(|v| format!(" (version {v})")).unwrap_or_default()
}

// ---- kiln iso ----

#[derive(Debug, clap::Subcommand)]
pub enum IsoCommand {
    /// The Ignition config the live system applies at boot.
    #[command(subcommand)]
    Ignition(IgnitionCmd),
    /// The live system's kernel arguments.
    #[command(subcommand)]
    Kargs(KargsCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum IgnitionCmd {
    /// Embed an Ignition config (checked first) into the ISO, in place or into a copy.
    Embed(EmbedArgs),
    /// Print the embedded Ignition config (exit 1 when there is none).
    Show(IsoArg),
    /// Remove the embedded Ignition config.
    Remove(IsoOutArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum KargsCmd {
    /// Append or delete kernel arguments.
    Modify(KargsModifyArgs),
    /// Print the kernel arguments, one line.
    Show(IsoArg),
}

#[derive(Debug, clap::Args)]
pub struct IsoArg {
    /// The live ISO (`kiln image --format iso`).
    pub iso: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct IsoOutArgs {
    /// The live ISO (`kiln image --format iso`).
    pub iso: PathBuf,
    /// Write a modified copy here instead of changing ISO in place.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Ignition config (JSON) to embed.
    #[arg(short, long)]
    pub ignition: PathBuf,
    /// Replace a config already embedded.
    #[arg(short, long)]
    pub force: bool,
    /// Check the config against the commit the ISO was built from, REPO:REF (as `kiln
    /// ignition build --against` does, platform `metal`) before embedding it.
    #[arg(long, value_name = "REPO:REF", value_parser = crate::ignition::cli::against_arg)]
    pub against: Option<(PathBuf, String)>,
    #[command(flatten)]
    pub target: IsoOutArgs,
}

#[derive(Debug, clap::Args)]
pub struct KargsModifyArgs {
    /// Kernel argument to add (repeatable).
    #[arg(short, long, allow_hyphen_values = true)]
    pub append: Vec<String>,
    /// Kernel argument to remove: exact `NAME=VALUE`, or every `NAME=...` for a bare NAME
    /// (repeatable).
    #[arg(short, long, allow_hyphen_values = true)]
    pub delete: Vec<String>,
    #[command(flatten)]
    pub target: IsoOutArgs,
}

/// The ISO to change: `iso` itself, or a copy beside `output` (a temporary file, renamed
/// into place by [`Target::commit`], removed when dropped uncommitted).
struct Target {
    path: PathBuf,
    copy: Option<(tempfile::NamedTempFile, PathBuf)>,
}

impl Target {
    /// `private`: the copy will hold an Ignition config, so it is created 0600.
    fn new(a: &IsoOutArgs, private: bool) -> Result<Target> {
        use std::os::unix::fs::PermissionsExt;
        // Check the source first, so a wrong file is named as such.
        areas(&a.iso)?;
        match &a.output {
            None => Ok(Target {
                path: a.iso.clone(),
                copy: None,
            }),
            Some(out) => {
                crate::ignition::check_output_file(out, "--output")?;
                let name = out
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "out.iso".into());
                let dir = out
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let mode = if private {
                    0o600
                } else {
                    std::fs::metadata(&a.iso)
                        .with_context(|| format!("reading {}", a.iso.display()))?
                        .permissions()
                        .mode()
                        & 0o777
                };
                let mut tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".kiln-tmp")
                    .permissions(std::fs::Permissions::from_mode(mode))
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
                let mut src = iso::open(&a.iso, false)?;
                std::io::copy(&mut src, tmp.as_file_mut()).with_context(|| {
                    format!("copying {} to {}", a.iso.display(), tmp.path().display())
                })?;
                Ok(Target {
                    path: tmp.path().to_path_buf(),
                    copy: Some((tmp, out.clone())),
                })
            }
        }
    }

    fn commit(self) -> Result<PathBuf> {
        match self.copy {
            None => Ok(self.path),
            Some((tmp, out)) => {
                tmp.persist(&out).map_err(|e| e.error).with_context(|| {
                    format!("moving {} to {}", self.path.display(), out.display())
                })?;
                Ok(out)
            }
        }
    }
}

fn with_target<T>(
    a: &IsoOutArgs,
    private: bool,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<(PathBuf, T)> {
    let t = Target::new(a, private)?;
    // On an error the Target is dropped, and with it a temporary copy.
    let v = f(&t.path)?;
    Ok((t.commit()?, v))
}

/// `kiln iso ...`.
pub fn cmd_iso(c: IsoCommand) -> Result<()> {
    match c {
        IsoCommand::Ignition(IgnitionCmd::Embed(a)) => {
            let config = read_ignition_config(&a.ignition)?;
            if let Some((repo, rev)) = &a.against {
                let image = crate::ignition::cli::open_image(repo, rev, "--against")?;
                let against = crate::ignition::Against {
                    image: &image,
                    platform: Some(Platform::Metal.id()),
                };
                for w in crate::ignition::check_json_against(&a.ignition, &config, &against)? {
                    eprintln!("kiln: {w}");
                }
            }
            let (out, ()) =
                with_target(&a.target, true, |iso| ignition_embed(iso, &config, a.force))?;
            eprintln!(
                "kiln: embedded {} into {}",
                a.ignition.display(),
                out.display()
            );
        }
        IsoCommand::Ignition(IgnitionCmd::Show(a)) => match ignition_show(&a.iso)? {
            Some(c) => {
                print!("{c}");
                if !c.ends_with('\n') {
                    println!();
                }
            }
            None => bail!("{} has no embedded Ignition config", a.iso.display()),
        },
        IsoCommand::Ignition(IgnitionCmd::Remove(a)) => {
            let (out, had) = with_target(&a, false, ignition_remove)?;
            if had {
                eprintln!("kiln: removed the Ignition config from {}", out.display());
            } else {
                eprintln!("kiln: {} had no Ignition config", out.display());
            }
        }
        IsoCommand::Kargs(KargsCmd::Show(a)) => println!("{}", kargs_show(&a.iso)?.join(" ")),
        IsoCommand::Kargs(KargsCmd::Modify(a)) => {
            if a.append.is_empty() && a.delete.is_empty() {
                return Err(InputError::new(
                    "command line",
                    "nothing to do: give --append and/or --delete",
                )
                .into());
            }
            let (out, new) = with_target(&a.target, false, |iso| {
                kargs_modify(iso, &a.append, &a.delete)
            })?;
            eprintln!("kiln: kernel arguments of {}:", out.display());
            println!("{}", new.join(" "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::iso::tests::fake_iso;
    use crate::image::iso::IGNITION_AREA;
    use clap::Parser;

    fn image_args(extra: &[&str]) -> Result<ImageArgs, clap::Error> {
        let mut argv = vec!["kiln", "image", "--ref", "r", "--output", "o.qcow2"];
        argv.extend(extra);
        match crate::cli::Cli::try_parse_from(argv)?.command {
            crate::cli::Command::Image(a) => Ok(a),
            c => panic!("parsed as {c:?}"),
        }
    }

    #[test]
    fn firmware_option_and_the_old_flags() {
        assert_eq!(image_args(&[]).unwrap().firmware(), Firmware::Hybrid);
        for (args, want) in [
            (&["--firmware", "bios"][..], Firmware::Bios),
            (&["--firmware", "uefi"], Firmware::Uefi),
            (&["--firmware", "hybrid"], Firmware::Hybrid),
            (&["--bios"], Firmware::Bios),
            (&["--uefi"], Firmware::Uefi),
            (&["--hybrid"], Firmware::Hybrid),
        ] {
            assert_eq!(image_args(args).unwrap().firmware(), want, "{args:?}");
        }
        for args in [
            &["--firmware", "uefi", "--bios"][..],
            &["--bios", "--uefi"],
            &["--firmware", "coreboot"],
        ] {
            assert!(image_args(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn sizes_and_remotes_are_parsed_with_the_command_line() {
        let a = image_args(&["--size", "2GiB"]).unwrap();
        assert_eq!(a.size.bytes(), 2048 * super::super::disk::MIB);
        assert_eq!(
            image_args(&[]).unwrap().size.bytes(),
            4096 * super::super::disk::MIB
        );
        let e = image_args(&["--size", "4X"]).unwrap_err().to_string();
        assert!(
            e.contains("command line: --size: ") && e.contains("unknown unit"),
            "{e}"
        );
        let r = image_args(&["--remote", "origin=https://u.example.com/repo"])
            .unwrap()
            .remote
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.url.as_str()),
            ("origin", "https://u.example.com/repo")
        );
        assert!(r.gpg_verify && r.gpg_keys.is_empty());
        for bad in ["origin", "ori gin=https://x/r", "origin=ftp://x/repo"] {
            let e = image_args(&["--remote", bad]).unwrap_err().to_string();
            assert!(e.contains("command line: --remote: "), "{bad}: {e}");
        }
    }

    #[test]
    fn embedded_configs_are_private_and_copies_leave_nothing_behind() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = tempfile::tempdir().unwrap();
        let iso = fake_iso(d.path());
        std::fs::set_permissions(&iso, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = r#"{"ignition":{"version":"3.3.0"}}"#;
        // Into a copy: 0600 from creation; the source keeps its mode.
        let out = d.path().join("out.iso");
        let args = IsoOutArgs {
            iso: iso.clone(),
            output: Some(out.clone()),
        };
        let (o, ()) = with_target(&args, true, |p| {
            assert_eq!(mode(p), 0o600, "the temporary copy is private");
            ignition_embed(p, cfg, false)
        })
        .unwrap();
        assert_eq!(o, out);
        assert_eq!(mode(&out), 0o600);
        assert_eq!(mode(&iso), 0o644);
        assert_eq!(ignition_show(&out).unwrap().as_deref(), Some(cfg));
        // A failing edit of a copy leaves no temporary file.
        let out2 = d.path().join("out2.iso");
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(IGNITION_AREA as usize));
        let args = IsoOutArgs {
            iso: iso.clone(),
            output: Some(out2.clone()),
        };
        assert!(with_target(&args, true, |p| ignition_embed(p, &big, false)).is_err());
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["out.iso", "x.iso"]);
        // A directory as the output is refused before anything is copied.
        let args = IsoOutArgs {
            iso: iso.clone(),
            output: Some(d.path().to_path_buf()),
        };
        let e = with_target(&args, true, |p| ignition_embed(p, cfg, false)).unwrap_err();
        assert!(e.downcast_ref::<InputError>().is_some(), "{e:#}");
        // In place: the ISO loses group and other access before the config goes in.
        ignition_embed(&iso, cfg, false).unwrap();
        assert_eq!(mode(&iso), 0o600);
        // Copies for other edits keep the source's mode.
        let d2 = d.path().join("x2");
        std::fs::create_dir(&d2).unwrap();
        let iso2 = fake_iso(&d2);
        std::fs::set_permissions(&iso2, std::fs::Permissions::from_mode(0o640)).unwrap();
        let out3 = d.path().join("out3.iso");
        let args = IsoOutArgs {
            iso: iso2,
            output: Some(out3.clone()),
        };
        with_target(&args, false, |p| kargs_modify(p, &["quiet".into()], &[])).unwrap();
        assert_eq!(mode(&out3), 0o640);
    }
}
