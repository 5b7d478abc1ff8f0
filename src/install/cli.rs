//! `kiln install`: its arguments, parsed into the library's types by clap, and its handler.

use super::{install, IgnitionHash, IgnitionSource, ImageSource, InstallOptions, Sha256};
use crate::error::InputError;
use crate::image::Platform;
use crate::progress::Progress;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["image", "repo"])))]
pub struct InstallArgs {
    /// The disk to install to: a block device (/dev/sda, /dev/nvme0n1, /dev/loop0) or an
    /// existing regular file. Everything on it is overwritten.
    pub device: PathBuf,
    /// The disk image: a raw or qcow2 file, or an http:// or https:// URL of one (its
    /// sha256 comes from the manifest.json beside it or from --image-sha256).
    #[arg(long, value_name = "FILE|URL", value_parser = ImageSource::parse)]
    pub image: Option<ImageSource>,
    /// Build the image from this OSTree repository (with --ref) instead of --image.
    #[arg(long, requires = "ref_", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Ref or commit checksum in --repo.
    #[arg(long = "ref", requires = "repo", value_name = "REF")]
    pub ref_: Option<String>,
    /// Ignition config (file or http(s) URL) written to /boot/ignition/config.ign and
    /// applied on first boot.
    #[arg(long, value_name = "FILE|URL", value_parser = IgnitionSource::parse)]
    pub ignition: Option<IgnitionSource>,
    /// Expected hash of the Ignition config, `sha256-<hex>` or `sha512-<hex>`; the config is
    /// refused unless it matches. Required for a plain http:// --ignition URL.
    #[arg(
        long,
        value_name = "sha256-HEX",
        requires = "ignition",
        value_parser = IgnitionHash::parse
    )]
    pub ignition_hash: Option<IgnitionHash>,
    /// Accept a plain http:// --ignition URL without --ignition-hash (anyone on the network
    /// path can then change the machine's configuration).
    #[arg(long, requires = "ignition")]
    pub insecure_ignition: bool,
    /// Kernel argument to append (repeatable).
    #[arg(long = "karg", value_name = "K=V", value_parser = parse_karg)]
    pub kargs: Vec<String>,
    /// Ignition platform of the installed system (`ignition.platform.id`).
    #[arg(long, value_enum, default_value = "metal")]
    pub platform: Platform,
    /// Expected sha256 of the image (--image); overrides manifest.json.
    #[arg(
        long,
        value_name = "HEX",
        conflicts_with = "repo",
        value_parser = Sha256::parse
    )]
    pub image_sha256: Option<Sha256>,
    /// Check everything and say what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A `--karg` value, checked with the shared kernel-argument rule.
fn parse_karg(s: &str) -> std::result::Result<String, String> {
    crate::validate::user_kernel_arg(s)?;
    Ok(s.to_string())
}

/// `kiln install`.
pub fn cmd_install(a: InstallArgs) -> Result<()> {
    let source = match (a.image, a.repo, a.ref_) {
        (Some(i), None, None) => i,
        (None, Some(repo), Some(rev)) => ImageSource::Commit { repo, rev },
        _ => {
            return Err(InputError::new(
                "command line",
                "give either --image FILE|URL or --repo DIR --ref REF",
            )
            .into())
        }
    };
    let opts = InstallOptions {
        device: a.device,
        source,
        ignition: a.ignition,
        ignition_hash: a.ignition_hash,
        insecure_ignition: a.insecure_ignition,
        kargs: a.kargs,
        platform: a.platform,
        image_sha256: a.image_sha256,
        dry_run: a.dry_run,
    };
    let mut p = Progress::new(false);
    let r = install(&opts, &mut p)?;
    crate::output::emit(a.json, &r, |r| {
        if r.dry_run {
            eprintln!(
                "kiln: dry run: would install {} ({}, {} bytes{}) to {} ({} bytes); nothing \
                 was written",
                r.source,
                r.format.name(),
                r.image_size,
                r.verified_against
                    .as_deref()
                    .map(|v| format!(", sha256 checked against {v}"))
                    .unwrap_or_default(),
                r.device.display(),
                r.device_size
            );
        } else {
            eprintln!(
                "kiln: installed {} ({}, {} bytes, sha256 {}{}) to {}{}",
                r.source,
                r.format.name(),
                r.image_size,
                r.sha256.as_deref().unwrap_or("?"),
                r.verified_against
                    .as_deref()
                    .map(|v| format!(" verified against {v}"))
                    .unwrap_or_else(|| " unverified".into()),
                r.device.display(),
                r.ignition
                    .as_deref()
                    .map(|i| format!("; Ignition config at {i}"))
                    .unwrap_or_default()
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use crate::install::{IgnitionHash, IgnitionSource, ImageSource, Sha256};
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<super::InstallArgs, clap::Error> {
        let mut argv = vec!["kiln", "install", "/dev/null"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Install(a) => Ok(a),
            _ => unreachable!("not the install command"),
        }
    }

    #[test]
    fn arguments_are_parsed_into_types_at_the_door() {
        let sha = "AB".repeat(32);
        let a = parse(&[
            "--image",
            "https://h:8080/d/base.raw",
            "--image-sha256",
            &sha,
            "--ignition",
            "http://10.0.0.1/c.ign",
            "--ignition-hash",
            &format!("sha512-{}", "cd".repeat(64)),
            "--karg",
            "console=ttyS0",
        ])
        .unwrap();
        assert_eq!(
            a.image,
            Some(ImageSource::Url("https://h:8080/d/base.raw".into()))
        );
        assert_eq!(a.image_sha256, Some(Sha256::parse(&sha).unwrap()));
        assert_eq!(a.image_sha256.unwrap().as_str(), "ab".repeat(32));
        assert_eq!(
            a.ignition,
            Some(IgnitionSource::Url("http://10.0.0.1/c.ign".into()))
        );
        assert_eq!(a.ignition_hash, Some(IgnitionHash::Sha512("cd".repeat(64))));
        let a = parse(&["--image", "base.qcow2", "--ignition", "c.ign"]).unwrap();
        assert_eq!(a.image, Some(ImageSource::File("base.qcow2".into())));
        assert_eq!(a.ignition, Some(IgnitionSource::File("c.ign".into())));

        // Each bad value is refused by clap (exit 2) naming its option, before any work.
        for (bad, option, why) in [
            (
                vec!["--image", "http://h:0/base.raw"],
                "--image",
                "invalid port",
            ),
            (vec!["--image", "https:///base.raw"], "--image", "no host"),
            (
                vec!["--image", "x.raw", "--image-sha256", "abc"],
                "--image-sha256",
                "not a sha256",
            ),
            (
                vec!["--image", "x.raw", "--ignition", "ftp://h/c.ign"],
                "--ignition",
                "not supported",
            ),
            (
                vec![
                    "--image",
                    "x.raw",
                    "--ignition",
                    "c.ign",
                    "--ignition-hash",
                    "md5-00",
                ],
                "--ignition-hash",
                "not an Ignition config hash",
            ),
            (vec!["--image", "x.raw", "--karg", "a b"], "--karg", ""),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            let m = e.to_string();
            assert!(m.contains(option) && m.contains(why), "{bad:?}: {m}");
        }
    }
}
